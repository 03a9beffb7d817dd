"""Weights on disk: Google's TF checkpoints, HF safetensors, the one name table mapping both to ours,
the pre-trained BERT loader, and this project's training checkpoints.
"""
