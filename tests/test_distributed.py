"""Data-parallel training (torchrun, gloo on CPU): 2 processes == 1 process over the same global
batches, only rank 0 writes, re-wrapping on a stage change, resume across world sizes, a failing rank.

Every multi-process test launches ``python -m torch.distributed.run --nproc_per_node 2`` on
127.0.0.1 with a timeout; the workers (tests/distributed_worker.py) use one thread each.
"""
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_trainer import make_cfg, quiet, work  # noqa: F401 -- fixtures shared with the trainer tests

from nmt.data.binarized import ParallelData, make_batches
from nmt.train.distributed import (
    init_from_env,
    launched_by_torchrun,
    shard_batches,
    shard_pairs,
)
from nmt.train.trainer import setup
from nmt.weights.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")
TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tmp_path: Path, jobs: list, timeout: float = TIMEOUT) -> tuple[subprocess.CompletedProcess, list]:
    """Run the worker on 2 local processes; (the finished process, rank 0's results)."""
    spec, result = tmp_path / "jobs.json", tmp_path / "result.json"
    spec.write_text(json.dumps({"jobs": jobs, "result": str(result)}), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(WORKER), str(spec)]
    with subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as popen:
        try:
            out, err = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)       # torchrun and its workers: no orphans left behind
            out, err = popen.communicate()
            pytest.fail(f"torchrun did not finish in {timeout} s (a hang?)\n{out[-2000:]}\n{err[-3000:]}")
    proc = subprocess.CompletedProcess(cmd, popen.returncode, out, err)
    results = json.loads(result.read_text(encoding="utf-8")) if result.exists() else []
    return proc, results


