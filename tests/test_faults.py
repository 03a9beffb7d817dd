"""Nothing lost: a tiny run is killed (SIGKILL: no clean-up) at each moment a checkpoint or the
metrics log is written, and at random moments; ``--resume`` then always ends with the run's best
checkpoint present and loadable, holding the run's best dev loss, metrics.jsonl complete and no
temporary file left. And a full disk is one ``error:`` line, with the previous checkpoint intact.

The moments are named by nmt.files.fault_point (the environment variable NMT_FAULT_AT); every
run here is a real ``python train.py`` process.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nmt.weights.checkpoint import load_checkpoint
from tests.conftest import mount_tmpfs
from tests.test_trainer import work  # noqa: F401  (the module-scoped fixture)

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3


@pytest.fixture(scope="module")
def tiny(work, tmp_path_factory) -> dict:  # noqa: F811
    """The trainer tests' data (40 short real pairs, 12 dev) and tiny random BERT, and one
    uninterrupted run of them."""
    base = tmp_path_factory.mktemp("faults")
    paths = {"base": base, "bert": work["bert"], "data": work["data"]}
    reference = base / "reference"
    t0 = time.time()
    assert train(paths, reference).returncode == 0
    paths["seconds"] = time.time() - t0
    paths["reference"] = outcome(reference)
    assert [r["epoch"] for r in paths["reference"]["epochs"]] == list(range(1, EPOCHS + 1))
    assert sum(r["improved"] for r in paths["reference"]["epochs"]) >= 2     # the best file changes
    return paths


def train(paths: dict, run: Path, *extra: str, fault: str | None = None, kill_after: float | None = None):
    """python train.py on the tiny data; ``fault``: the moment it kills itself; ``kill_after``: seconds
    after which this test kills it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("NMT_FAULT_AT", None)
    if fault:
        env["NMT_FAULT_AT"] = fault
    cmd = [sys.executable, str(REPO / "train.py"), "--data", str(paths["data"]), "--bert", str(paths["bert"]),
           "--run-dir", str(run), "--stage", "decoder", "--max-epochs", str(EPOCHS), "--patience", "5",
           "--decoder-layers", "1", "--max-sentences", "8", "--batching", "sentences", "--lr", "2e-3",
           "--warmup-steps", "4", "--dropout", "0.1", "--no-progress", "--device", "cpu", "--threads", "1",
           "--encoder-cache", "disk", "--epoch-checkpoints", "2", "--dev-bleu", "--lenpen-grid", "1.0,1.5",
           *extra]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def outcome(run: Path) -> dict:
    stage = run / "decoder"
    records = [json.loads(line) for line in (stage / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    best = load_checkpoint(stage / "checkpoint_best.pt")
    return {"epochs": [r for r in records if r["event"] == "epoch"], "records": records,
            "best": {k: best[k] for k in ("step", "epoch", "best_dev_loss", "decoding")},
            "kept": load_checkpoint(stage / "checkpoint_epoch2.pt")["step"],
            "files": sorted(p.name for p in stage.iterdir())}


def check_recovered(tiny: dict, run: Path, why: str) -> None:
    """--resume (or a fresh start when the kill came before the first checkpoint) ends like the
    uninterrupted run."""
    if (run / "decoder" / "checkpoint_last.pt").is_file():
        result = train(tiny, run, "--resume")
    else:
        result = train(tiny, run)
    assert result.returncode == 0, f"{why}: {result.stderr[-2000:]}"
    got, want = outcome(run), tiny["reference"]
    assert got["best"]["step"] == want["best"]["step"], why
    assert got["best"]["best_dev_loss"] == pytest.approx(want["best"]["best_dev_loss"], abs=1e-6), why
    assert got["best"]["decoding"]["lenpen"] == want["best"]["decoding"]["lenpen"], why
    assert got["kept"] == want["kept"], why
    assert [r["epoch"] for r in got["epochs"]] == list(range(1, EPOCHS + 1)), why          # each epoch once
    for a, b in zip(got["epochs"], want["epochs"]):
        assert a["dev"]["loss"] == pytest.approx(b["dev"]["loss"], abs=1e-6), why
        assert a["train"]["tokens"] == b["train"]["tokens"], why                           # the whole epoch
    assert sum(r["event"] == "lenpen" for r in got["records"]) >= 1, why
    steps = [r["step"] for r in got["records"] if r["event"] == "train"]
    assert len(steps) == len(set(steps)), why
    leftovers = [f for f in got["files"] if ".tmp" in f or f.startswith("encoder_cache")]
    assert not leftovers, f"{why}: {leftovers}"


MOMENTS = ["checkpoint_last-saved@1", "best-copied@1", "metrics-written@1", "rename:checkpoint_best.pt",
           "checkpoint_last-saved@2", "best-copied@2", "metrics-written@2", "checkpoint_last-saved@3",
           "rename:checkpoint_epoch2.pt", "lenpen-stored"]


@pytest.mark.parametrize("moment", ["checkpoint_last-saved@2", "best-copied@2", "lenpen-stored"])
def test_kill_at_a_checkpoint_write_is_repaired_by_resume(tiny, tmp_path, moment):
    run = tmp_path / "run"
    killed = train(tiny, run, fault=moment)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    check_recovered(tiny, run, moment)


@pytest.mark.slow
@pytest.mark.parametrize("moment", MOMENTS)
def test_kill_at_every_checkpoint_write(tiny, tmp_path, moment):
    run = tmp_path / "run"
    killed = train(tiny, run, fault=moment)
    assert killed.returncode == -signal.SIGKILL, f"{moment} never happened: {killed.stderr[-2000:]}"
    check_recovered(tiny, run, moment)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_kill_at_random_moments(tiny, tmp_path, seed):
    """Killed at a random time, then killed again while resuming, then resumed to the end."""
    rng = random.Random(seed)
    run = tmp_path / "run"
    for _ in range(2):
        train(tiny, run, *(["--resume"] if (run / "decoder" / "checkpoint_last.pt").is_file() else []),
              kill_after=rng.uniform(1.0, tiny["seconds"]))
    check_recovered(tiny, run, f"random kills, seed {seed}")


def test_stale_temporaries_of_a_killed_run_are_removed(tiny, tmp_path):
    run = tmp_path / "run"
    killed = train(tiny, run, fault="rename:checkpoint_best.pt")      # dies with the temp file complete
    stage = run / "decoder"
    assert killed.returncode == -signal.SIGKILL
    assert any(".checkpoint_best.pt.tmp." in p.name for p in stage.iterdir())
    assert any(p.name.startswith("encoder_cache") for p in stage.iterdir())
    resumed = train(tiny, run, "--resume")
    assert resumed.returncode == 0 and "left behind by an interrupted run" in resumed.stdout
    assert not [p.name for p in stage.iterdir() if ".tmp" in p.name or p.name.startswith("encoder_cache")]


def test_full_disk_is_one_error_line_and_keeps_the_previous_checkpoint(tiny, tmp_path):
    """A real full disk: a tmpfs with room for epoch 1's checkpoint_last.pt and its best copy, not
    for epoch 2's. Where the test cannot mount one, test_full_disk_injected covers the same path."""
    size = (tiny["base"] / "reference" / "decoder" / "checkpoint_last.pt").stat().st_size
    run = tmp_path / "disk"
    if not mount_tmpfs(run, str(int(2.5 * size))):
        pytest.skip("cannot mount a tmpfs here (not root?); test_full_disk_injected covers the error path")
    try:
        result = train(tiny, run)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        last_line = result.stderr.strip().splitlines()[-1]
        assert last_line.startswith("error: ") and "could not be written" in last_line and "--resume" in last_line
        stage = run / "decoder"
        assert load_checkpoint(stage / "checkpoint_last.pt")["epoch"] == 1          # the previous one, intact
        assert load_checkpoint(stage / "checkpoint_best.pt")["epoch"] == 1
        assert not [p.name for p in stage.iterdir() if ".tmp" in p.name]
    finally:
        subprocess.run(["umount", str(run)], capture_output=True)


def test_full_disk_injected(tmp_path, monkeypatch):
    import nmt.weights.checkpoint as checkpoint
    path = tmp_path / "checkpoint_last.pt"
    checkpoint.save_checkpoint(path, {"format": checkpoint.FORMAT, "step": 1})
    before = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(checkpoint.CheckpointError, match="could not be written.*MiB free on its disk"):
        checkpoint.save_checkpoint(path, {"format": checkpoint.FORMAT, "step": 2})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
