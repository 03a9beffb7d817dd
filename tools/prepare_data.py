"""Prepare a parallel corpus for training: validate, tokenize, learn BPE, binarize.

The command line over nmt/data/prepare.py (the format it writes: nmt/data/binarized.py)::

    python tools/prepare_data.py --train-prefix ../shared/iwslt15-en-vi/tst2012 \\
        --valid-prefix ../shared/iwslt15-en-vi/tst2013 --src en --tgt vi \\
        --target-mode tokenized --bpe-merges 16000 --out checkpoints/data/iwslt15-en-vi

Training files are PREFIX.SRC and PREFIX.TGT, plain or gzip. Source: BERT WordPiece with the
vocabulary of ``--bert``, or with ``--source-bpe`` its own BPE (the Transformer baselines); target:
BPE learned on the training target. Empty pairs and training pairs longer than ``--max-len``
subword tokens are dropped and counted in the summary table printed at the end, with the BERT-fit
report (the source's [UNK] rate, pieces per word and lines over the encoder's positions; a warning
and its fix above the thresholds in nmt/data/prepare.py). ``--pipelines-from MODEL`` encodes new
data with a trained model's own pipelines (its WordPiece or BPE source and its target BPE and
vocabulary) instead of learning new ones, so that model can be trained further on it
(``train.py --stage finetune --init MODEL --reset-optimizer``). Exit status 2 with ``error: ...``
on bad input.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from nmt.data.prepare import DEFAULT_BPE_MERGES, DEFAULT_MAX_LEN, prepare
from nmt.errors import NmtError, error_line
from nmt.text.pipeline import MODES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-prefix", required=True, help="training files are PREFIX.SRC and PREFIX.TGT (.gz ok)")
    p.add_argument("--valid-prefix", help="development set (split 'valid')")
    p.add_argument("--test-prefix", action="append", default=[],
                   help="test set; repeatable (splits 'test', 'test1', ...)")
    p.add_argument("--src", required=True, help="source language suffix, e.g. en")
    p.add_argument("--tgt", required=True, help="target language suffix, e.g. vi")
    p.add_argument("--target-mode", choices=MODES,
                   help="'tokenized': Stanford pre-tokenized text, kept as is; 'raw': untokenized text "
                        "(required, except with --pipelines-from: the model's)")
    p.add_argument("--bert", default="default",
                   help="BERT model (native .pt, TF or HF dir) or its vocab.txt; 'default': installed MiniLM")
    casing = p.add_mutually_exclusive_group()
    casing.add_argument("--uncased", dest="lowercase", action="store_const", const=True,
                        help="lower-case the source whatever the BERT says (default: as the BERT says: its "
                             "tokenizer_config.json, Google's directory name uncased_L-.../cased_L-..., or what "
                             "its converted .pt records)")
    casing.add_argument("--cased", dest="lowercase", action="store_const", const=False,
                        help="keep the source's case whatever the BERT says")
    p.add_argument("--bpe-merges", type=int, default=DEFAULT_BPE_MERGES, help="target BPE merges (default 16000)")
    p.add_argument("--source-bpe", action="store_true", help="Transformer baselines: BPE source instead of BERT")
    p.add_argument("--source-bpe-merges", type=int, help="source BPE merges (default: --bpe-merges)")
    p.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN,
                   help="drop training pairs with more subword tokens on a side (default 250)")
    p.add_argument("--min-frequency", type=int, default=2, help="BPE: least frequency of a merged pair")
    p.add_argument("--pipelines-from", metavar="MODEL",
                   help="a trained model (checkpoint file or run directory: its best model): encode the data with "
                        "its source and target pipelines instead of learning BPE (continuing it on new data); "
                        "--bert, --cased/--uncased, --source-bpe and the BPE options do not apply")
    p.add_argument("--out", required=True, help="output data directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pipelines_from is None and args.target_mode is None:
        parser.error("the following arguments are required: --target-mode")
    if args.pipelines_from is not None:
        replaced = (("--bert", args.bert != "default"), ("--cased/--uncased", args.lowercase is not None),
                    ("--source-bpe", args.source_bpe), ("--bpe-merges", args.bpe_merges != DEFAULT_BPE_MERGES),
                    ("--source-bpe-merges", args.source_bpe_merges is not None))
        clash = [name for name, used in replaced if used]
        if clash:
            print(f"error: --pipelines-from {args.pipelines_from} takes the source and target pipelines from the "
                  f"model; drop {', '.join(clash)}", file=sys.stderr)
            return 2
    try:
        prepare(args.out, train_prefix=args.train_prefix, valid_prefix=args.valid_prefix,
                test_prefixes=args.test_prefix, src=args.src, tgt=args.tgt, target_mode=args.target_mode,
                bert=args.bert, lowercase=args.lowercase, bpe_merges=args.bpe_merges,
                source_bpe=args.source_bpe, source_bpe_merges=args.source_bpe_merges,
                max_len=args.max_len, min_frequency=args.min_frequency, pipelines_from=args.pipelines_from)
    except (NmtError, OSError) as e:
        print(error_line(e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