@pytest.fixture(scope="module")
def exact_bert(work) -> str:
    """The trainer tests' tiny random BERT with its dropouts at 0 (attention dropout is not a CLI flag)."""
    from nmt.weights.pretrained import NativeBert, load_bert, save_native
    encoder, tokenizer = load_bert(work["bert"])
    config = dataclasses.replace(encoder.config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    path = work["base"] / "tiny_bert_no_dropout.pt"
    save_native(NativeBert(config, encoder.state_dict(), tokenizer.vocab_tokens, True, "tiny, no dropout"), path)
    return str(path)


def config_dict(work, run_dir, **kw) -> dict:
    return make_cfg(work, run_dir, **kw).to_dict()


# Exact comparisons need: no dropout (ranks draw their own masks) and an Adam epsilon that is not
# tiny next to gradients that are zero in exact arithmetic (e.g. attention key biases: softmax
# ignores them). Adam divides by sqrt(v), so with eps 1e-8 a 1e-10 round-off "gradient" moves a
# weight by a full LR step, in a direction decided by the round-off. That is not a distributed
# effect: two 1-process runs differing only in batch padding do it too.
EXACT = dict(dropout=0.0, encoder_dropout=0.0, adam_eps=1e-4, cache_dtype="float32")


def union_batches(trainer, world_size: int = 2):
    """The 1-process reference: each update takes the union of the ranks' batches of that step."""
    def batches(epoch: int, world_size_unused=None):
        per_rank = [shard_batches(trainer.train_data.src_lengths, trainer.train_data.tgt_lengths,
                                  max_sentences=trainer.cfg.max_sentences, max_tokens=trainer.cfg.max_tokens,
                                  seed=trainer.cfg.seed, epoch=epoch, num_shards=world_size, shard=r)
                    for r in range(world_size)]
        return [np.concatenate(step) for step in zip(*per_rank)]
    trainer.epoch_batches = batches
    return trainer


def assert_same_parameters(expected: dict, path: Path, atol: float = 1e-5) -> None:
    got = load_checkpoint(path)["model"]
    assert set(got) == set(expected) and not any(k.startswith("module.") for k in got)
    worst = max((got[k].float() - expected[k].float()).abs().max().item() for k in expected)
    assert worst < atol, f"largest parameter difference {worst:.2e}"


# ---------------------------------------------------------------------------------------------- no process group

def test_shards_are_disjoint_and_equal_in_count(work):
    data = ParallelData(work["data"], "train")
    for world in (2, 3):
        owned = [shard_pairs(len(data), world, r, seed=1) for r in range(world)]
        assert sorted(np.concatenate(owned).tolist()) == list(range(len(data)))
        for epoch in (0, 1):
            batches = [shard_batches(data.src_lengths, data.tgt_lengths, max_sentences=4, seed=1, epoch=epoch,
                                     num_shards=world, shard=r) for r in range(world)]
            assert len({len(b) for b in batches}) == 1                       # same count on every rank
            for r, rank_batches in enumerate(batches):
                assert set(np.concatenate(rank_batches).tolist()) <= set(owned[r].tolist())
    one = shard_batches(data.src_lengths, data.tgt_lengths, max_sentences=4, seed=1, epoch=0)
    assert [b.tolist() for b in one] == [b.tolist() for b in make_batches(data.src_lengths, data.tgt_lengths,
                                                                          max_sentences=4, seed=1, epoch=0)]


def test_single_process_has_no_distributed_context(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launched_by_torchrun() and init_from_env("cpu") is None
    assert init_from_env("cpu", environ={"WORLD_SIZE": "1", "RANK": "0"}) is None
    import torch.distributed as dist
    assert not dist.is_initialized()


def test_bad_torchrun_environment():
    from nmt.errors import DistributedError
    with pytest.raises(DistributedError, match="RANK/LOCAL_RANK are missing"):
        init_from_env("cpu", environ={"WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match=r"RANK=2 is not in \[0, WORLD_SIZE=2\)"):
        init_from_env("cpu", environ={"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(DistributedError, match="each process uses GPU LOCAL_RANK"):
        init_from_env("cuda:1", environ={"WORLD_SIZE": "2", "RANK": "0"})


def test_exit_worker_flushes_and_skips_interpreter_shutdown():
    """The torchrun workers' exit (the gloo shutdown race, docs/distributed.md): buffered output reaches
    the pipes, the status is kept, and no shutdown code runs (an atexit handler stands for it)."""
    script = ("import atexit, sys\n"
              "from nmt.train.distributed import exit_worker\n"
              "atexit.register(lambda: print('shutdown ran', flush=True))\n"
              "print('result line'); sys.stderr.write('error: rank 1: bad input')\n"
              "exit_worker(3)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=REPO, check=False,
                          env={**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},   # buffered, as
                               "PYTHONPATH": str(REPO)})                                          # torchrun's pipes
    assert proc.returncode == 3
    assert proc.stdout == "result line\n" and proc.stderr == "error: rank 1: bad input"


# ---------------------------------------------------------------------------------------------- 2 processes

def test_two_processes_match_one_process_over_the_same_global_batches(work, exact_bert, tmp_path):
    """Stage 1 (cached encoder, sharded per rank) then stage 2, on 2 gloo processes, against one process
    whose every update takes the union of the two ranks' batches: same parameters to 1e-5, same dev
    loss; only rank 0 wrote (rank 1 may not open files for writing); the checkpoint has no "module."."""
    dist_dir, ref_dir = tmp_path / "dist", tmp_path / "ref"
    stage1 = dict(stage="decoder", encoder_cache="memory", max_steps=5, bert=exact_bert, **EXACT)    # 3 updates per epoch: crosses one
    # stage 1's checkpoint holds a reference to its BERT, not its weights: stage 2 names the same BERT
    stage2 = dict(stage="finetune", init=str(dist_dir / "decoder" / "checkpoint_last.pt"), max_steps=4, bert=exact_bert,
                  **EXACT)
    t0 = time.time()
    proc, results = torchrun(tmp_path, [{"kind": "train", "cfg": config_dict(work, dist_dir, **stage1)},
                                        {"kind": "train", "cfg": config_dict(work, dist_dir, **stage2)}])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert results[0]["step"] == 5 and results[0]["batches_per_epoch"] == 3 and results[1]["step"] == 4
    print(f"2-process run: {time.time() - t0:.1f} s")

    files = sorted(p.relative_to(dist_dir).as_posix() for p in dist_dir.rglob("*") if p.is_file())
    assert files == [f"{s}/{f}" for s in ("decoder", "finetune")
                     for f in ("checkpoint_best.pt", "checkpoint_last.pt", "metrics.jsonl")]
    events = [json.loads(x)["event"] for x in (dist_dir / "decoder" / "metrics.jsonl").read_text().splitlines()]
    assert events == ["start", "epoch", "max_steps"]
    ckpt = load_checkpoint(dist_dir / "decoder" / "checkpoint_last.pt")
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 1 and ckpt["batch_in_epoch"] == 2

    for cfg, stage in ((stage1, "decoder"), (stage2, "finetune")):
        ref = union_batches(setup(make_cfg(work, ref_dir, **cfg), print_fn=quiet))
        ref.fit()
        assert ref.step == cfg["max_steps"]
        assert_same_parameters(ref.model.state_dict(), dist_dir / stage / "checkpoint_last.pt")
        assert load_checkpoint(dist_dir / stage / "checkpoint_last.pt")["best_dev_loss"] == \
            pytest.approx(ref.best_dev_loss, abs=1e-5)


def test_update_freq_on_two_processes_matches_one_process(work, exact_bert, tmp_path):
    """--update-freq 2 under DDP (gradients synchronised once per update, with the last batch) gives
    the parameters of one process whose updates take the union batches, two at a time."""
    dist_dir, ref_dir = tmp_path / "dist", tmp_path / "ref"
    cfg = dict(stage="decoder", encoder_cache="memory", max_steps=3, update_freq=2, bert=exact_bert, **EXACT)
    proc, results = torchrun(tmp_path, [{"kind": "train", "cfg": config_dict(work, dist_dir, **cfg)}])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert results[0]["step"] == 3 and results[0]["batches_per_epoch"] == 3      # 2 updates per epoch: crosses one
    ref = union_batches(setup(make_cfg(work, ref_dir, **cfg), print_fn=quiet))
    ref.fit()
    assert ref.step == 3
    assert_same_parameters(ref.model.state_dict(), dist_dir / "decoder" / "checkpoint_last.pt")


def test_rewrapping_after_a_stage_change_syncs_the_encoder(work, exact_bert, tmp_path):
    """DDP syncs only the parameters that required grad when it was built: Trainer.set_stage re-wraps,
    so after decoder -> finetune both ranks' encoders take the same update; without it they drift."""
    cfg = config_dict(work, tmp_path / "run", stage="decoder", bert=exact_bert, **EXACT)
    proc, results = torchrun(tmp_path, [{"kind": "rewrap", "cfg": cfg, "rewrap": True},
                                        {"kind": "rewrap", "cfg": cfg, "rewrap": False}])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    synced, drifted = results
    assert min(synced["encoder_moved"]) > 0 and min(drifted["encoder_moved"]) > 0      # the encoder trains
    assert synced["encoder_sums"][0] == synced["encoder_sums"][1]
    assert drifted["encoder_sums"][0] != drifted["encoder_sums"][1]


def test_resume_with_another_world_size(work, tmp_path, capsys):
    """1 -> 2 processes and 2 -> 1: the run continues at the same fraction of the epoch and step count."""
    one = tmp_path / "one"
    first = setup(make_cfg(work, one, stage="direct", max_steps=2), print_fn=quiet)
    first.fit()                                                  # 5 batches per epoch; stops at 2 of them
    proc, results = torchrun(tmp_path, [{"kind": "train", "cfg": config_dict(work, one, stage="direct", resume=True,
                                                                              max_steps=5)}])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # 2 of 5 batches -> 1 of 3; updates 3, 4 end epoch 1; update 5 is batch 1 of epoch 2
    assert results[0] == {"why": "max_steps", "step": 5, "epoch": 1, "batch_in_epoch": 1, "batches_per_epoch": 3,
                          "best_dev_loss": pytest.approx(results[0]["best_dev_loss"])}
    ckpt = load_checkpoint(one / "direct" / "checkpoint_last.pt")
    assert ckpt["world_size"] == 2 and ckpt["step"] == 5

    back = setup(make_cfg(work, one, stage="direct", resume=True, max_steps=9), print_fn=print)
    assert "resuming with 1 processes a run saved with 2: epoch 2 was 1/3 batches done; continuing at 1/5" \
        in capsys.readouterr().out
    assert back.fit() == "max_steps"                             # 4 more: batches 2..5 of epoch 2
    assert (back.step, back.epoch, back.batch_in_epoch) == (9, 1, 5)


def test_a_failing_rank_brings_the_job_down_with_its_error(work, tmp_path):
    """Rank 1 raises at its 2nd update while rank 0 waits in a collective: torchrun stops the job,
    non-zero status, rank 1's message on stderr, well within the timeout (no hang)."""
    argv = ["--data", str(work["data"]), "--bert", str(work["bert"]), "--run-dir", str(tmp_path / "run"),
            "--stage", "decoder", "--decoder-layers", "1", "--max-sentences", "8", "--encoder-cache", "off",
            "--device", "cpu", "--no-progress", "--max-steps", "50"]
    t0 = time.time()
    proc, _ = torchrun(tmp_path, [{"kind": "cli", "argv": argv, "fail_rank": 1, "fail_step": 2}], timeout=TIMEOUT)
    assert proc.returncode != 0
    assert "error: rank 1: injected failure on rank 1 at update 2" in proc.stderr
    assert time.time() - t0 < TIMEOUT
    assert not (tmp_path / "run" / "decoder" / "checkpoint_last.pt").exists()
