"""Binarized parallel data: written once by nmt/data/prepare.py (tools/prepare_data.py), memory-mapped by training.

A 4.5M-pair corpus does not fit comfortably in Python lists, so every split is stored as two flat
int32 arrays of token ids plus int64 offsets, and read back with ``np.memmap`` (nothing is loaded
until a batch touches it). A data directory holds::

    meta.json               format version, per-split counts, byte sizes and sha256 of every file
    source.json             SourcePipeline.to_dict()  (nmt/text/pipeline.py)
    target.json             TargetPipeline.to_dict()
    {split}.src.bin         int32 source ids of all pairs, concatenated (with [CLS]/[SEP] or EOS)
    {split}.src.idx         int64 offsets, n + 1 of them: pair i is bin[idx[i]:idx[i + 1]]
    {split}.tgt.bin/.idx    target ids, same layout, WITHOUT BOS/EOS (collate adds them)
    {split}.lines.bin       int64 1-based line number of each kept pair in the original text files

Opening a split always checks file sizes against meta.json and the offsets against the id arrays
(cheap); ``verify=True`` also recomputes the sha256 hashes and checks every id is inside its
vocabulary (reads everything once; training opens its train and dev splits so, since a flipped
bit would otherwise pass unnoticed or crash mid-run). Any problem is a :class:`DataError` that names the file.

Batching is fairseq-like: sort by length with a random tie-break, cut greedily into batches of at
most ``max_sentences`` sentences and ``max_tokens`` padded tokens, shuffle the batch order per
(seed, epoch). A worked example with four pairs:

>>> src_len, tgt_len = np.array([5, 3, 5, 9]), np.array([4, 2, 6, 8])
>>> batches = make_batches(src_len, tgt_len, max_sentences=2, seed=0, epoch=0)
>>> sorted(sorted(b.tolist()) for b in batches)     # similar lengths end up together
[[0, 1], [2, 3]]
>>> sorted(int(i) for b in batches for i in b)      # every pair exactly once per epoch
[0, 1, 2, 3]
"""
from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from nmt.errors import DataError
from nmt.text.lines import read_lines
from nmt.text.vocab import Vocab

FORMAT = "nmt-data/1"
ID_DTYPE = np.int32        # token ids in *.bin
OFFSET_DTYPE = np.int64    # offsets in *.idx and line numbers in *.lines.bin
SIDES = ("src", "tgt")


def _rerun_hint() -> str:
    return "prepare the data again (tools/prepare_data.py)"


def vocab_fingerprint(tokens: Sequence[str]) -> str:
    """sha256 of a vocabulary list; meta.json stores it so a mismatched vocabulary is caught."""
    return hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- writing

class _HashingWriter:
    """A binary file written in chunks, keeping its size and sha256 as it goes."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, arr: np.ndarray) -> None:
        data = arr.tobytes()
        self.file.write(data)
        self.sha.update(data)
        self.bytes += len(data)

    def close(self) -> dict:
        self.file.close()
        return {"bytes": self.bytes, "sha256": self.sha.hexdigest()}


class SplitWriter:
    """Streams one split to disk pair by pair; memory use is bounded by ``flush_tokens``.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> w = SplitWriter(d, "train")
    >>> w.add([101, 7, 102], [5, 6], line_number=1)
    >>> w.add([101, 8, 9, 102], [4], line_number=3)
    >>> info = w.close()
    >>> info["pairs"], info["src_tokens"], info["tgt_tokens"]
    (2, 7, 3)
    """

    def __init__(self, directory: str | Path, split: str, flush_tokens: int = 1 << 20):
        self.directory, self.split, self.flush_tokens = Path(directory), split, flush_tokens
        self.bins = {s: _HashingWriter(self.directory / f"{split}.{s}.bin") for s in SIDES}
        self.buffers: dict[str, list[int]] = {s: [] for s in SIDES}
        self.offsets = {s: array("q", [0]) for s in SIDES}
        self.lines = array("q")

    def add(self, src_ids: Sequence[int], tgt_ids: Sequence[int], line_number: int) -> None:
        for side, ids in zip(SIDES, (src_ids, tgt_ids)):
            buf = self.buffers[side]
            buf.extend(ids)
            self.offsets[side].append(self.offsets[side][-1] + len(ids))
            if len(buf) >= self.flush_tokens:
                self._flush(side)
        self.lines.append(line_number)

    def _flush(self, side: str) -> None:
        if self.buffers[side]:
            self.bins[side].write(np.asarray(self.buffers[side], dtype=ID_DTYPE))
            self.buffers[side] = []

    def close(self) -> dict:
        """Finish the files; returns this split's entry for meta.json."""
        files = {}
        for side in SIDES:
            self._flush(side)
            files[f"{self.split}.{side}.bin"] = self.bins[side].close()
            idx = _HashingWriter(self.directory / f"{self.split}.{side}.idx")
            idx.write(np.frombuffer(self.offsets[side], dtype=OFFSET_DTYPE))
            files[f"{self.split}.{side}.idx"] = idx.close()
        lines = _HashingWriter(self.directory / f"{self.split}.lines.bin")
        lines.write(np.frombuffer(self.lines, dtype=OFFSET_DTYPE))
        files[f"{self.split}.lines.bin"] = lines.close()
        return {"pairs": len(self.lines), "src_tokens": int(self.offsets["src"][-1]),
                "tgt_tokens": int(self.offsets["tgt"][-1]), "files": files}


