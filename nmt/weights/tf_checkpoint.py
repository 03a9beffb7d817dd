"""Read Google's TensorFlow BERT checkpoints without TensorFlow (their names are mapped to
``nmt.model.bert``'s by nmt/weights/bert_names.py).

A TF checkpoint ``bert_model.ckpt`` is a *tensor bundle*: ``bert_model.ckpt.index`` plus data
shards ``bert_model.ckpt.data-00000-of-00001``. Everything here is read by hand (numpy only):

* ``.index`` is a LevelDB-style sorted table. Its last 48 bytes are the footer: two block
  handles (varint offset + varint size; metaindex, then index) padded to 40 bytes, then the magic
  number 0xdb4775248b80fb57 (little-endian). Every block is followed by a 5-byte trailer: a
  compression byte (0 = none) and the *masked* CRC32C of block + compression byte. A block holds
  prefix-compressed entries (varints: shared key bytes, unshared key bytes, value size; then the
  unshared key bytes and the value), then the restart offsets (uint32 each) and their count.
  The index block maps the last key of each data block to its handle.
* Values are protobuf messages, decoded by hand: under the empty key a ``BundleHeaderProto``
  (1 num_shards, 2 endianness, 3 version) and under each tensor name a ``BundleEntryProto``
  (1 dtype, 2 shape, 3 shard_id, 4 offset, 5 size, 6 crc32c [fixed32], 7 slices).
* A tensor is ``size`` raw little-endian bytes at ``offset`` in shard ``shard_id``; its entry
  stores the masked CRC32C of those bytes, which we verify (CRC32C: nmt/weights/crc32c.py).
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nmt.errors import CheckpointError
from nmt.weights.crc32c import crc32c, mask_crc

# ---- protobuf wire format ------------------------------------------------------------------


def _varint(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError(f"{where}: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointError(f"{where}: varint longer than 10 bytes")


def parse_protobuf(buf: bytes, where: str) -> dict[int, list]:
    """Field number -> list of raw values (ints for varint/fixed, bytes for length-delimited)."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, where)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, where)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise CheckpointError(f"{where}: truncated fixed64 field {number}")
            (value,) = struct.unpack_from("<Q", buf, pos)
            pos += 8
        elif wire == 2:
            size, pos = _varint(buf, pos, where)
            if pos + size > len(buf):
                raise CheckpointError(f"{where}: truncated field {number} ({size} bytes)")
            value = bytes(buf[pos:pos + size])
            pos += size
        elif wire == 5:
            if pos + 4 > len(buf):
                raise CheckpointError(f"{where}: truncated fixed32 field {number}")
            (value,) = struct.unpack_from("<I", buf, pos)
            pos += 4
        else:
            raise CheckpointError(f"{where}: unsupported protobuf wire type {wire} (field {number})")
        fields.setdefault(number, []).append(value)
    return fields


# ---- LevelDB-style table -------------------------------------------------------------------

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
MAX_DIM = 2 ** 40        # a dimension beyond this is a corrupt index, even in an empty tensor


def _read_block(data: bytes, offset: int, size: int, path: Path, what: str) -> bytes:
    if offset + size + 5 > len(data):
        raise CheckpointError(f"{path}: {what} at offset {offset} (+{size} bytes) runs past the end "
                              f"of the {len(data)}-byte file (truncated index)")
    block = data[offset:offset + size]
    compression, stored = struct.unpack_from("<BI", data, offset + size)
    if mask_crc(crc32c(data[offset:offset + size + 1])) != stored:
        raise CheckpointError(f"{path}: checksum mismatch in {what} at offset {offset} (corrupt index)")
    if compression != 0:
        raise CheckpointError(f"{path}: {what} uses compression type {compression}; only "
                              "uncompressed tables (what TensorFlow writes for checkpoints) are supported")
    return block


def _block_entries(block: bytes, path: Path, what: str) -> list[tuple[bytes, bytes]]:
    where = f"{path}: {what}"
    if len(block) < 4:
        raise CheckpointError(f"{where}: block too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * num_restarts
    if end < 0:
        raise CheckpointError(f"{where}: bad restart count {num_restarts}")
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos, where)
        unshared, pos = _varint(block, pos, where)
        value_size, pos = _varint(block, pos, where)
        if shared > len(key) or pos + unshared + value_size > end:
            raise CheckpointError(f"{where}: corrupt entry at byte {pos}")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + value_size]))
        pos += value_size
    return entries


