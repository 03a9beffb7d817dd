"""Reading text files line by line, the one way every part of nmt does it.

UTF-8 only (invalid bytes raise DataError naming ``file:line``), plain or gzip (by magic bytes),
lines split at ``\\n`` only (as ``wc -l`` counts), ``\\r\\n`` accepted, a leading BOM removed.

>>> list(decode_lines([b"\\xef\\xbb\\xbfhello\\r\\n", b"world"], "x.txt"))
[(1, 'hello'), (2, 'world')]
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Iterable, Iterator

from nmt.errors import DataError

BOM = "\ufeff"


def strip_bom(line: str) -> str:
    return line[1:] if line.startswith(BOM) else line


def decode_lines(raw_lines: Iterable[bytes], name: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of UTF-8 byte lines, e.g. a file or ``sys.stdin.buffer`` opened in
    binary mode (so lines end only at ``\\n``, as ``wc -l`` counts them, not at the other Unicode
    line separators; a final line without newline counts too). The newline and a trailing ``\\r``
    are removed, and a BOM at the start. Invalid UTF-8 raises DataError naming ``name:line``.
    """
    for number, raw in enumerate(raw_lines, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{name}:{number}: invalid UTF-8 at byte {e.start} of the line "
                            f"({raw[max(e.start - 10, 0):e.start + 10]!r}); fix the encoding "
                            f"(e.g. iconv -f latin1 -t utf-8)") from None
        if line.endswith("\n"):
            line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
        yield number, (strip_bom(line) if number == 1 else line)


def open_text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """:func:`decode_lines` of a UTF-8 text file, plain or gzip (detected by its magic bytes), read as
    it goes. A missing or unreadable file raises DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as f:
            yield from decode_lines(f, str(path))
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({e})") from None


def read_lines(path: str | Path) -> list[str]:
    """Every line of a text file (:func:`open_text_lines`), e.g. one segment per line of a corpus,
    a reference or a system output."""
    return [line for _, line in open_text_lines(path)]
