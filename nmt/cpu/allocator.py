"""Keep freed memory in the process: no page faults for the large tensors every step allocates.

PyTorch allocates CPU tensors with the C library's ``malloc``. glibc hands blocks above a threshold
(128 KiB, raised dynamically up to 32 MiB) straight from ``mmap`` and returns them, and the top of
its heap, to the kernel when freed. A decoding or training step allocates tens of MiB of
activations, logits and key/value caches and frees them again, so the next step touches fresh pages
and the kernel zero-fills each one; in beam search those page faults are a noticeable share of the
CPU time (docs/speed.md). CTranslate2 keeps its own caching allocator for this reason; for PyTorch,
Intel's CPU guides preload jemalloc or tcmalloc. :func:`keep_freed_memory` gets the same effect
from glibc itself with ``mallopt``: every block comes from the heap and the heap is never trimmed,
so freed memory is reused by the next step. The process keeps its peak memory until it exits.

It changes process-wide allocator settings, so only command-line entry points call it
(translate.py, tools/maintainers/bench_translate.py), never the library. train.py does not:
training showed no gain beyond the benchmark's noise (docs/speed.md).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1          # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
NEVER = 1 << 30                # "1 GiB": above any single block this code allocates per step


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and never trim it (glibc only). True if it was applied;
    False, doing nothing, on other C libraries (macOS, Windows, musl) where it is not needed or
    not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
        gnu = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return False
    del gnu                                       # present: this is glibc
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, NEVER)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER))
