"""The network (paper 3.1): the BERT encoder, the Transformer decoder, the baselines' encoder, the
Seq2Seq model that joins them, and the label-smoothed loss (with logit_chunks.py, the row chunks in
which the loss and the beam search project onto the vocabulary).
"""
