"""Worker for tests/test_distributed.py, run by torchrun: ``distributed_worker.py JOBS.json``.

JOBS.json: {"jobs": [...], "result": path}. Each job is one of
  {"kind": "train", "cfg": {TrainConfig fields}}                      setup + fit, rank 0 records the state
  {"kind": "rewrap", "cfg": {...}, "rewrap": bool}                     stage decoder -> finetune in one trainer
  {"kind": "cli", "argv": [...], "fail_rank": R, "fail_step": K}        train.main(argv); rank R raises at update K
Ranks other than 0 refuse to open any file for writing (the test that only rank 0 writes).
Rank 0 writes the results (one dict per job) to "result" as JSON.
"""
from __future__ import annotations

import builtins
import dataclasses
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def forbid_writes(rank: int) -> None:
    """Make any open() for writing on this rank an error that names the file."""
    real_open = builtins.open

    def guarded(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            raise AssertionError(f"rank {rank} opened {file} for writing (mode {mode!r}); only rank 0 may write")
        return real_open(file, mode, *args, **kwargs)
    builtins.open = guarded
    import io
    io.open = guarded


def run_train(job, dist, quiet) -> dict:
    from nmt.train.config import TrainConfig
    from nmt.train.trainer import setup
    cfg = dataclasses.replace(TrainConfig(), **job["cfg"])
    trainer = setup(cfg, print_fn=quiet, dist=dist)
    why = trainer.fit()
    return {"why": why, "step": trainer.step, "epoch": trainer.epoch, "batch_in_epoch": trainer.batch_in_epoch,
            "batches_per_epoch": trainer.batches_per_epoch, "best_dev_loss": trainer.best_dev_loss}


def run_rewrap(job, dist, quiet) -> dict:
    """After a stage change inside one process, do the ranks' encoders stay identical (gradients synced)?"""
    import torch
    import torch.distributed as tdist

    from nmt.data.binarized import collate
    from nmt.train.config import TrainConfig
    from nmt.train.trainer import setup
    cfg = dataclasses.replace(TrainConfig(), **job["cfg"])
    trainer = setup(cfg, print_fn=quiet, dist=dist)
    if job["rewrap"]:
        trainer.set_stage("finetune")
    else:                                   # the mistake the re-wrap prevents: unfreeze under the old wrapper
        trainer.model.set_stage("finetune")
        trainer.optimizer = torch.optim.Adam(trainer.model.parameters(), lr=0.0)
    batch = collate(trainer.train_data, trainer.epoch_batches(0)[0], trainer.src_pad_id)   # a different batch per rank
    before = trainer.model.encoder.embeddings.word.weight.detach().clone()
    trainer.train_step([batch])
    after = trainer.model.encoder.embeddings.word.weight.detach()
    mine = torch.tensor([float(after.double().sum()), float((after - before).abs().max())], dtype=torch.float64)
    everyone = [torch.zeros_like(mine) for _ in range(dist.world_size)]
    tdist.all_gather(everyone, mine)
    return {"encoder_sums": [float(t[0]) for t in everyone], "encoder_moved": [float(t[1]) for t in everyone]}


def run_cli(job, dist_unused, quiet) -> dict:
    """train.main on every rank; rank fail_rank raises a TrainingError at update fail_step."""
    import os

    import train as train_cli
    from nmt.errors import TrainingError
    from nmt.train.trainer import Trainer
    rank = int(os.environ["RANK"])
    if job.get("fail_rank") == rank:
        step = Trainer.train_step

        def failing(self, batch):
            if self.step + 1 == job["fail_step"]:
                raise TrainingError(f"injected failure on rank {rank} at update {self.step + 1}")
            return step(self, batch)
        Trainer.train_step = failing
    from nmt.train.distributed import exit_worker
    exit_worker(train_cli.main(job["argv"]))     # as train.py's __main__ does under torchrun


def main() -> None:
    sys.path.insert(0, str(REPO))
    import torch
    torch.set_num_threads(1)
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    if spec["jobs"][0]["kind"] == "cli":         # train.py does its own process-group set-up
        run_cli(spec["jobs"][0], None, None)
    from nmt.train.distributed import exit_worker, init_from_env
    dist = init_from_env("cpu")
    assert dist is not None and dist.backend == "gloo", "run me with torchrun --nproc_per_node 2"
    results = []
    quiet = lambda *_: None  # noqa: E731
    if dist.rank != 0:
        forbid_writes(dist.rank)
    try:
        for job in spec["jobs"]:
            results.append({"train": run_train, "rewrap": run_rewrap}[job["kind"]](job, dist, quiet))
    finally:
        dist.destroy()
    if dist.rank == 0:
        Path(spec["result"]).write_text(json.dumps(results), encoding="utf-8")
    exit_worker(0)        # as train.py does: a normal interpreter shutdown can abort under gloo


if __name__ == "__main__":
    main()
