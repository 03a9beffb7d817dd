"""Average the parameters of several checkpoints of one run into one (fairseq's form).

    python tools/average_checkpoints.py --inputs RUN/decoder/checkpoint_epoch4.pt RUN/decoder/checkpoint_epoch5.pt \\
        RUN/decoder/checkpoint_epoch6.pt --output RUN/decoder/checkpoint_avg3.pt
    python tools/average_checkpoints.py --num-epoch-checkpoints 3 RUN/decoder --output RUN/decoder/checkpoint_avg3.pt

The epoch checkpoints come from ``train.py --keep-last-epochs N``. The output translates like any
checkpoint (``translate.py --checkpoint RUN/decoder/checkpoint_avg3.pt``); spec, vocabularies,
config and the chosen length penalty are the newest input's (nmt.weights.checkpoint.average_checkpoints);
stage-1 inputs average without their (frozen, shared) BERT and the output refers to it as they do.
The output's weights are float32, also from float16 or bfloat16 inputs (``train.py --snapshot-dtype``).
Exit status 2 with ``error: ...`` on bad input (a missing or corrupt file, another run's checkpoint).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from nmt.errors import CheckpointError, NmtError, error_line
from nmt.weights.checkpoint import (
    average_checkpoints,
    epoch_checkpoints,
    save_checkpoint,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--inputs", nargs="+", metavar="CHECKPOINT", help="the checkpoints to average (2 or more)")
    which.add_argument("--num-epoch-checkpoints", nargs=2, metavar=("K", "STAGE_DIR"),
                       help="the last K checkpoint_epochN.pt of a stage directory, e.g. 3 RUN/decoder")
    p.add_argument("--output", required=True, help="the averaged checkpoint to write (atomically)")
    p.add_argument("--bert", metavar="PATH", help="stage-1 inputs' BERT, if not at the path they record (needed "
                                                  "only when their BERT weights must be read back)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.inputs:
            inputs = [Path(x) for x in args.inputs]
        else:
            k, stage_dir = args.num_epoch_checkpoints
            if not k.isdigit() or int(k) < 2:
                raise CheckpointError(f"--num-epoch-checkpoints {k}: expected a whole number >= 2")
            inputs = epoch_checkpoints(stage_dir, int(k))
        output = Path(args.output)
        if output.resolve() in {p.resolve() for p in inputs}:
            raise CheckpointError(f"{output}: is one of the inputs; write the average to another file")
        state = average_checkpoints(inputs, bert=args.bert)
        save_checkpoint(output, state)
    except (NmtError, OSError) as e:
        print(error_line(e), file=sys.stderr)
        return 2
    print(f"averaged {len(inputs)} checkpoints ({', '.join(p.name for p in inputs)}) -> {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
