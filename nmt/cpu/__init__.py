"""CPU speed: matrix products through oneDNN, pre-packed and int8 linear layers for decoding, and an
allocator setting that avoids page faults. Same numbers as the plain PyTorch layers.
"""