def read_table(path) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a LevelDB-style table file, in key order, checksums verified."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read the checkpoint index ({error.strerror})") from None
    if len(data) < FOOTER_SIZE:
        raise CheckpointError(f"{path}: {len(data)} bytes is too short for a table footer (truncated index)")
    footer = data[-FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, 40)
    if magic != TABLE_MAGIC:
        raise CheckpointError(f"{path}: bad magic number {magic:#018x} (expected {TABLE_MAGIC:#018x}); "
                              "not a TensorFlow checkpoint index, or truncated")
    where = f"{path}: footer"
    _, pos = _varint(footer, 0, where)          # metaindex offset (unused)
    _, pos = _varint(footer, pos, where)        # metaindex size
    index_offset, pos = _varint(footer, pos, where)
    index_size, _ = _varint(footer, pos, where)
    index = _read_block(data, index_offset, index_size, path, "index block")
    entries = []
    for number, (_, handle) in enumerate(_block_entries(index, path, "index block")):
        offset, pos = _varint(handle, 0, where)
        size, _ = _varint(handle, pos, where)
        block = _read_block(data, offset, size, path, f"data block {number}")
        entries += _block_entries(block, path, f"data block {number}")
    return entries


# ---- tensor bundle -------------------------------------------------------------------------

# TF DataType enum -> numpy dtype (little-endian); only what BERT checkpoints hold.
TF_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
             9: np.int64, 10: np.bool_, 19: np.float16, 14: "bfloat16"}


