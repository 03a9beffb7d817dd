"""Write a trained checkpoint as a CTranslate2 model directory, to serve it with CTranslate2.

    python tools/export_ctranslate2.py --checkpoint checkpoints/demo-en-de --output checkpoints/demo-en-de-ct2
    python tools/export_ctranslate2.py --checkpoint RUN/decoder/checkpoint_best.pt --output DIR --quantization int8
    python translate.py --engine ctranslate2 --checkpoint checkpoints/demo-en-de-ct2 < test.en

Any checkpoint translates: the BERT system (a stage-1 checkpoint reads its BERT from the file it
records, or ``--bert``) and the from-scratch baselines. The directory holds CTranslate2's files
(model.bin, the source and target vocabularies, config.json) and nmt_pipelines.json: the
checkpoint's text pipelines, its default length penalty and its length limits, which
``translate.py --engine ctranslate2`` uses for the same pre- and post-processing as nmt's own engine.
The mapping is nmt/decode/ctranslate2_export.py; where the two engines can differ: docs/serving.md.
Needs the optional package: ``pip install -e .[ctranslate2]``. Exit status 2 with ``error: ...``
on bad input (a missing or corrupt checkpoint, an existing --output without --force).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from nmt.decode.ctranslate2_export import QUANTIZATIONS, export_ctranslate2
from nmt.errors import NmtError, error_line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint file, or a run directory (its best model: fine-tuned if there is one)")
    p.add_argument("--output", required=True, help="the CTranslate2 model directory to write")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default="float32",
                   help="the weights' type on disk (CTranslate2's names; default: %(default)s); translate.py "
                        "--compute-type can still convert at load time")
    p.add_argument("--bert", metavar="PATH",
                   help="a stage-1 checkpoint's BERT, when it is no longer where the checkpoint records")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        info = export_ctranslate2(args.checkpoint, args.output, quantization=args.quantization, bert=args.bert,
                                  force=args.force)
    except (NmtError, OSError) as e:
        print(error_line(e), file=sys.stderr)
        return 2
    print(f"exported {info['checkpoint']} ({info['arch']}, {info['quantization']}, length penalty "
          f"{info['lenpen']:g}) -> {args.output}\ntranslate with: python translate.py --engine ctranslate2 "
          f"--checkpoint {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
