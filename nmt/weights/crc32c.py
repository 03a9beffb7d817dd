"""CRC-32C (Castagnoli): the checksum TensorFlow checkpoints store (read by nmt/weights/tf_checkpoint.py).

A tensor bundle keeps the *masked* CRC32C (:func:`mask_crc`) of every index block and every tensor,
so a truncated or corrupt download is caught before its weights are used. :func:`crc32c_bytewise`
is the plain reference, one table look-up per byte; :func:`crc32c` is the fast path, tested equal.

The fast path works with numpy: the data is cut into a few thousand equal lanes,
all lanes advance together 8 bytes per step through 16-bit lookup tables, and the lane CRCs are
combined with the GF(2) "append n zero bytes" operator, so numpy's vector operations do the work
instead of a Python loop per byte (speed: docs/speed.md).

>>> hex(crc32c(b"123456789"))            # the standard CRC-32C check value
'0xe3069283'
>>> crc32c(bytes(range(256)) * 40) == crc32c_bytewise(bytes(range(256)) * 40)
True
"""
from __future__ import annotations

import numpy as np

_POLY = 0x82F63B78  # Castagnoli polynomial, bit-reflected


def _byte_tables() -> np.ndarray:
    """Slicing-by-8 tables: T[k][b] = CRC of byte b followed by k zero bytes (raw, init 0)."""
    t = np.zeros((8, 256), dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (_POLY if c & 1 else 0)
        t[0, i] = c
    for k in range(1, 8):
        t[k] = (t[k - 1] >> 8) ^ t[0][t[k - 1] & 0xFF]
    return t


_T8 = _byte_tables()
_T0_LIST = [int(v) for v in _T8[0]]
# 16-bit tables for an 8-byte step: chunk c holds bytes 2c (low) and 2c+1 of the step.
_T16 = np.stack([_T8[7 - 2 * c][np.arange(65536) & 0xFF] ^ _T8[6 - 2 * c][np.arange(65536) >> 8]
                 for c in range(4)])
_LANES = 4096             # at most this many lanes advance together
_LANES_MIN_BYTES = 2048   # shorter inputs go byte by byte in Python


def crc32c_bytewise(data: bytes, crc: int = 0) -> int:
    """Reference CRC32C, one byte at a time (pure Python; for short inputs and tests)."""
    crc ^= 0xFFFFFFFF
    table = _T0_LIST
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


def _apply(matrix: list[int], x: int) -> int:
    """Multiply the GF(2) matrix (32 columns as ints) by the bit vector ``x``."""
    out, bit = 0, 0
    while x:
        if x & 1:
            out ^= matrix[bit]
        x >>= 1
        bit += 1
    return out


def _zero_shift_tables(max_log2: int = 40) -> np.ndarray:
    """[k, 4, 256] byte tables of the operator "append 2**k zero bytes" to a raw CRC register."""
    bits = (np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1              # [256, 8]
    matrix = [(1 << b >> 8) ^ _T0_LIST[(1 << b) & 0xFF] for b in range(32)]     # one zero byte
    tables = np.zeros((max_log2, 4, 256), dtype=np.uint32)
    for k in range(max_log2):
        columns = np.array(matrix, dtype=np.uint32)
        for c in range(4):
            picked = np.where(bits == 1, columns[8 * c:8 * c + 8][None, :], 0).astype(np.uint32)
            tables[k, c] = np.bitwise_xor.reduce(picked, axis=1)
        matrix = [_apply(matrix, col) for col in matrix]                      # square: 2**(k+1)
    return tables


_ZERO_SHIFT = _zero_shift_tables()


def _shift(values: np.ndarray, log2_bytes: int) -> np.ndarray:
    """Append 2**log2_bytes zero bytes to each raw CRC in ``values`` (vectorized)."""
    t = _ZERO_SHIFT[log2_bytes]
    return t[0][values & 0xFF] ^ t[1][(values >> 8) & 0xFF] ^ t[2][(values >> 16) & 0xFF] ^ t[3][values >> 24]


def crc32c(data) -> int:
    """CRC-32C of ``data`` (bytes-like), vectorized over lanes with numpy (see module docstring)."""
    view = np.frombuffer(data, dtype=np.uint8)
    n = view.size
    if n < _LANES_MIN_BYTES:
        return crc32c_bytewise(bytes(view))
    # Lanes of 2**log2 bytes each (a multiple of 8), at most _LANES of them.
    log2 = max(3, int(np.ceil(np.log2(n / _LANES))))
    lane_bytes = 1 << log2
    lanes = -(-n // lane_bytes)
    padded = np.zeros(lanes * lane_bytes, dtype=np.uint8)
    padded[padded.size - n:] = view  # leading zeros leave a raw (init 0) CRC unchanged
    # The initial register ~0 is the same as XOR-ing 0xFFFFFFFF into the first 4 data bytes.
    start = padded.size - n
    padded[start:start + 4] ^= np.uint8(0xFF)
    words = padded.view("<u4").reshape(lanes, lane_bytes // 4)             # [lanes, words]
    halves = padded.view("<u2").reshape(lanes, lane_bytes // 2)            # [lanes, halves]
    t0, t1, t2, t3 = _T16
    crc = np.zeros(lanes, dtype=np.uint32)                                 # raw CRC per lane
    for step in range(lane_bytes // 8):
        lo = words[:, 2 * step] ^ crc
        crc = t0[lo & 0xFFFF] ^ t1[lo >> 16] ^ t2[halves[:, 4 * step + 2]] ^ t3[halves[:, 4 * step + 3]]
    while crc.size > 1:  # combine neighbours: crc(A + B) = shift(crc(A), len(B)) ^ crc(B)
        if crc.size % 2:
            crc = np.concatenate([np.zeros(1, dtype=np.uint32), crc])     # a leading zero lane
        crc = _shift(crc[0::2], log2) ^ crc[1::2]
        log2 += 1
    return int(crc[0]) ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """LevelDB/TF masking: rotate right by 15 and add a constant (so CRCs of CRCs differ)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