@dataclass
class BundleEntry:
    """Where one tensor lives (a decoded BundleEntryProto)."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None


def _field(fields: dict[int, list], number: int, kind: type, default, where: str, what: str):
    """The last value of protobuf field ``number`` (proto3: the last one wins), which must be of the
    wire kind ``kind`` (int: varint or fixed, bytes: length-delimited); ``default`` when absent."""
    values = fields.get(number)
    if not values:
        return default
    if not isinstance(values[-1], kind):
        raise CheckpointError(f"{where}: field {number} ({what}) has the wrong wire type (a corrupt index)")
    return values[-1]


def _parse_shape(name: str, f: dict[int, list], where: str) -> tuple[int, ...]:
    """The TensorShapeProto (field 2: repeated Dim{1 size}, field 3 unknown_rank) of an entry; every
    dimension must be known and non-negative (sizes are int64: a huge varint is a negative one)."""
    shape: list[int] = []
    for shape_bytes in f.get(2, []):
        if not isinstance(shape_bytes, bytes):
            raise CheckpointError(f"{where}: field 2 (shape) has the wrong wire type (a corrupt index)")
        s = parse_protobuf(shape_bytes, where)
        if _field(s, 3, int, 0, where, "unknown_rank"):
            raise CheckpointError(f"{where}: tensor {name!r} has unknown rank")
        for dim in s.get(2, []):
            if not isinstance(dim, bytes):
                raise CheckpointError(f"{where}: a shape dimension has the wrong wire type (a corrupt index)")
            size = _field(parse_protobuf(dim, where), 1, int, 0, where, "dimension size")
            if size >= 1 << 63:
                size -= 1 << 64
            shape.append(size)
    if any(not 0 <= size <= MAX_DIM for size in shape):
        raise CheckpointError(f"{where}: tensor {name!r} has shape {shape}; every dimension must be from 0 to "
                              f"{MAX_DIM:,} (a corrupt index)")
    return tuple(shape)


def _parse_entry(name: str, value: bytes, where: str) -> BundleEntry:
    f = parse_protobuf(value, where)
    if 7 in f:
        raise CheckpointError(f"{where}: tensor {name!r} is stored in slices (partitioned variable); "
                              "not supported")
    return BundleEntry(name=name, dtype=_field(f, 1, int, 0, where, "dtype"), shape=_parse_shape(name, f, where),
                       shard_id=_field(f, 3, int, 0, where, "shard_id"), offset=_field(f, 4, int, 0, where, "offset"),
                       size=_field(f, 5, int, 0, where, "size"), crc32c=_field(f, 6, int, None, where, "crc32c"))


def checkpoint_prefix(path) -> Path:
    """``dir`` or ``dir/bert_model.ckpt`` or ``dir/bert_model.ckpt.index`` -> ``dir/bert_model.ckpt``."""
    path = Path(path)
    if path.is_dir():
        indexes = sorted(path.glob("*.index"))
        if len(indexes) != 1:
            raise CheckpointError(f"{path}: expected exactly one TensorFlow checkpoint (*.index) in the "
                                  f"directory, found {len(indexes)}")
        return indexes[0].with_suffix("")
    if path.suffix == ".index":
        return path.with_suffix("")
    return path


def read_bundle_index(prefix) -> tuple[int, dict[str, BundleEntry]]:
    """Decode ``PREFIX.index``: (number of shards, tensor name -> BundleEntry)."""
    prefix = checkpoint_prefix(prefix)
    index_path = prefix.with_name(prefix.name + ".index")
    if not index_path.is_file():
        raise CheckpointError(f"{index_path}: checkpoint index not found")
    table = read_table(index_path)
    if not table or table[0][0] != b"":
        raise CheckpointError(f"{index_path}: no BundleHeaderProto under the empty key")
    where = f"{index_path}: header"
    header = parse_protobuf(table[0][1], where)
    num_shards = _field(header, 1, int, 0, where, "num_shards")
    if _field(header, 2, int, 0, where, "endianness") != 0:
        raise CheckpointError(f"{index_path}: big-endian checkpoints are not supported")
    if num_shards < 1:
        raise CheckpointError(f"{index_path}: bad shard count {num_shards}")
    entries = {}
    for key, value in table[1:]:
        try:
            name = key.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{index_path}: tensor name {key!r} is not UTF-8") from None
        entry = _parse_entry(name, value, f"{index_path}: entry {name!r}")
        if not 0 <= entry.shard_id < num_shards:
            raise CheckpointError(f"{index_path}: tensor {name!r} is in shard {entry.shard_id} "
                                  f"but the header says {num_shards} shard(s)")
        entries[name] = entry
    return num_shards, entries


def read_tf_checkpoint(path, verify_checksums: bool = True) -> dict[str, torch.Tensor]:
    """Every tensor of a TF checkpoint, by TF name, each checked against its CRC32C."""
    prefix = checkpoint_prefix(path)
    num_shards, entries = read_bundle_index(prefix)
    out: dict[str, torch.Tensor] = {}
    by_shard: dict[int, list[BundleEntry]] = {}
    for entry in entries.values():
        by_shard.setdefault(entry.shard_id, []).append(entry)
    for shard, shard_entries in sorted(by_shard.items()):
        shard_path = prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{num_shards:05d}")
        if not shard_path.is_file():
            raise CheckpointError(f"{shard_path}: data shard {shard} of {num_shards} is missing "
                                  "(copy all bert_model.ckpt.data-* files next to the .index)")
        data = shard_path.read_bytes()
        for entry in sorted(shard_entries, key=lambda e: e.offset):
            where = f"{shard_path}: tensor {entry.name!r}"
            if entry.dtype not in TF_DTYPES:
                raise CheckpointError(f"{where}: unsupported TF dtype {entry.dtype}")
            if entry.offset + entry.size > len(data):
                raise CheckpointError(f"{where}: bytes {entry.offset}..{entry.offset + entry.size} run "
                                      f"past the end of the {len(data)}-byte shard (truncated file)")
            raw = data[entry.offset:entry.offset + entry.size]
            if verify_checksums and entry.crc32c is not None and mask_crc(crc32c(raw)) != entry.crc32c:
                raise CheckpointError(f"{where}: checksum mismatch (corrupt data file); "
                                      "download the checkpoint again")
            out[entry.name] = _tensor(raw, entry, where)
    return out


def _tensor(raw: bytes, entry: BundleEntry, where: str) -> torch.Tensor:
    """One tensor from its bytes; CheckpointError unless they hold exactly dtype x shape."""
    dtype = TF_DTYPES[entry.dtype]
    itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
    if math.prod(entry.shape) * itemsize != len(raw):
        raise CheckpointError(f"{where}: {len(raw)} bytes do not hold shape {list(entry.shape)} of "
                              f"{itemsize}-byte elements (a corrupt checkpoint)")
    if dtype == "bfloat16":
        tensor = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16) if raw else torch.empty(0, dtype=torch.bfloat16)
    else:
        tensor = torch.from_numpy(np.frombuffer(raw, dtype=dtype).copy())
    return tensor.reshape(entry.shape)
