"""Binarized parallel data: preparation from text files (tokenize, learn BPE, binarize) and reading,
batching and collating it for training.
"""