def write_json(path: Path, obj) -> dict:
    """Write a JSON file; returns its {"bytes", "sha256"} entry for meta.json."""
    data = json.dumps(obj, ensure_ascii=False, indent=1).encode("utf-8")
    path.write_bytes(data)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# ----------------------------------------------------------------------------- reading

def data_content_sha256(meta: dict) -> str:
    """sha256 of what a prepared data directory holds, from its meta.json: every data file's sha256
    and those of source.json and target.json (the vocabularies and BPE). Unlike the sha256 of
    meta.json itself it leaves out where the corpus was read from, so the same data prepared from a
    moved or re-cloned corpus (other paths, other mtimes) has the same content sha256."""
    content = {"files": meta.get("files"),
               "splits": {name: split.get("files") for name, split in sorted(meta.get("splits", {}).items())}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


def read_meta(directory: str | Path) -> dict:
    """meta.json of a data directory, with clear errors for a missing or foreign directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: data directory not found; {_rerun_hint()}")
    path = directory / "meta.json"
    if not path.is_file():
        raise DataError(f"{path}: missing, so {directory} is not a prepared data directory; {_rerun_hint()}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: corrupt ({e}); {_rerun_hint()}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise DataError(f"{path}: format {found!r}, expected {FORMAT!r}; {_rerun_hint()}")
    check_meta(meta, path)
    return meta


def _meta_field(meta: dict, path: Path, keys: tuple[str, ...], kind, what: str, required: bool = True):
    """meta[keys[0]][keys[1]]..., a DataError naming the file and the dotted field unless it is
    present (when ``required``) and ``kind`` (a type, or a predicate for numbers); None if absent."""
    value = meta
    for i, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            if not required and isinstance(value, dict) and i == len(keys) - 1:
                return None
            raise DataError(f"{path}: no field {'.'.join(keys)}; {_rerun_hint()}")
        value = value[key]
    ok = kind(value) if not isinstance(kind, type) else isinstance(value, kind)
    if not ok:
        raise DataError(f"{path}: field {'.'.join(keys)} is {value!r:.100}, expected {what}; {_rerun_hint()}")
    return value


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _file_entry(meta: dict, path: Path, keys: tuple[str, ...]) -> None:
    _meta_field(meta, path, keys, dict, "an object with bytes and sha256")
    _meta_field(meta, path, (*keys, "bytes"), _count, "a byte count")
    _meta_field(meta, path, (*keys, "sha256"), str, "a sha256 hex string")


def check_meta(meta: dict, path: Path) -> None:
    """Every field of meta.json that the readers index into, checked once when it is read, so that a
    missing entry or a wrong type is a DataError naming the file and the field, not a KeyError or a
    TypeError later: splits (pairs, the five files of each, inputs), files, source and target
    (vocab_size, vocab_sha256, kind, mode), settings."""
    for name in _meta_field(meta, path, ("splits",), dict, "an object of splits"):
        split = ("splits", name)
        _meta_field(meta, path, split, dict, "an object")
        _meta_field(meta, path, (*split, "pairs"), _count, "a pair count")
        _meta_field(meta, path, (*split, "files"), dict, "an object of files")
        for side in SIDES:
            for ext in ("bin", "idx"):
                _file_entry(meta, path, (*split, "files", f"{name}.{side}.{ext}"))
        _file_entry(meta, path, (*split, "files", f"{name}.lines.bin"))
        for key in ("src_tokens", "tgt_tokens"):
            _meta_field(meta, path, (*split, key), _count, "a token count", required=False)
        inputs = _meta_field(meta, path, (*split, "inputs"), dict, "an object of file names", required=False)
        for side in inputs or {}:
            _meta_field(meta, path, (*split, "inputs", side), str, "a file name")
    for name in _meta_field(meta, path, ("files",), dict, "an object of files", required=False) or {}:
        _file_entry(meta, path, ("files", name))
    for side in ("source", "target"):
        if _meta_field(meta, path, (side,), dict, "an object", required=False) is not None:
            _meta_field(meta, path, (side, "vocab_size"), lambda v: _count(v) and v > 0, "a vocabulary size")
            _meta_field(meta, path, (side, "vocab_sha256"), str, "a sha256 hex string", required=False)
            for key in ("kind", "mode"):
                _meta_field(meta, path, (side, key), str, "a name", required=False)
    _meta_field(meta, path, ("settings",), dict, "an object", required=False)


def _check_file(directory: Path, name: str, entry: dict, verify: bool) -> Path:
    path = directory / name
    if not path.is_file():
        raise DataError(f"{path}: missing from the data directory; {_rerun_hint()}")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise DataError(f"{path}: truncated or modified ({size} bytes, meta.json says {entry['bytes']}); "
                        f"{_rerun_hint()}")
    if verify and file_sha256(path) != entry["sha256"]:
        raise DataError(f"{path}: contents do not match the sha256 in meta.json (corrupt); {_rerun_hint()}")
    return path


def _map(path: Path, dtype) -> np.ndarray:
    """Read-only memory map; zero-length files (an empty split side) become an empty array."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def read_json_file(directory: str | Path, name: str, verify: bool = True) -> dict:
    """source.json / target.json of a data directory, checked against meta.json."""
    directory = Path(directory)
    meta = read_meta(directory)
    if name not in meta.get("files", {}):
        raise DataError(f"{directory / 'meta.json'}: no entry for {name}; {_rerun_hint()}")
    path = _check_file(directory, name, meta["files"][name], verify)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: corrupt ({e}); {_rerun_hint()}") from None


def check_source_vocab(directory: str | Path, vocab_tokens: Sequence[str]) -> None:
    """Raise if the data was prepared with another source vocabulary than the model's (e.g. another BERT)."""
    meta = read_meta(directory)
    stored = meta.get("source", {})
    _meta_field(meta, Path(directory) / "meta.json", ("source", "vocab_sha256"), str, "a sha256 hex string")
    if vocab_fingerprint(vocab_tokens) != stored["vocab_sha256"]:
        raise DataError(
            f"{Path(directory) / 'meta.json'}: the data was prepared with a different source vocabulary "
            f"({stored['vocab_size']} tokens, kind {stored.get('kind')!r}) than the model's ({len(vocab_tokens)} "
            f"tokens); re-run tools/prepare_data.py with the same --bert as the model, or point to the "
            f"matching data directory")


class ParallelData:
    """One split of a prepared data directory, memory-mapped (nothing is read into Python lists).

    src_lengths / tgt_lengths are in-memory int64 arrays (cheap: 8 bytes per pair); pair(i) returns
    read-only views into the mapped files. Target lengths exclude BOS/EOS.
    """

    def __init__(self, directory: str | Path, split: str, verify: bool = False):
        self.directory, self.split = Path(directory), split
        self.meta = read_meta(self.directory)
        splits = self.meta.get("splits", {})
        if split not in splits:
            raise DataError(f"{self.directory / 'meta.json'}: no split {split!r} (has: {', '.join(sorted(splits))}); "
                            f"prepare it with tools/prepare_data.py")
        info = splits[split]
        self.num_pairs = int(info["pairs"])
        files = {name: _check_file(self.directory, name, entry, verify) for name, entry in info["files"].items()}
        self._bin, self._idx, self._ids, self._offsets = {}, {}, {}, {}
        for side in SIDES:
            bin_path, idx_path = files[f"{split}.{side}.bin"], files[f"{split}.{side}.idx"]
            ids, idx = _map(bin_path, ID_DTYPE), _map(idx_path, OFFSET_DTYPE)
            if len(idx) != self.num_pairs + 1 or idx[0] != 0 or idx[-1] != len(ids):
                raise DataError(f"{idx_path}: offsets do not match {bin_path.name} and meta.json "
                                f"({len(idx)} offsets for {self.num_pairs} pairs, last {idx[-1] if len(idx) else None}, "
                                f"{len(ids)} ids); {_rerun_hint()}")
            lengths = np.diff(idx)
            if len(lengths) and lengths.min() < 0:
                raise DataError(f"{idx_path}: offsets are not increasing (corrupt); {_rerun_hint()}")
            self._bin[side], self._idx[side] = ids, idx
            # plain-ndarray views of the same mapping: slicing a np.memmap builds a memmap object
            # per slice, which made slicing the bulk of collate()'s time (docs/speed.md)
            self._ids[side], self._offsets[side] = ids.view(np.ndarray), idx.view(np.ndarray)
            setattr(self, f"{side}_lengths", lengths.astype(np.int64))
        self.line_numbers = _map(files[f"{split}.lines.bin"], OFFSET_DTYPE)
        if len(self.line_numbers) != self.num_pairs:
            raise DataError(f"{files[f'{split}.lines.bin']}: {len(self.line_numbers)} line numbers for "
                            f"{self.num_pairs} pairs; {_rerun_hint()}")
        if verify:
            self._check_id_ranges()

    def _check_id_ranges(self) -> None:
        for side, key in (("src", "source"), ("tgt", "target")):
            ids = self._bin[side]
            size = _meta_field(self.meta, self.directory / "meta.json", (key, "vocab_size"), int, "a vocabulary size")
            if len(ids) and (ids.min() < 0 or ids.max() >= size):
                at = int(np.argmax((ids < 0) | (ids >= size)))
                raise DataError(f"{self.directory / f'{self.split}.{side}.bin'}: id {int(ids[at])} at position {at} "
                                f"is outside the {key} vocabulary of {size} symbols (corrupt); {_rerun_hint()}")

    def __len__(self) -> int:
        return self.num_pairs

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(source ids, target ids) of pair i as read-only int32 views."""
        if not -self.num_pairs <= i < self.num_pairs:
            raise IndexError(f"pair {i} out of range for {self.num_pairs} pairs in split {self.split!r}")
        i %= self.num_pairs
        return tuple(self._ids[s][self._offsets[s][i]:self._offsets[s][i + 1]] for s in SIDES)

    def _gather(self, side: str, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated ids of the given pairs and their lengths (one numpy copy, no Python lists)."""
        idx = self._offsets[side]
        starts, ends = idx[indices], idx[indices + 1]
        ids = self._ids[side]
        return np.concatenate([ids[a:b] for a, b in zip(starts.tolist(), ends.tolist())]), ends - starts

    @property
    def source_config(self) -> dict:
        """SourcePipeline.to_dict() stored next to the data (rebuild with SourcePipeline.from_dict)."""
        return read_json_file(self.directory, "source.json")

    @property
    def target_config(self) -> dict:
        return read_json_file(self.directory, "target.json")


# ----------------------------------------------------------------------------- batching

def make_batches(src_lengths: Sequence[int] | np.ndarray, tgt_lengths: Sequence[int] | np.ndarray,
                 max_sentences: int = 500, max_tokens: int | None = None, seed: int = 0,
                 epoch: int = 0) -> list[np.ndarray]:
    """Length-bucketed batches of pair indices for one epoch (data-parallel ranks: each makes its own
    with nmt.train.distributed.shard_batches).

    Pairs are sorted by (padded width, source length, target length, random key), so equal lengths
    are mixed differently every (seed, epoch). The padded width of a pair is max(S, T) on the
    collated tensors: S = source length (with its special tokens), T = target length + 1 (BOS/EOS).
    The sorted order is cut greedily: a batch ends before it would exceed ``max_sentences`` pairs
    or, when given, ``max_tokens`` padded tokens, ``B * max width in the batch``.
    A single pair longer than ``max_tokens`` is an error (raise max_tokens or filter with --max-len).
    The batch order is then shuffled with the same (seed, epoch) generator.
    """
    src = np.asarray(src_lengths, dtype=np.int64)
    tgt = np.asarray(tgt_lengths, dtype=np.int64)
    if src.ndim != 1 or src.shape != tgt.shape:
        raise DataError(f"source and target length arrays differ in shape: {src.shape} vs {tgt.shape}")
    if max_sentences < 1 or (max_tokens is not None and max_tokens < 1):
        raise DataError(f"max_sentences ({max_sentences}) and max_tokens ({max_tokens}) must be positive")
    rng = np.random.default_rng([seed, epoch])
    width = np.maximum(src, tgt + 1)              # padded width each pair needs: max(S, T)
    if len(src) and (width.max() + 1) * (src.max() + 1) * (tgt.max() + 1) < 2 ** 40:
        # one float key: the integer part orders (width, src, tgt), the fraction is the random
        # tie-break (2^-12 resolution at worst); one argsort is faster than lexsort's passes (docs/speed.md)
        key = ((width * (src.max() + 1) + src) * (tgt.max() + 1) + tgt).astype(np.float64)
        order = np.argsort(key + rng.random(len(src)), kind="stable")
    else:
        order = np.lexsort((rng.random(len(src)), tgt, src, width))
    width = width[order]                          # non-decreasing along the sorted order
    if max_tokens is not None and len(order) and width[-1] > max_tokens:
        i = int(order[np.argmax(width > max_tokens)])
        raise DataError(f"pair {i} (source {src[i]}, target {tgt[i]} tokens) alone exceeds max_tokens="
                        f"{max_tokens}; raise max_tokens or drop long pairs (prepare_data.py --max-len)")
    limit = np.iinfo(np.int64).max if max_tokens is None else max_tokens
    cuts, start, n = [], 0, len(order)
    steps = np.arange(1, min(max_sentences, n) + 1)
    while start < n:
        # widths are sorted, so a batch's padded size is (size) * (width of its last pair), which
        # grows with the size: take the largest size that fits.
        k = min(max_sentences, n - start)
        fits = steps[:k] * width[start:start + k] <= limit
        start += int(k if fits[-1] else np.argmin(fits))
        cuts.append(start)
    cuts = cuts[:-1]
    batches = np.split(order, cuts) if len(order) else []
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def token_budget(src_lengths: Sequence[int] | np.ndarray, tgt_lengths: Sequence[int] | np.ndarray,
                 sentences: int) -> tuple[int, int]:
    """Token-bucketed batches that hold ``sentences`` pairs ON AVERAGE: (max_tokens, max_sentences)
    for :func:`make_batches`.

    The loss of an update is a mean over its target tokens, so with a fixed sentence count per
    batch, a batch of one-word headings counts as much as a batch of paragraphs with 20x the tokens:
    every token of a short segment weighs up to 20x more, and the model learns to stop early. A
    fixed token budget per batch (``sentences`` x the mean padded width) gives every update about
    the same number of tokens; batches of short pairs simply hold more of them (the sentence cap
    only bounds the work of cutting: the budget over the narrowest pair).

    >>> token_budget([5, 3, 12, 20], [4, 2, 10, 15], sentences=2)    # widths 5, 3, 12, 20: mean 10
    (20, 6)
    """
    src = np.asarray(src_lengths, dtype=np.int64)
    tgt = np.asarray(tgt_lengths, dtype=np.int64)
    if sentences < 1 or len(src) == 0:
        raise DataError(f"token_budget needs sentences >= 1 and some pairs, got {sentences} and {len(src)} pairs")
    width = np.maximum(src, tgt + 1)              # padded width of a pair, as in make_batches
    budget = max(int(round(sentences * float(width.mean()))), int(width.max()))
    return budget, max(sentences, budget // max(int(width.min()), 1))


@dataclass
class Batch:
    """Tensors of one batch. PAD (Vocab.PAD) fills target positions past EOS."""
    src_ids: torch.Tensor       # [B, S] long, source ids padded with the source pad id
    src_mask: torch.Tensor      # [B, S] bool, True at real tokens
    prev_tokens: torch.Tensor   # [B, T] long, BOS + y (decoder input, teacher forcing)
    target: torch.Tensor        # [B, T] long, y + EOS (what the decoder must predict)
    indices: np.ndarray         # [B] pair indices in the split
    num_tokens: int             # real target tokens (non-PAD in target), for the loss normalisation

    def to(self, device, non_blocking: bool = False) -> "Batch":
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(self, src_ids=move(self.src_ids), src_mask=move(self.src_mask),
                       prev_tokens=move(self.prev_tokens), target=move(self.target))

    def pin_memory(self) -> "Batch":
        return replace(self, src_ids=self.src_ids.pin_memory(), src_mask=self.src_mask.pin_memory(),
                       prev_tokens=self.prev_tokens.pin_memory(), target=self.target.pin_memory())

    def __len__(self) -> int:
        return len(self.indices)


def collate(data: ParallelData, indices: Iterable[int] | np.ndarray, src_pad_id: int) -> Batch:
    """Pad the given pairs into a Batch (numpy fill, then torch.from_numpy: no per-token Python).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> w = SplitWriter(d, "train"); w.add([101, 7, 102], [5, 6], 1); w.add([101, 102], [4], 2)
    >>> meta = {"format": FORMAT, "splits": {"train": w.close()}}
    >>> _ = (d / "meta.json").write_text(json.dumps(meta))
    >>> b = collate(ParallelData(d, "train"), [0, 1], src_pad_id=0)
    >>> b.src_ids.tolist(), b.src_mask.tolist()
    ([[101, 7, 102], [101, 102, 0]], [[True, True, True], [True, True, False]])
    >>> b.prev_tokens.tolist(), b.target.tolist(), b.num_tokens   # BOS=1, EOS=2, PAD=0
    ([[1, 5, 6], [1, 4, 0]], [[5, 6, 2], [4, 2, 0]], 5)
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) == 0:
        raise DataError("collate() got an empty list of indices")
    if indices.min() < 0 or indices.max() >= len(data):
        raise DataError(f"collate(): index out of range for {len(data)} pairs in split {data.split!r}")
    b = len(indices)
    src_flat, src_len = data._gather("src", indices)
    tgt_flat, tgt_len = data._gather("tgt", indices)
    src_mask = np.arange(int(src_len.max())) < src_len[:, None]            # [B, S]
    src = np.full(src_mask.shape, src_pad_id, dtype=np.int64)
    src[src_mask] = src_flat
    t = int(tgt_len.max()) + 1
    y_mask = np.arange(t) < tgt_len[:, None]                               # [B, T], True at y
    prev = np.full((b, t), Vocab.PAD, dtype=np.int64)
    target = np.full((b, t), Vocab.PAD, dtype=np.int64)
    prev[:, 0] = Vocab.BOS
    prev[:, 1:][y_mask[:, :-1]] = tgt_flat                                 # BOS + y
    target[y_mask] = tgt_flat
    target[np.arange(b), tgt_len] = Vocab.EOS                              # y + EOS
    return Batch(src_ids=torch.from_numpy(src), src_mask=torch.from_numpy(src_mask),
                 prev_tokens=torch.from_numpy(prev), target=torch.from_numpy(target),
                 indices=indices, num_tokens=int(tgt_len.sum()) + b)


def split_text(data_dir: str | Path, split: str) -> tuple[list[str], list[str], str]:
    """(source lines, reference lines, a display name such as "tst2013") of a prepared split, read
    from the original text files recorded in its meta.json: every line, so BLEU is over the whole
    set as released (prepare_data may have dropped empty or overlong pairs from the binarized data)."""
    splits = read_meta(Path(data_dir))["splits"]
    if split not in splits:
        raise DataError(f"{Path(data_dir) / 'meta.json'}: no split {split!r} (has: {', '.join(sorted(splits))}); "
                        f"prepare it with tools/prepare_data.py")
    inputs = splits[split].get("inputs", {})
    sides = []
    for side in ("src", "tgt"):
        path = Path(inputs.get(side, ""))
        if not path.is_file():
            raise DataError(f"{data_dir}/meta.json: the {split!r} split's {side} text {path} is not there any more; "
                            f"BLEU needs the original text files: restore them or prepare the data again")
        sides.append(read_lines(path))
    src, ref = sides
    if len(src) != len(ref):
        raise DataError(f"{inputs['src']} has {len(src)} lines, {inputs['tgt']} {len(ref)}")
    name = Path(inputs["tgt"]).name.removesuffix(".gz")
    name = name.rsplit(".", 1)[0] if "." in name else name
    return src, ref, name
