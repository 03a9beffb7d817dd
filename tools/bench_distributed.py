#!/usr/bin/env python
"""Data-parallel scaling: training tokens/s with 1 process and with N processes (torchrun, gloo on CPU).

    python tools/bench_distributed.py                          # demo En-De, stage 1, 1 vs 2 processes on CPU
    python tools/bench_distributed.py --procs 1,2,4 --device cuda --steps 50 --max-sentences 128

Each configuration runs in a fresh ``python -m torch.distributed.run --nproc_per_node N`` (N = 1 is
the plain single-process path: WORLD_SIZE=1 initialises nothing distributed). Every process takes
``--max-sentences`` pairs per batch (global batch = N x), runs ``--warmup`` untimed updates, then
``--steps`` timed ones between two barriers; tokens/s counts the real target tokens of all ranks.
Scaling efficiency = tokens/s(N) / (N x tokens/s(1)): 1.0 is perfect weak scaling. On CPU each
process gets ``--threads`` torch threads, so N processes need N x threads free cores to scale.
Nothing is written to disk (no checkpoints); the model is the real MiniLM + a ``--decoder-layers`` decoder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from nmt.files import REPO, run_dir


def worker(args) -> None:
    """One rank: set up the trainer, time ``steps`` updates after ``warmup``, rank 0 prints a JSON line."""
    import torch

    from nmt.data.binarized import collate
    from nmt.train.config import TrainConfig
    from nmt.train.distributed import exit_worker, init_from_env
    from nmt.train.trainer import setup
    torch.set_num_threads(args.threads)
    dist = init_from_env(args.device)
    cfg = dataclasses.replace(TrainConfig(), data=args.data, stage=args.stage, run_dir=str(args.run_dir),
                              decoder_layers=args.decoder_layers, max_sentences=args.max_sentences,
                              encoder_cache=args.encoder_cache, device=args.device, progress=False,
                              threads=args.threads, warmup_steps=100)
    trainer = setup(cfg, print_fn=lambda *_: None, dist=dist)
    if cfg.stage == "decoder":
        trainer.maybe_build_cache()
    batches = trainer.epoch_batches(0)
    needed = args.warmup + args.steps
    if len(batches) < needed:
        raise SystemExit(f"error: only {len(batches)} batches per rank; lower --steps/--warmup or --max-sentences")
    tokens = 0
    t0 = 0.0
    for i, idx in enumerate(batches[:needed]):
        if i == args.warmup:
            if dist is not None:
                dist.barrier()
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        batch = collate(trainer.train_data, idx, trainer.src_pad_id).to(trainer.device)
        trainer.train_step([batch])
        trainer.step += 1
        if i >= args.warmup:
            tokens += batch.num_tokens
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    if dist is not None:
        dist.barrier()
    seconds = time.perf_counter() - t0
    world = 1 if dist is None else dist.world_size
    if dist is not None:
        tokens, seconds = dist.all_reduce_sum([tokens, seconds])
        seconds /= world
        dist.destroy()
    if dist is None or dist.master_process:
        print("RESULT " + json.dumps({"procs": world, "tokens": int(tokens), "seconds": seconds,
                                      "tokens_per_s": tokens / seconds, "ms_per_update": 1000 * seconds / args.steps}))
    if dist is not None:
        exit_worker(0)        # as train.py does under torchrun (nmt/train/distributed.py)


def launch(args, procs: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(procs),
           "--master_addr", "127.0.0.1", "--master_port", str(port), __file__, "--worker",
           *[f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("worker", "procs")]]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"error: the {procs}-process run failed (status {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> int:
    from nmt.train.config import demo_data_dir
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(demo_data_dir("en-de")), help="prepared data (default: the En-De demo)")
    p.add_argument("--procs", default="1,2", help="process counts to compare, the first is the baseline")
    p.add_argument("--stage", default="decoder", help="decoder (stage 1) | direct (end to end, the cost of stage 2)")
    p.add_argument("--encoder-cache", default="off", help="stage decoder: off (encoder runs each step) | memory")
    p.add_argument("--max-sentences", type=int, default=32, help="sentences per batch per process")
    p.add_argument("--decoder-layers", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="timed updates")
    p.add_argument("--warmup", type=int, default=3, help="untimed updates first")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--device", default="cpu", help="cpu (gloo) | cuda (nccl, one GPU per process)")
    p.add_argument("--run-dir", default=str(run_dir("bench-distributed")), help="(nothing is written)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    if not Path(args.data, "meta.json").is_file():
        print(f"error: {args.data}: no prepared data; run train.py once (prepares the demo) or pass --data",
              file=sys.stderr)
        return 2
    procs = [int(x) for x in args.procs.split(",")]
    print(f"{args.stage}, encoder cache {args.encoder_cache}, {args.max_sentences} sentences per process, "
          f"{args.steps} timed updates, {args.threads} thread(s) per process, device {args.device}, cores "
          f"{os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    base = None
    for n in procs:
        r = launch(args, n)
        base = base or r
        eff = r["tokens_per_s"] / (n / base["procs"] * base["tokens_per_s"])
        print(f"{n} process(es): {r['tokens_per_s']:8.0f} tokens/s, {r['ms_per_update']:7.1f} ms/update, "
              f"scaling efficiency {eff:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
