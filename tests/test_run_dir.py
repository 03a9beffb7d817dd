"""A run directory is never replaced silently and has one writer (docs/faults.md): a stage that holds
a run is refused without --resume or --overwrite (which keeps the old files aside); a second writer
of a stage or of a data directory is one error line naming the first one's PID, and the lock goes
when its holder is killed; --resume refuses flags that would change what the checkpoint describes.
The re-run and the lock are tried with real ``python train.py`` processes, as tests/test_faults.py does."""
import dataclasses
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import train as train_cli
from nmt.errors import DataError
from nmt.train.config import MAY_CHANGE, MUST_MATCH, NOT_COMPARED, RESUME_RULE, THIS_COMMAND, TrainConfig, resume_differences
from nmt.weights.checkpoint import load_checkpoint
from tests.test_trainer import work  # noqa: F401  (the module-scoped fixture: tiny real data, tiny BERT)

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def flags(work, run: Path) -> list[str]:  # noqa: F811
    """A tiny stage-1 run on the trainer tests' data (40 pairs, 5 batches an epoch)."""
    return ["--data", str(work["data"]), "--bert", str(work["bert"]), "--run-dir", str(run), "--stage", "decoder",
            "--decoder-layers", "1", "--max-sentences", "8", "--batching", "sentences", "--lr", "2e-3",
            "--warmup-steps", "4", "--dropout", "0.1", "--no-progress", "--device", "cpu", "--threads", "1",
            "--encoder-cache", "memory"]


