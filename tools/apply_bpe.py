"""Segment text with BPE codes; a drop-in for ``subword-nmt apply-bpe`` (identical output).

    python tools/apply_bpe.py -c codes.vi -i test.tok.vi -o test.bpe.vi
    cat test.tok.vi | python tools/apply_bpe.py -c codes.vi > test.bpe.vi

Like subword-nmt, each line keeps its leading and trailing whitespace (spaces, ``\\r``, ``\\n``),
runs of spaces inside the line collapse to one, and non-final pieces end in the separator (``@@``).
Lines end at ``\\n`` only. Undo with ``sed -r 's/(@@ )|(@@ ?$)//g'`` or ``nmt.text.bpe.remove_bpe``.
Bad input (missing or malformed codes, undecodable text) prints ``error: ...`` and exits 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from nmt.errors import BPEError
from nmt.text.bpe import BPE, read_codes, read_text_lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--codes", type=Path, required=True, metavar="PATH",
                        help="BPE codes file (#version: 0.2) from tools/learn_bpe.py or subword-nmt")
    parser.add_argument("-i", "--input", type=Path, default=None, metavar="PATH",
                        help="input text (default: standard input)")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="PATH",
                        help="output text (default: standard output)")
    parser.add_argument("-s", "--separator", default="@@", metavar="STR",
                        help="marker at the end of non-final pieces (default: %(default)s)")
    parser.add_argument("-m", "--merges", type=int, default=-1, metavar="INT",
                        help="use only the first INT merges (default: all)")
    return parser


def segment_line(bpe: BPE, line: str) -> str:
    """subword-nmt's process_line: segment, keeping the line's leading/trailing whitespace."""
    body = line.strip("\r\n ")
    if not body:
        return line[: len(line) - len(line.lstrip("\r\n "))]
    lead = line[: len(line) - len(line.lstrip("\r\n "))]
    trail = line[len(line.rstrip("\r\n ")):]
    return lead + bpe.segment(body) + trail


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        merges = read_codes(args.codes)
        if args.merges >= 0:
            merges = merges[: args.merges]
        bpe = BPE(merges, separator=args.separator)
        try:
            source = sys.stdin.buffer if args.input is None else open(args.input, "rb")
        except OSError as err:
            raise BPEError(f"cannot read {args.input}: {err.strerror}") from None
        try:
            out = sys.stdout.buffer if args.output is None else open(args.output, "wb")
        except OSError as err:
            raise BPEError(f"cannot write {args.output}: {err.strerror}") from None
        with source, out:
            name = "<stdin>" if args.input is None else str(args.input)
            for line in read_text_lines(source, name):
                out.write(segment_line(bpe, line).encode("utf-8"))
    except BPEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
