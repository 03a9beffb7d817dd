"""Decoding: batched beam search with a length penalty, the Translator API, and the dev-set choice of
the length penalty.
"""
