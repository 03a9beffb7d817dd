"""Encoder-output cache for stage 1: the frozen encoder runs once per training sentence, not once per epoch.

In ``--stage decoder`` the encoder has no gradients and no dropout, so its output for a sentence is
the same every epoch. Computing it once and reading it back turns a training step from E + 3D
(encoder forward + decoder forward/backward) into 3D. The cache is one flat array of all source
token vectors, ``[total source tokens, H]``, laid out like the data's ``train.src.bin``: pair i is
rows ``offsets[i]:offsets[i + 1]``. It lives in memory or, when too big, in a memory-mapped file in
the run directory; float16 halves its size (BERT outputs are post-LayerNorm, O(1) values).

In data-parallel training each rank caches only the pairs it owns (``pairs``: see
nmt/train/distributed.py, pairs are sharded, not batches, for exactly this): the rows are then those of
the owned pairs in index order, and ``slots`` maps a global pair index to its place among them.

>>> import torch
>>> offsets = np.array([0, 2, 5])                       # pair 0 has 2 tokens, pair 1 has 3
>>> cache = EncoderCache(np.arange(10, dtype=np.float32).reshape(5, 2), offsets)
>>> mask = torch.tensor([[True, True, True], [True, True, False]])
>>> cache.gather(np.array([1, 0]), mask).tolist()      # padded rows are zero
[[[4.0, 5.0], [6.0, 7.0], [8.0, 9.0]], [[0.0, 1.0], [2.0, 3.0], [0.0, 0.0]]]
"""
from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nmt.data.binarized import ParallelData, collate, make_batches
from nmt.errors import TrainingError

DTYPES = {"float16": np.float16, "float32": np.float32}