def start(work, run: Path, *extra: str) -> subprocess.Popen:  # noqa: F811
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("NMT_FAULT_AT", None)
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *flags(work, run), *extra], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def train(work, run: Path, *extra: str) -> subprocess.CompletedProcess:  # noqa: F811
    proc = start(work, run, *extra)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def error_line(result) -> str:
    """The one line a refused command prints: exit 2, no traceback."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_rerun_without_resume_is_refused_and_overwrite_keeps_the_old_best(work, tmp_path, capsys):  # noqa: F811
    """Issue 38: a finished run, then the same command with --max-epochs 1, replaced the best model."""
    run, stage = tmp_path / "run", tmp_path / "run" / "decoder"
    assert run_cli([*flags(work, run), "--max-epochs", "2"], capsys)[0] == 0
    best = load_checkpoint(stage / "checkpoint_best.pt")
    before = {p.name: p.read_bytes() for p in stage.iterdir()}

    line = error_line(train(work, run, "--max-epochs", "1"))                    # the re-run, a real process
    assert line == (f"error: {stage} already holds a run of stage decoder (best dev loss {best['best_dev_loss']:.3f} "
                    f"at epoch {best['epoch']}; 2 epochs trained, update 10): continue it with --resume, or start it "
                    f"over with --overwrite (its files are then kept in {run / 'decoder.previous-1'}/)")
    assert {p.name: p.read_bytes() for p in stage.iterdir()} == before            # nothing touched

    code, out, err = run_cli([*flags(work, run), "--max-epochs", "1", "--overwrite"], capsys)
    assert code == 0, err
    aside = run / "decoder.previous-1"
    assert f"--overwrite: stage decoder starts over; the previous run's files (best dev loss" in out
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == before            # all kept, byte for byte
    assert load_checkpoint(stage / "checkpoint_best.pt")["epoch"] == 1            # the new run's
    assert not (stage / "metrics.previous.jsonl").exists() and not (stage / ".lock").exists()
    assert run_cli([*flags(work, run), "--max-epochs", "1", "--overwrite"], capsys)[0] == 0
    assert (run / "decoder.previous-2" / "checkpoint_best.pt").is_file() and aside.is_dir()   # never deleted


def wait_for(condition, proc: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert proc.poll() is None, f"the first writer ended: {proc.communicate()[1][-2000:]}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_one_writer_per_stage_and_the_lock_goes_with_a_killed_holder(work, tmp_path, capsys,  # noqa: F811
                                                                     monkeypatch):
    """Issue 38: two train.py 5 s apart on one run directory both ran, mixing their logs and checkpoints."""
    import translate as translate_cli
    run, stage = tmp_path / "run", tmp_path / "run" / "decoder"
    first = start(work, run, "--seed", "1", "--max-epochs", "1000", "--patience", "1000")
    try:
        wait_for(lambda: (stage / "checkpoint_best.pt").is_file(), first)        # writing, and past epoch 1
        assert (stage / ".lock").read_text().strip() == str(first.pid)
        line = error_line(train(work, run, "--seed", "2"))                       # a second writer, a real process
        assert line == (f"error: {stage} is being written by another process (PID {first.pid}, holding "
                        f"{stage / '.lock'}): wait for it to end or stop it; two writers would mix their files")
        for extra in (["--resume"], ["--overwrite"]):                          # any writer of the stage
            code, _, err = run_cli([*flags(work, run), *extra], capsys)
            assert code == 2 and f"is being written by another process (PID {first.pid}," in err
        # a reader needs no lock: translate.py reads the run while it is written
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Click OK.\n")))
        assert translate_cli.main(["--checkpoint", str(run), "--quiet", "--beam", "2", "--device", "cpu"]) == 0
        assert capsys.readouterr().out.count("\n") == 1 and first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    code, _, err = run_cli([*flags(work, run), "--resume", "--max-epochs", "1"], capsys)   # the OS released it
    assert code == 0, err
    assert load_checkpoint(stage / "checkpoint_last.pt")["config"]["seed"] == 1


def test_data_preparation_has_one_writer(tmp_path, capsys):
    """A second preparation of one data directory (tools/prepare_data.py, or train.py's demo cache)
    while the first writes: one error line naming its PID; a prepared directory is read without it."""
    from tools.prepare_data import main as prepare_main
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.en").write_text("a cat .\nthe dog .\n", encoding="utf-8")
    (raw / "train.de").write_text("eine Katze .\nder Hund .\n", encoding="utf-8")
    out = tmp_path / "data"
    argv = ["--train-prefix", str(raw / "train"), "--src", "en", "--tgt", "de", "--target-mode", "tokenized",
            "--source-bpe", "--bpe-merges", "10", "--out", str(out)]
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from nmt.files import exclusive_lock\n"
                               "with exclusive_lock(sys.argv[1], 'x'):\n print('held', flush=True); time.sleep(300)",
                               str(tmp_path / ".data.lock")], stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert prepare_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: {out} is being written by another process (PID {holder.pid}, holding "
                       f"{tmp_path / '.data.lock'}): wait for it to end or stop it; two writers would mix their "
                       f"files"]
        assert not out.exists() and not list(tmp_path.glob(".data.tmp-*"))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    assert prepare_main(argv) == 0                          # killed: the lock went with it
    assert not (tmp_path / ".data.lock").exists()
    from nmt.data.prepare import prepare
    from nmt.files import exclusive_lock
    kwargs = dict(train_prefix=raw / "train", src="en", tgt="de", target_mode="tokenized", source_bpe=True,
                  bpe_merges=10, print_fn=lambda *_: None)
    prepare(out, **kwargs)
    with exclusive_lock(tmp_path / ".data.lock", "another preparation"):
        assert prepare(out, reuse=True, **kwargs)["splits"]["train"]["pairs"] == 2      # reused: no lock needed
        with pytest.raises(DataError, match=f"PID {os.getpid()}"):
            prepare(out, **kwargs)                                                    # a new one is refused


def test_parallel_runs_wait_for_one_data_preparation(tmp_path):
    """Runs started together on data not yet prepared (a grid's runs, train.py's demo cache: reuse=True):
    one prepares, the others say whom they wait for, wait, and use its result instead of failing."""
    from nmt.data.prepare import prepare
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.en").write_text("a cat .\nthe dog .\n", encoding="utf-8")
    (raw / "train.de").write_text("eine Katze .\nder Hund .\n", encoding="utf-8")
    out = tmp_path / "data"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from nmt.files import exclusive_lock\n"
                               "with exclusive_lock(sys.argv[1], 'x'):\n print('held', flush=True); sys.stdin.readline()",
                               str(tmp_path / ".data.lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    said = []
    try:
        assert holder.stdout.readline().strip() == "held"
        release = threading.Timer(1.0, lambda: (holder.stdin.write("\n"), holder.stdin.flush()))
        release.start()
        meta = prepare(out, train_prefix=raw / "train", src="en", tgt="de", target_mode="tokenized", source_bpe=True,
                       bpe_merges=10, reuse=True, print_fn=said.append)
        release.join()
        assert holder.wait(timeout=30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate()
    assert said[0] == f"{out} is being prepared by another process (PID {holder.pid}): waiting for it, then using its result"
    assert meta["splits"]["train"]["pairs"] == 2 and not (tmp_path / ".data.lock").exists()


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = train_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_resume_refuses_settings_that_must_match_and_takes_the_checkpoints(work, tmp_path, capsys):  # noqa: F811
    """Issue 38: --resume --decoder-layers 3 --max-sentences 40 --lr 5e-3 against a 1-layer run was accepted
    (a new peak LR with the old warm-up, an old batch position, a saved config that lied about the model)."""
    run = tmp_path / "run"
    last = run / "decoder" / "checkpoint_last.pt"
    assert run_cli([*flags(work, run), "--max-steps", "3"], capsys)[0] == 0
    started = load_checkpoint(last)
    code, _, err = run_cli([*flags(work, run), "--max-steps", "6", "--resume", "--decoder-layers", "3",
                            "--max-sentences", "40", "--lr", "5e-3"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"error: {last}: --resume with settings that must stay as the run started: --lr: checkpoint 0.002, this "
        f"command 0.005; --decoder-layers: checkpoint 1, this command 3; --max-sentences: checkpoint 8, this command "
        f"40; drop those flags (the checkpoint's values apply), or start the stage over with --overwrite"]
    assert load_checkpoint(last)["step"] == 3

    # --resume alone continues the run as it started: the settings that must match are the checkpoint's
    code, out, err = run_cli(["--data", work["data"], "--run-dir", run, "--resume", "--max-steps", "6",
                              "--no-progress", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "--resume: the checkpoint's settings, not given here: " in out and "--decoder-layers 1 (else 6)" in out
    resumed = load_checkpoint(last)
    assert resumed["step"] == 6 and resumed["model_spec"]["decoder"]["num_layers"] == 1
    same = {k: v for k, v in started["config"].items() if RESUME_RULE.get(k) == MUST_MATCH}
    assert {k: resumed["config"][k] for k in same} == same                     # the saved config: the model's

    # the settings that may change do, and are said
    code, out, err = run_cli([*flags(work, run), "--resume", "--max-epochs", "2", "--patience", "7"], capsys)
    assert code == 0, err
    assert "--max-epochs: checkpoint 100, this command 2; --patience: checkpoint 3, this command 7" in out
    assert load_checkpoint(last)["config"]["max_epochs"] == 2

    # ... and stay so: --resume alone keeps the run's plan (max_epochs 2), not the default (100)
    code, out, err = run_cli(["--data", work["data"], "--run-dir", run, "--resume", "--no-progress", "--device", "cpu"],
                             capsys)
    assert code == 0, err
    assert "--max-epochs 2 (else 100)" in out and "--patience 7 (else 3)" in out
    assert load_checkpoint(last)["epoch"] == 2 and load_checkpoint(last)["config"]["max_epochs"] == 2


def test_amp_auto_is_compared_as_it_was_resolved(work, tmp_path, capsys, monkeypatch):  # noqa: F811
    """--amp auto is recorded as the dtype it chose; resuming with --amp auto compares that, not "auto"."""
    monkeypatch.setattr("nmt.train.assemble.cpu_has_bf16", lambda: True)
    run = tmp_path / "run"
    assert run_cli([*flags(work, run), "--amp", "auto", "--max-steps", "1"], capsys)[0] == 0
    saved = load_checkpoint(run / "decoder" / "checkpoint_last.pt")["config"]
    assert saved["amp"] == "bfloat16"
    code, out, err = run_cli([*flags(work, run), "--amp", "auto", "--max-steps", "2", "--resume"], capsys)
    assert code == 0 and "--amp: checkpoint" not in out, out + err
    assert resume_differences(saved, dataclasses.replace(TrainConfig.from_dict(saved), amp="off")) == \
        ([], [("amp", "bfloat16", "off")])                                   # may change (another machine)


def test_init_takes_a_run_directory_and_names_what_it_looked_for(work, tmp_path, capsys):  # noqa: F811
    stage1, unfinished, empty = tmp_path / "stage1", tmp_path / "unfinished", tmp_path / "empty"
    empty.mkdir()
    assert run_cli([*flags(work, stage1), "--max-epochs", "1"], capsys)[0] == 0
    assert run_cli([*flags(work, unfinished), "--max-steps", "2"], capsys)[0] == 0
    finetune = [*flags(work, tmp_path / "ft"), "--stage", "finetune", "--max-steps", "1"]
    code, _, err = run_cli([*finetune, "--init", tmp_path / "nowhere"], capsys)
    assert code == 2 and f"error: --init {tmp_path / 'nowhere'}: no such file or directory" in err
    code, _, err = run_cli([*finetune, "--init", empty], capsys)
    assert code == 2 and (f"error: --init {empty}: a directory without a stage-1 best checkpoint (looked for "
                          f"{empty / 'decoder' / 'checkpoint_best.pt'} and {empty / 'checkpoint_best.pt'})") in err
    code, _, err = run_cli([*finetune, "--init", unfinished], capsys)
    last = unfinished / "decoder" / "checkpoint_last.pt"
    assert code == 2 and f"{last} exists: stage 1 has not finished an epoch yet (pass --init {last}" in err
    code, out, err = run_cli([*finetune, "--init", stage1], capsys)
    assert code == 0 and f"fine-tuning from {stage1 / 'decoder' / 'checkpoint_best.pt'}" in out, err


def test_resume_and_overwrite_together_and_quick_starts_over(work, tmp_path, capsys, monkeypatch):  # noqa: F811
    code, _, err = run_cli([*flags(work, tmp_path), "--resume", "--overwrite"], capsys)
    assert code == 2 and "error: --resume continues the stage and --overwrite starts it over" in err
    monkeypatch.setattr("nmt.data.prepare.prepare_demo_slice", lambda *a, **k: None)
    assert train_cli.quick_options({"run_dir": str(tmp_path)})["overwrite"] is True       # a disposable run
    assert "is a disposable run: it starts over" in capsys.readouterr().out
    assert train_cli.quick_options({"run_dir": str(tmp_path), "resume": True})["overwrite"] is False


def test_every_setting_has_its_rule_on_resume():
    """One place decides, per setting, whether --resume may change it (nmt/train/config.py)."""
    assert set(RESUME_RULE) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(RESUME_RULE.values()) <= {MUST_MATCH, MAY_CHANGE, THIS_COMMAND, NOT_COMPARED}
    for name in ("arch", "data", "stage", "decoder_layers", "max_sentences", "batching", "update_freq", "lr",
                 "warmup_steps", "seed", "dropout", "label_smoothing", "adam_beta2"):
        assert RESUME_RULE[name] == MUST_MATCH, name
    for name in ("max_epochs", "patience", "max_cpu_minutes", "dev_bleu", "lenpen_grid", "keep_last_epochs"):
        assert RESUME_RULE[name] == MAY_CHANGE, name        # the run's plan: kept unless a flag changes it
    for name in ("max_steps", "threads", "progress", "device", "amp", "run_dir", "encoder_cache"):
        assert RESUME_RULE[name] == THIS_COMMAND, name       # the machine's: the resuming command's
    assert RESUME_RULE["resume"] == RESUME_RULE["overwrite"] == NOT_COMPARED
