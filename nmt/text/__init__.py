"""The text side (paper 3.1): WordPiece for BERT's source, BPE and vocabularies for the target (and
the baselines' source), pre-tokenization, line reading, and the source/target pipelines.
"""
