"""Learn BPE merges from text; a drop-in for ``subword-nmt learn-bpe`` (same codes file).

    python tools/learn_bpe.py -i train.tok.vi -o codes.vi -s 16000
    cat train.tok.vi | python tools/learn_bpe.py -s 16000 > codes.vi

The input is space-separated text (pre-tokenize raw text with nmt.text.pretokenize first), read as UTF-8;
words are split on U+0020 exactly as subword-nmt does. The output is a ``#version: 0.2`` codes file.
Bad input (undecodable text, bad numbers, unreadable files) prints ``error: ...`` and exits 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from nmt.errors import BPEError
from nmt.text.bpe import CODES_HEADER, learn_bpe, read_text_lines, write_codes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--input", type=Path, default=None, metavar="PATH",
                        help="input text (default: standard input)")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="PATH",
                        help="output codes file (default: standard output)")
    parser.add_argument("-s", "--symbols", type=int, default=10000,
                        help="number of merges to learn (default: %(default)s, as subword-nmt)")
    parser.add_argument("--min-frequency", type=int, default=2, metavar="FREQ",
                        help="stop when no pair occurs at least FREQ times (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.symbols < 0:
            raise BPEError(f"--symbols must be >= 0, got {args.symbols}")
        if args.input is None:
            merges = learn_bpe(read_text_lines(sys.stdin.buffer, "<stdin>"), args.symbols, args.min_frequency)
        else:
            try:
                with open(args.input, "rb") as f:
                    merges = learn_bpe(read_text_lines(f, str(args.input)), args.symbols, args.min_frequency)
            except OSError as err:
                raise BPEError(f"cannot read {args.input}: {err.strerror}") from None
        if args.output is None:
            sys.stdout.buffer.write(
                "".join([CODES_HEADER + "\n"] + [f"{a} {b}\n" for a, b in merges]).encode("utf-8"))
            sys.stdout.flush()
        else:
            try:
                write_codes(merges, args.output)
            except OSError as err:
                raise BPEError(f"cannot write {args.output}: {err.strerror}") from None
    except BPEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if len(merges) < args.symbols:
        print(f"learned {len(merges)} merges: no pair occurs >= {args.min_frequency} times; stopping",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
