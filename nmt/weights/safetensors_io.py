"""Read (and write) the safetensors format by hand, so the run time needs no ``safetensors``.

The documented layout (https://github.com/huggingface/safetensors, "Format"):

    8 bytes   N, unsigned little-endian 64-bit: size of the header
    N bytes   JSON object, UTF-8: {"name": {"dtype": "F32", "shape": [2, 3],
              "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}} (metadata optional)
    rest      the byte buffer; offsets are relative to its start, tensors are row-major
              little-endian, and together they cover the buffer without holes or overlaps.

Example (a round trip through a temporary file):

>>> import tempfile, torch
>>> path = Path(tempfile.mkdtemp()) / "x.safetensors"
>>> save_safetensors({"a": torch.arange(6.0).view(2, 3)}, path, metadata={"format": "pt"})
>>> tensors, meta = load_safetensors(path)
>>> tensors["a"].tolist(), meta
([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], {'format': 'pt'})
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

from nmt.errors import CheckpointError
from nmt.files import atomic_write

# safetensors dtype tag -> (torch dtype, bytes per element)
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
TAGS = {dtype: tag for tag, dtype in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit
MAX_DIM = 2 ** 40                # a dimension beyond this is a corrupt header, even in an empty tensor


def load_safetensors(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return ``(tensors, metadata)``; every problem raises CheckpointError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read safetensors file ({error.strerror})") from None
    if len(data) < 8:
        raise CheckpointError(f"{path}: truncated safetensors file ({len(data)} bytes, no header length)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER or 8 + header_len > len(data):
        raise CheckpointError(f"{path}: header length {header_len} does not fit in the "
                              f"{len(data)}-byte file (truncated or not a safetensors file)")
    try:
        header = json.loads(data[8:8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header must be a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: __metadata__ must map names to strings, got {metadata!r:.200}")
    buffer = memoryview(data)[8 + header_len:]
    tensors: dict[str, torch.Tensor] = {}
    spans = []
    for name, info in header.items():
        dtype, shape, begin, end = _header_entry(path, name, info, len(buffer))
        spans.append((begin, end, name))
        # bytearray copy: aligned, writable, independent of the file buffer
        raw = bytearray(buffer[begin:end])
        tensor = torch.frombuffer(raw, dtype=dtype) if end > begin else torch.empty(0, dtype=dtype)
        tensors[name] = tensor.reshape(shape)
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin != position:
            raise CheckpointError(f"{path}: tensor {name!r} starts at {begin}, expected {position} "
                                  "(overlapping tensors or a hole in the buffer)")
        position = end
    if position != len(buffer):
        raise CheckpointError(f"{path}: {len(buffer) - position} bytes after the last tensor "
                              "(corrupt file)")
    return tensors, dict(metadata)


def _header_entry(path: Path, name: str, info, buffer_size: int) -> tuple[torch.dtype, list[int], int, int]:
    """(dtype, shape, begin, end) of one header entry, checked before any tensor is made: a known
    dtype, a shape of non-negative integers, and a byte range inside the buffer holding exactly
    dtype x shape bytes. A CheckpointError names the file and the tensor."""
    try:
        dtype = DTYPES[info["dtype"]]
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not isinstance(offsets, list):
            raise TypeError
        begin, end = offsets
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: tensor {name!r} has a bad header entry {info!r:.200} "
                              f"(dtype one of {sorted(DTYPES)}, shape, data_offsets)") from None
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_DIM for s in shape):
        raise CheckpointError(f"{path}: tensor {name!r} has shape {shape!r:.200}; every dimension must be an "
                              f"integer from 0 to {MAX_DIM:,} (a corrupt or foreign file)")
    if not all(isinstance(o, int) and not isinstance(o, bool) for o in (begin, end)):
        raise CheckpointError(f"{path}: tensor {name!r} has data_offsets {offsets!r:.200}, not two integers")
    size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if not 0 <= begin <= end <= buffer_size or end - begin != size:
        raise CheckpointError(f"{path}: tensor {name!r} data_offsets [{begin}, {end}] do not match "
                              f"{info['dtype']} {shape} ({size} bytes) in a {buffer_size}-byte buffer "
                              "(truncated or corrupt file)")
    return dtype, shape, begin, end


def save_safetensors(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` in the safetensors layout (atomically: temp file + rename)."""
    path = Path(path)
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks, offset = [], 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        if tensor.dtype not in TAGS:
            raise CheckpointError(f"{path}: cannot store {name!r} of dtype {tensor.dtype}")
        raw = tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {"dtype": TAGS[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # pad the header so the buffer starts 8-byte aligned
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for raw in chunks:
            f.write(raw)
