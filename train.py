#!/usr/bin/env python
"""Train the paper's system (two stages) or a baseline.

    python train.py                                  # demo En->De, stage 1 (frozen BERT, new decoder)
    python train.py --stage finetune                 # demo stage 2 from the stage-1 best checkpoint
    python train.py --pair en-vi                     # the En->Vi demo
    python train.py --data checkpoints/data/iwslt15-en-vi --stage decoder     # prepared data
    python train.py --arch transformer-base --data DIR   # a baseline (stage "scratch")
    python train.py --resume                         # continue checkpoint_last.pt of that stage
    python train.py --overwrite                      # start that stage over (old files: STAGE.previous-N/)
    python train.py --quick                          # every step of stage 1 on a demo slice, ~2 minutes

Run directory (default ``checkpoints/demo-<pair>`` or ``checkpoints/<data dir name>``): one
subdirectory per stage with ``checkpoint_best.pt``, ``checkpoint_last.pt`` and ``metrics.jsonl``.
translate.py reads a run directory and picks finetune/, else decoder/ (nmt.weights.checkpoint.best_checkpoint_path).
Ctrl-C, SIGTERM (kill, a scheduler's stop) and SIGHUP finish the update, save checkpoint_last.pt and exit
with 128 + the signal (130, 143, 129; docs/faults.md). Bad input: ``error: ...`` and status 2.

Data-parallel on several processes (GPUs, or CPU with gloo; see README "Distributed training"):

    torchrun --nproc_per_node=4 train.py --data DIR        # 4 GPUs, 4 x --max-sentences per update
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Sequence

from nmt.errors import NmtError, error_line
from nmt.train.config import (
    QUICK_BPE_MERGES,
    QUICK_PAIRS,
    QUICK_PRESET,
    build_parser,
    compose_config,
    demo_bpe_merges,
    given_options,
)


def quick_options(given: dict) -> dict:
    """--quick: the demo slice prepared (checkpoints/data/quick-PAIR) and the quick preset under the
    given flags, writing checkpoints/quick-PAIR. Stage 1 only: the point is to see each step run. The
    run is disposable: it starts over each time (--overwrite, the previous one set aside) unless --resume."""
    from nmt.data.prepare import prepare_demo_slice
    from nmt.files import DEMO_PAIRS, data_dir, run_dir
    pair = given.get("pair", "en-de")
    if pair not in DEMO_PAIRS or "data" in given or given.get("stage", "decoder") != "decoder" \
            or given.get("arch", "bert") != "bert":
        raise NmtError(f"--quick runs stage 1 of a demo pair ({', '.join(DEMO_PAIRS)}) on a slice of its corpus; "
                       f"drop --data, --stage and --arch (got: "
                       f"{', '.join(k for k in ('data', 'stage', 'arch') if k in given) or 'pair ' + pair})")
    directory = data_dir(f"quick-{pair}")
    prepare_demo_slice(directory, pair, QUICK_PAIRS, bert=given.get("bert"), bpe_merges=QUICK_BPE_MERGES)
    run = given.get("run_dir") or str(run_dir(f"quick-{pair}"))
    if not given.get("resume"):
        print(f"--quick: {run} is a disposable run: it starts over (as with --overwrite: a previous quick run's "
              f"files are kept in {run}/decoder.previous-N/)")
    return {**QUICK_PRESET, "overwrite": not given.get("resume"), **given, "pair": pair, "data": str(directory),
            "run_dir": run}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.add_argument("--quick", action="store_true",
                        help="every step of stage 1 (preparation, training, the dev-set choice of the length "
                             f"penalty) on the first {QUICK_PAIRS['train']:,} pairs of the demo corpus in about two "
                             "minutes, into checkpoints/quick-PAIR: to see the pipeline run, not a useful model")
    args = parser.parse_args(argv)
    given = given_options(args)
    given.pop("quick")
    demo = given.get("data") is None and not args.quick
    try:
        given = quick_options(given) if args.quick else given
    except (NmtError, OSError) as e:
        print(error_line(e), file=sys.stderr)
        return 2
    cfg, preset = compose_config(given, demo=True if args.quick else None)
    from nmt.train.distributed import launched_by_torchrun
    where = ""                     # "rank R: " in front of errors under torchrun (any rank may fail)
    if demo and os.environ.get("RANK", "0") == "0":
        overridden = [k for k in preset if k in given]
        listing = ", ".join(f"{k}={v}" for k, v in preset.items() if k not in overridden)
        print(f"no --data: training on the embedded demo corpus ({cfg.pair}); demo preset: {listing}, "
              f"BPE merges {demo_bpe_merges(cfg.arch)}"
              + (f" (overridden by flags: {', '.join(overridden)})" if overridden else ""))
    dist = None
    from nmt.errors import raise_on_stop_signals, restore_signals, signal_name
    from nmt.train.run_state import stop_status
    stop_handlers = raise_on_stop_signals()      # SIGTERM, SIGHUP as Ctrl-C; the training loop saves first
    lock = contextlib.ExitStack()   # the stage's lock, held by its one writer (rank 0) until the end
    try:
        from nmt.train.assemble import continue_config, stage_lock
        if os.environ.get("RANK", "0") == "0":
            lock.enter_context(stage_lock(cfg))
        cfg = continue_config(cfg, given, print if os.environ.get("RANK", "0") == "0" else lambda *_: None)
        if launched_by_torchrun():
            from nmt.train.distributed import init_from_env
            where = f"rank {os.environ.get('RANK', '?')}: "
            dist = init_from_env(cfg.device, cfg.dist_timeout_minutes)
        from nmt.train.trainer import setup
        trainer = setup(cfg, dist=dist)
        why = trainer.fit()
    except (NmtError, OSError) as e:     # a user error or the disk: one line; anything else is a bug
        print(error_line(e).replace("error: ", f"error: {where}", 1), file=sys.stderr)
        return 2
    except RuntimeError as e:            # torch.distributed: a rank silent past the timeout, or gone
        if dist is None or (failure := dist.failure(e)) is None:
            raise                        # anything else is a bug
        print(error_line(failure).replace("error: ", f"error: {where}", 1), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:       # a stop signal outside the training loop, or a second Ctrl-C in it
        print(f"{where}interrupted by {signal_name(stop_status(e) - 128)}: stopped at once; the last complete "
              f"checkpoint_last.pt (if any) is where --resume continues", file=sys.stderr)
        return stop_status(e)
    finally:
        restore_signals(stop_handlers)
        lock.close()
        if dist is not None:
            dist.destroy()
    if args.quick and why != "interrupted":
        print(f"quick run done: {cfg.run_dir} holds a model trained on {QUICK_PAIRS['train']:,} sentence pairs for "
              f"{cfg.max_epochs} epochs: it shows each step of the pipeline, it does not translate well (README "
              f"command 1 trains the demo model). Try: echo \"Select the cells.\" | python translate.py "
              f"--checkpoint {cfg.run_dir}")
    return 128 + trainer.stop_signal if why == "interrupted" else 0


if __name__ == "__main__":
    status = main()
    from nmt.train.distributed import exit_worker, launched_by_torchrun
    if launched_by_torchrun():
        exit_worker(status)      # skips a shutdown that can abort under gloo (nmt/train/distributed.py)
    sys.exit(status)
