"""How many rows of output-projection logits to compute at once.

The [rows, V] logits of the output projection are the largest tensor of a training step and of a
beam-search step, so both walk over row chunks instead of building them whole: the fused loss
(nmt/model/loss.py) and beam search's candidate selection (nmt/decode/beam_search.py). This module
is their shared sizing rule, below both.
"""
from __future__ import annotations

import torch


def logit_chunk_rows(vocab_size: int, device: torch.device, chunk_bytes: int | None = None) -> int:
    """Rows per chunk of logits: the [rows, V] float32 block stays below ``chunk_bytes`` (CPU default
    16 MiB: it stays in the last-level cache and below glibc's mmap threshold, so it is not
    page-faulted anew for every chunk; GPU default 1 GiB: large GEMMs).

    >>> logit_chunk_rows(16000, torch.device("cpu"))
    262
    """
    if chunk_bytes is None:
        chunk_bytes = 16 * 2**20 if device.type == "cpu" else 2**30
    return max(1, chunk_bytes // (4 * vocab_size))
