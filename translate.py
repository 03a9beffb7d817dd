#!/usr/bin/env python
"""Translate text with a trained checkpoint: one line in, one line out, in input order.

    python translate.py < test.en > test.hyp.de           # the demo run's best model
    python translate.py --pair en-vi < test.en            # the En->Vi demo run (train.py --pair en-vi)
    python translate.py --checkpoint checkpoints/demo-en-de/finetune/checkpoint_best.pt < test.en
    python translate.py --input test.en --reference test.de --beam 10 --lenpen 1.0

The checkpoint carries everything: the network spec and weights, the source and target text
pipelines (vocabularies, BPE merges) and, when training chose one on the dev set (``--lenpen-grid``,
on in the demo preset), the default length penalty. The work is done by ``nmt.decode.translator.Translator``: lines are
encoded, sorted by length, translated in batches (beam search, nmt/decode/beam_search.py), decoded (BPE
removed, detokenized) and written back in input order. Empty input lines give empty output lines. Lines longer than the encoder's positions are
truncated (with a warning naming the line). With ``--nbest N > 1`` the output is Moses n-best
format: ``<0-based line> ||| <translation> ||| <score>``, N lines per input line. With
``--reference`` the corpus BLEU and sacrebleu signature are printed on stderr at the end.
``--output`` is checked before anything is loaded (its directory must exist and be writable) and
written atomically, so a failure leaves no partial file; nonsense numbers (``--lenpen nan``) and a
device that is not there (``--device cuda`` without CUDA) are one ``error:`` line, exit status 2.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

from nmt.cpu.allocator import keep_freed_memory
from nmt.decode.translator import Translator
from nmt.errors import NmtError, TranslateError, error_line
from nmt.files import DEMO_PAIRS, atomic_write, demo_name, run_dir
from nmt.text.lines import decode_lines, read_lines

DEFAULT_RUN = run_dir(demo_name("en-de"))     # the demo run directory (train.py's default)


def read_input(path: str | None) -> tuple[list[str], str]:
    """Lines of a UTF-8 file (or stdin), without newlines, and the name errors use for it."""
    if path is not None:
        return read_lines(path), path
    return [line for _, line in decode_lines(sys.stdin.buffer, "<stdin>")], "<stdin>"


def check_output(path: str) -> None:
    """Fail before decoding when --output cannot be written: its directory must exist and be writable."""
    out = Path(path)
    if out.is_dir():
        raise TranslateError(f"--output {out}: is a directory; give a file name")
    parent = out.parent
    if not parent.is_dir():
        raise TranslateError(f"--output {out}: the directory {parent} does not exist; create it or write elsewhere")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TranslateError(f"--output {out}: the directory {parent} is not writable; check its permissions "
                             f"or write elsewhere")


def check_numbers(args: argparse.Namespace) -> None:
    """Sizes and limits that decoding can use; a NaN or an infinity is an error, not a silent default."""
    for name in ("lenpen", "max_len_a"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise TranslateError(f"--{name.replace('_', '-')} {value}: must be a finite number")
    if args.max_len_a < 0:
        raise TranslateError(f"--max-len-a {args.max_len_a}: must be >= 0")
    if args.beam < 1 or not 1 <= args.nbest <= max(args.beam, 1) or args.batch_size < 1 or args.max_tokens < 1:
        raise TranslateError(f"need --beam >= 1, 1 <= --nbest <= --beam, --batch-size >= 1 and --max-tokens >= 1 "
                             f"(got {args.beam}, {args.nbest}, {args.batch_size}, {args.max_tokens})")
    if args.beam == 1 and args.nbest > 1:
        raise TranslateError("--nbest > 1 needs --beam > 1")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Translate text with a trained nmt checkpoint.")
    p.add_argument("--checkpoint",
                   help="checkpoint file, or a run directory to use its best model (fine-tuned if there is "
                        f"one, else stage 1); default: the demo run of --pair ({DEFAULT_RUN})")
    p.add_argument("--pair", default="en-de", choices=DEMO_PAIRS,
                   help="without --checkpoint: the demo run of this direction, checkpoints/demo-PAIR "
                        "(train.py --pair PAIR); default: %(default)s")
    p.add_argument("--input", help="source text file, one sentence per line (default: stdin)")
    p.add_argument("--output", help="write translations here (default: stdout)")
    p.add_argument("--beam", type=int, default=10, help="beam size; 1 = greedy (default: 10, the paper's)")
    p.add_argument("--lenpen", type=float,
                   help="length penalty alpha: score = log p / len**alpha (default: the checkpoint's, chosen on its "
                        "dev set after training with --lenpen-grid; else 1.0, the paper's)")
    p.add_argument("--nbest", type=int, default=1, help="hypotheses per line; > 1 writes Moses n-best format")
    p.add_argument("--batch-size", type=int, default=64, help="most sentences per batch")
    p.add_argument("--max-tokens", type=int, default=4000,
                   help="most padded source tokens per batch (default: %(default)s)")
    p.add_argument("--max-len-a", type=float, default=1.2, help="output at most a * source length + b tokens")
    p.add_argument("--max-len-b", type=int, default=10)
    p.add_argument("--reference", help="reference translations: print BLEU and its signature at the end")
    p.add_argument("--bleu-tokenize", default="13a",
                   help="sacrebleu tokenizer for --reference; 'none' for pre-tokenized references")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--int8", action="store_true",
                   help="CPU only: int8 weights (per output channel) and int8 activations in the decoder's "
                        "linear layers (fbgemm dynamic quantization; nmt/cpu/inference_linear.py): faster decoding")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    keep_freed_memory()                           # nmt/cpu/allocator.py: no page faults per decoding step
    demo_run = args.checkpoint is None
    if demo_run:
        args.checkpoint = str(DEFAULT_RUN.with_name(demo_name(args.pair)))
    warn = lambda msg: print(f"warning: {msg}", file=sys.stderr)   # noqa: E731
    try:
        check_numbers(args)
        if args.output:
            check_output(args.output)
        if demo_run and not Path(args.checkpoint).is_dir():
            raise TranslateError(f"{args.checkpoint}: no demo run for {args.pair} yet; train one first "
                                 f"(python train.py --pair {args.pair}) or pass --checkpoint")
        translator = Translator.from_checkpoint(args.checkpoint, args.device, int8=args.int8)
        if args.lenpen is None and not args.quiet and args.beam > 1:
            print(f"length penalty {translator.lenpen:g} (the checkpoint's default; --lenpen to change)",
                  file=sys.stderr)
        lines, name = read_input(args.input)
        references = None
        if args.reference:
            from nmt.metrics import check_parallel
            references = read_lines(args.reference)
            check_parallel([(name, lines), (args.reference, references)])
        from tqdm import tqdm
        with tqdm(total=sum(bool(x.strip()) for x in lines), file=sys.stderr, unit="sent",
                  disable=args.quiet, desc="translating") as bar:
            results = translator.translate(lines, beam=args.beam, lenpen=args.lenpen, nbest=args.nbest,
                                           batch_size=args.batch_size, max_tokens=args.max_tokens,
                                           max_len_a=args.max_len_a, max_len_b=args.max_len_b, name=name,
                                           warn=warn, progress=bar)
        if args.nbest > 1:
            out_lines = [f"{i} ||| {h.text} ||| {h.score:.4f}" for i, r in enumerate(results) for h in r.hypotheses]
        else:
            out_lines = [r.text for r in results]
        text = "".join(line + "\n" for line in out_lines)
        if args.output:
            with atomic_write(args.output, "w") as f:     # no partial file if anything fails
                f.write(text)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
        if references is not None:
            from nmt.metrics import corpus_bleu
            score, signature = corpus_bleu([r.text for r in results], references, tokenize=args.bleu_tokenize)
            print(f"{score.format()}\nsignature: {signature}", file=sys.stderr)
    except (NmtError, OSError) as e:     # a user error or the disk: one line; anything else is a bug
        print(error_line(e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
