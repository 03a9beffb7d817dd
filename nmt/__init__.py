"""nmt: a from-scratch PyTorch reference implementation of Imamura & Sumita (2019),
"Recycling a Pre-trained BERT Encoder for Neural Machine Translation".

One module per concept; see the README's "Reading the code" section for a guided tour.
"""