def token_positions(offsets: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Flat row numbers of all tokens of the given pairs, pair after pair.

    >>> token_positions(np.array([0, 2, 5, 6]), np.array([1, 0])).tolist()
    [2, 3, 4, 0, 1]
    """
    starts, lengths = offsets[indices], offsets[indices + 1] - offsets[indices]
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)          # where each pair starts in the output
    return np.repeat(starts, lengths) + (np.arange(int(lengths.sum())) - first)


class EncoderCache:
    def __init__(self, values: np.ndarray, offsets: np.ndarray, slots: np.ndarray | None = None):
        self.values = values            # [cached source tokens, H], float16 or float32 (ndarray or memmap)
        self.offsets = offsets          # [cached pairs + 1] int64
        self.slots = slots              # [all pairs] int64: cached position of a pair, -1 if not cached; None: all

    @staticmethod
    def size_bytes(data: ParallelData, hidden: int, dtype: str, pairs: np.ndarray | None = None) -> int:
        lengths = data.src_lengths if pairs is None else data.src_lengths[pairs]
        return int(lengths.sum()) * hidden * np.dtype(DTYPES[dtype]).itemsize

    @classmethod
    def build(cls, model, data: ParallelData, src_pad_id: int, *, dtype: str = "float16",
              path: Path | None = None, device="cpu", batch_tokens: int = 16384,
              print_fn: Callable[[str], None] = print, progress: bool = False,
              pairs: np.ndarray | None = None) -> "EncoderCache":
        """Run ``model.encode`` (eval mode, no grad) over every pair, or only over the sorted indices
        ``pairs`` (a data-parallel rank's own); ``path``: memory-map a file there."""
        hidden = model.encoder.config.hidden_size
        slots = None
        src_lengths, tgt_lengths = data.src_lengths, data.tgt_lengths
        if pairs is not None:
            pairs = np.asarray(pairs, dtype=np.int64)
            slots = np.full(len(data), -1, dtype=np.int64)
            slots[pairs] = np.arange(len(pairs))
            src_lengths, tgt_lengths = src_lengths[pairs], tgt_lengths[pairs]
        offsets = np.concatenate([[0], np.cumsum(src_lengths)]).astype(np.int64)
        shape = (int(offsets[-1]), hidden)
        if path is None:
            values = np.empty(shape, dtype=DTYPES[dtype])
        else:
            values = create_cache_file(path, DTYPES[dtype], shape)
        was_training = model.encoder.training
        model.encoder.eval()
        t0 = time.time()
        batches = make_batches(src_lengths, tgt_lengths, max_sentences=1024, max_tokens=batch_tokens)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=int(offsets[-1]), desc="encoder cache", unit="tok", unit_scale=True, leave=False)
        with torch.no_grad():
            for idx in batches:                 # idx: cached positions; pairs[idx]: pair indices
                batch = collate(data, idx if pairs is None else pairs[idx], src_pad_id)
                out = model.encoder(batch.src_ids.to(device), batch.src_mask.to(device))      # [B, S, H]
                rows = out[batch.src_mask.to(device)].float().cpu().numpy()                 # [real tokens, H]
                values[token_positions(offsets, idx)] = rows.astype(values.dtype, copy=False)
                if bar is not None:
                    bar.update(len(rows))
        if bar is not None:
            bar.close()
        model.encoder.train(was_training)
        if path is not None:
            values.flush()
        print_fn(f"encoder cache built in {time.time() - t0:.1f} s")
        return cls(values, offsets, slots)

    def gather(self, indices: np.ndarray, src_mask: torch.Tensor) -> torch.Tensor:
        """Encoder outputs of a batch: indices [B], src_mask [B,S] bool -> [B,S,H] float32 (zeros at padding)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.slots is not None:
            slots = self.slots[indices]
            if (slots < 0).any():
                raise ValueError(f"pairs {indices[slots < 0][:5].tolist()} are not in this rank's encoder cache "
                                 f"(a batch from another rank's shard)")
            indices = slots
        rows = torch.from_numpy(np.ascontiguousarray(self.values[token_positions(self.offsets, indices)]))
        out = torch.zeros(*src_mask.shape, self.values.shape[1], dtype=torch.float32)
        out[src_mask.cpu()] = rows.float()
        return out


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def plan_cache(mode: str, nbytes: int, max_memory_bytes: float, disk_dir: Path) -> tuple[str, str]:
    """Decide where the cache goes: ("memory" | "disk" | "off", reason to print).

    >>> plan_cache("auto", 10 * 2**20, 4 * 2**30, Path("."))[0]
    'memory'
    >>> plan_cache("auto", 10 * 2**30, 4 * 2**30, Path("."))[0] in ("disk", "off")
    True
    """
    gb = nbytes / 2**30
    available = available_memory_bytes()
    fits_memory = nbytes <= max_memory_bytes and (available is None or nbytes < 0.5 * available)
    probe = disk_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free_disk = shutil.disk_usage(probe).free
    fits_disk = nbytes < 0.8 * free_disk
    if mode == "off":
        return "off", "encoder cache off (--encoder-cache off): the frozen encoder runs every step"
    if mode == "memory" and available is not None and nbytes > 0.8 * available:
        mode = "auto"
        reason = f"{gb:.2f} GB does not fit in the {available / 2**30:.1f} GB of available memory; "
    else:
        reason = ""
    if mode == "memory" or (mode == "auto" and fits_memory):
        return "memory", reason + f"{gb:.2f} GB in memory"
    if fits_disk and mode in ("auto", "disk"):
        return "disk", reason + f"{gb:.2f} GB on disk in {disk_dir} (--cache-max-gb {max_memory_bytes / 2**30:g})"
    return "off", (reason + f"{gb:.2f} GB fits neither in memory nor in the {free_disk / 2**30:.1f} GB free on disk; "
                   f"training WITHOUT the cache (the frozen encoder runs every step)")


def reserve_space(fd: int, offset: int, length: int) -> None:
    """Allocate bytes [offset, offset + length) of an open file on its disk now, so that writing
    them later through a memory map cannot fail: a page of a sparse file that the disk has no room
    for is a SIGBUS ("Bus error") when written through a map, not an exception. posix_fallocate
    where the system has it; where the file system does not support it, zeros written in chunks.
    OSError (ENOSPC, EDQUOT, EFBIG) when the disk has no room."""
    if length <= 0:
        return
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, offset, length)
            return
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
    chunk = bytes(min(length, 1 << 24))
    os.lseek(fd, offset, os.SEEK_SET)
    written = 0
    while written < length:
        written += os.write(fd, chunk[:min(len(chunk), length - written)])
    os.fsync(fd)


def create_cache_file(path: Path, dtype, shape: tuple[int, int]) -> np.memmap:
    """The disk cache: a .npy file of ``shape`` whose space is reserved (:func:`reserve_space`)
    before it is memory-mapped, so a full disk is a TrainingError here, naming the file, the bytes
    needed and free and what to do, instead of a "Bus error" while the cache is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    with open(path, "wb") as f:
        try:
            np.lib.format.write_array_header_1_0(f, header)
            f.flush()
            reserve_space(f.fileno(), f.tell(), nbytes)
        except OSError as e:
            f.close()
            remove_cache_file(path)
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            free = shutil.disk_usage(path.parent).free
            raise TrainingError(
                f"{path}: no room for the encoder cache ({e.strerror}): it needs {nbytes:,} bytes "
                f"({_readable(nbytes)}) and its disk has {free:,} bytes ({_readable(free)}) free; "
                f"free some space, or train with --encoder-cache memory (if it fits in memory) or "
                f"--encoder-cache off (the frozen encoder then runs every step)") from None
    return np.lib.format.open_memmap(path, mode="r+")


def _readable(nbytes: int) -> str:
    """A byte count in GiB, or MiB below one GiB, for messages.

    >>> _readable(3 * 2**30), _readable(18688)
    ('3.00 GiB', '0.02 MiB')
    """
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.2f} MiB"


def remove_cache_file(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
