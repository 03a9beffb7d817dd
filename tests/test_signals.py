"""Stop signals and silent ranks (docs/faults.md): SIGTERM and SIGHUP save like Ctrl-C and exit with 128 +
the signal; a second signal while saving leaves the last complete checkpoint; translate.py removes its
temporary --output file; a full disk names the output; under torchrun every rank stops at the same
update, and a stopped rank is one error line after --dist-timeout-minutes, not 30 minutes of silence.

The signals are real: ``python train.py`` / ``translate.py`` / torchrun processes on the trainer tests'
tiny data, signalled mid-run; the in-process tests signal the test process itself (os.kill).
"""
import errno
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_trainer import make_cfg, quiet, work  # noqa: F401 -- the module-scoped tiny data and BERT

import train as train_cli
from nmt.errors import DistributedError, StopSignal, raise_on_stop_signals, restore_signals
from nmt.train.run_state import stop_status
from nmt.train.trainer import setup
from nmt.weights.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def default_hup():
    """The child's SIGHUP as a terminal session has it (pytest may run under nohup: SIG_IGN, inherited)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def train_argv(work, run: Path, *extra: str) -> list[str]:  # noqa: F811
    """Tiny stage-1 runs of 20 updates per epoch (40 pairs, 2 per batch)."""
    return ["--data", str(work["data"]), "--bert", str(work["bert"]), "--run-dir", str(run), "--stage", "decoder",
            "--max-epochs", "3", "--patience", "5", "--decoder-layers", "1", "--max-sentences", "2",
            "--batching", "sentences", "--lr", "2e-3", "--warmup-steps", "4", "--no-progress", "--device", "cpu",
            "--threads", "1", "--encoder-cache", "memory", *extra]


def wait_for_line(proc: subprocess.Popen, stream, marker: str, seconds: float = 120) -> list[str]:
    """The lines of ``stream`` up to the first one containing ``marker``."""
    lines, deadline = [], time.time() + seconds
    while time.time() < deadline:
        if select.select([stream], [], [], 1.0)[0]:
            line = stream.readline()
            if not line:
                break
            lines.append(line)
            if marker in line:
                return lines
        elif proc.poll() is not None:
            break
    proc.kill()
    pytest.fail(f"no {marker!r} line within {seconds} s: {''.join(lines)[-2000:]} {proc.stderr.read()[-2000:]}")


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "decoder" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------------------- train.py, one process

@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143),
                                            pytest.param(signal.SIGHUP, 129, marks=pytest.mark.slow)])
def test_sigterm_and_sighup_mid_epoch_save_and_resume_finishes(work, tmp_path, signum, status):  # noqa: F811
    """Signalled in epoch 2: the update finishes, checkpoint_last.pt is saved past epoch 1's end with
    the epoch's position, one line names the signal, the file and --resume; exit 128 + signum. --resume
    then finishes the run with each epoch recorded once, over the whole epoch."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *train_argv(work, run)], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_hup)
    wait_for_line(proc, proc.stdout, "epoch 1:")
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert proc.returncode == status, out[-2000:] + err[-2000:]
    ckpt = load_checkpoint(run / "decoder" / "checkpoint_last.pt")
    assert ckpt["epoch"] >= 1 and 0 < ckpt["batch_in_epoch"] < 20 and ckpt["step"] > 20
    assert f"interrupted by {name}: saved {run / 'decoder' / 'checkpoint_last.pt'} at update {ckpt['step']}; " \
           f"continue with --resume" in out
    assert "Traceback" not in err and err == ""
    assert metrics(run)[-1] == {**metrics(run)[-1], "event": "interrupted", "signal": name, "step": ckpt["step"]}
    if signum == signal.SIGHUP:
        return                                          # the resume is the same as after SIGTERM
    resumed = subprocess.run([sys.executable, str(REPO / "train.py"), *train_argv(work, run, "--resume")],
                             cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    epochs = [r for r in metrics(run) if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert len({r["train"]["tokens"] for r in epochs}) == 1          # epoch 2 counts its tokens before the stop
    assert load_checkpoint(run / "decoder" / "checkpoint_last.pt")["step"] == 60


# ---------------------------------------------------------------------------------------------- in process

def test_stop_signals_outside_the_loop_raise_and_nohup_is_kept():
    """Entry points: SIGTERM and SIGHUP raise StopSignal (exit 128 + signum) as Ctrl-C raises
    KeyboardInterrupt; a SIGHUP ignored at start (nohup) stays ignored; the old handlers come back."""
    hup = signal.signal(signal.SIGHUP, signal.SIG_DFL)      # as a terminal starts it (the suite may run under nohup)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    previous = raise_on_stop_signals()
    try:
        for signum, status in ((signal.SIGTERM, 143), (signal.SIGHUP, 129)):
            with pytest.raises(StopSignal) as caught:
                os.kill(os.getpid(), signum)
                time.sleep(1)                               # the handler runs before this ends
            assert caught.value.signum == signum and stop_status(caught.value) == status
    finally:
        restore_signals(previous)
    assert {s: signal.getsignal(s) for s in before} == before
    signal.signal(signal.SIGHUP, signal.SIG_IGN)             # as nohup starts a process
    try:
        previous = raise_on_stop_signals()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN and signal.SIGHUP not in previous
        restore_signals(previous)
    finally:
        signal.signal(signal.SIGHUP, hup)


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_while_saving(work, tmp_path, monkeypatch, second):  # noqa: F811
    """SIGTERM in epoch 2, then a second signal while checkpoint_last.pt is being written: another SIGTERM
    changes nothing (the save completes, status 143); a Ctrl-C aborts at once: the half-written file is
    dropped (atomic), epoch 1's checkpoint stays whole, no temporary file is left."""
    import nmt.weights.checkpoint as checkpoint
    trainer = setup(make_cfg(work, tmp_path, stage="decoder", max_epochs=2), print_fn=quiet)   # 5 updates an epoch
    step = trainer.train_step

    def signalled_step(batch):
        if trainer.step == 6:                       # the 2nd update of epoch 2
            os.kill(os.getpid(), signal.SIGTERM)
        return step(batch)
    trainer.train_step = signalled_step
    real_save = checkpoint.torch.save

    def save_with_a_second_signal(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if obj["step"] > 5:                         # the stop's save, not epoch 1's
            os.kill(os.getpid(), second)
            time.sleep(0.5)
    monkeypatch.setattr(checkpoint.torch, "save", save_with_a_second_signal)
    last = tmp_path / "decoder" / "checkpoint_last.pt"
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    if second == signal.SIGTERM:
        assert trainer.fit() == "interrupted" and trainer.stop_signal == signal.SIGTERM
        assert load_checkpoint(last)["step"] == 7 and load_checkpoint(last)["batch_in_epoch"] == 2
    else:
        with pytest.raises(StopSignal) as caught:
            trainer.fit()
        assert caught.value.signum == signal.SIGINT and stop_status(caught.value) == 130
        assert load_checkpoint(last)["step"] == 5 and load_checkpoint(last)["batch_in_epoch"] == 0
    assert not [p.name for p in last.parent.iterdir() if ".tmp" in p.name]
    assert {s: signal.getsignal(s) for s in handlers} == handlers          # the caller's handlers are back


def test_a_signal_as_the_stage_ends_stops_before_the_length_penalty_choice(work, tmp_path):  # noqa: F811
    """SIGTERM during the last epoch's dev evaluation: no update is left to finish; the epoch is saved
    as usual, then fit() stops (StopSignal, 143) instead of starting the length-penalty choice, which
    --resume does."""
    cfg = dict(stage="decoder", max_epochs=1, lenpen_grid="1.0,1.5")
    trainer = setup(make_cfg(work, tmp_path, **cfg), print_fn=quiet)
    evaluate = trainer.evaluate

    def signalled_evaluate():
        os.kill(os.getpid(), signal.SIGTERM)
        return evaluate()
    trainer.evaluate = signalled_evaluate
    with pytest.raises(StopSignal) as caught:
        trainer.fit()
    assert caught.value.signum == signal.SIGTERM and stop_status(caught.value) == 143
    stage = tmp_path / "decoder"
    assert load_checkpoint(stage / "checkpoint_last.pt")["epoch"] == 1
    assert "decoding" not in load_checkpoint(stage / "checkpoint_best.pt", required=())
    assert setup(make_cfg(work, tmp_path, resume=True, **cfg), print_fn=quiet).fit() == "max_epochs"
    assert "decoding" in load_checkpoint(stage / "checkpoint_best.pt", required=())
    assert [r["event"] for r in metrics(tmp_path)].count("lenpen") == 1


def test_train_py_stopped_before_training_is_one_line(work, tmp_path, capsys, monkeypatch):  # noqa: F811
    """SIGTERM while train.py sets up (before the loop can save): one line, status 143, no traceback."""
    from nmt.train import trainer as trainer_module

    def stopped_setup(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the set-up")
    monkeypatch.setattr(trainer_module, "setup", stopped_setup)
    code = train_cli.main(train_argv(work, tmp_path / "run"))
    err = capsys.readouterr().err
    assert code == 143 and err.count("\n") == 1
    assert err.startswith("interrupted by SIGTERM: stopped at once; the last complete checkpoint_last.pt")


def test_run_experiments_exits_with_the_signal_status(work, tmp_path, capsys, monkeypatch):  # noqa: F811
    """tools/run_experiments.py: a SIGTERM in training saves the run (as Ctrl-C) and exits 143; one
    outside training (e.g. while decoding) exits 143 at once."""
    sys.path.insert(0, str(REPO / "tools"))
    import run_experiments
    from nmt.train import trainer as trainer_module

    def signalled_setup(*args, **kwargs):           # the trainer run_experiments.train sets up, SIGTERMed in update 2
        trainer = setup(*args, **kwargs)
        step = trainer.train_step

        def signalled_step(batch):
            if trainer.step == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return step(batch)
        trainer.train_step = signalled_step
        return trainer
    monkeypatch.setattr(trainer_module, "setup", signalled_setup)

    class Training:                                  # a study of one run: the study's train()
        def run(self):
            cfg = make_cfg(work, tmp_path / "exp", stage="decoder", max_epochs=1)
            run_experiments.train(cfg, tmp_path / "exp", quiet)

    class Decoding:
        def run(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)

    for experiment in (Training(), Decoding()):
        experiment.out, experiment.selected, experiment.log = tmp_path, [], lambda *_: None
        monkeypatch.setattr(run_experiments, "make_experiment", lambda args, e=experiment: e)
        assert run_experiments.main([]) == 143
        assert capsys.readouterr().err == "interrupted by SIGTERM: run the same command again to continue\n"
    assert load_checkpoint(tmp_path / "exp" / "decoder" / "checkpoint_last.pt")["step"] == 2


# ---------------------------------------------------------------------------------------------- translate.py

@pytest.fixture
def ckpt(tmp_path):
    from test_translate import make_checkpoint
    return make_checkpoint(tmp_path / "tiny.pt")


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGHUP, marks=pytest.mark.slow)])
def test_translate_signalled_removes_its_temporary_output(tmp_path, ckpt, signum):
    """translate.py --output F reading an open pipe, signalled once F's temporary file exists: that
    file is removed, F is not written, one line, exit 128 + signum."""
    out = tmp_path / "out.txt"
    proc = subprocess.Popen([sys.executable, str(REPO / "translate.py"), "--quiet", "--checkpoint", str(ckpt),
                             "--beam", "2", "--device", "cpu", "--output", str(out)], cwd=tmp_path, env=ENV,
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_hup)
    try:
        proc.stdin.write("the cat sat on the mat .\n")
        proc.stdin.flush()                                   # the pipe stays open: translate.py waits for more
        temporary = tmp_path / f".out.txt.tmp.{proc.pid}"
        deadline = time.time() + 120
        while not temporary.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert temporary.exists(), proc.stderr.read()
        time.sleep(0.5)                                      # the first line translated and written
        proc.send_signal(signum)
        assert proc.wait(60) == 128 + signum
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    name = signal.Signals(signum).name
    assert err == f"interrupted by {name}: {out} not written (no partial file; a previous one is kept)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]


def test_translate_full_disk_names_the_output(tmp_path, ckpt, capsys, monkeypatch):
    """A write that fails with ENOSPC (as on a full disk): one line naming --output, F left as it was,
    no temporary file."""
    import translate
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("the cat sat .\na big red dog !\n", encoding="utf-8")
    out.write_text("yesterday's translations\n", encoding="utf-8")
    real_atomic_write = translate.atomic_write

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

    def atomic_write_on_a_full_disk(path, mode="wb"):
        import contextlib

        @contextlib.contextmanager
        def opened():
            with real_atomic_write(path, mode) as f:
                yield FullDisk(f)
        return opened()
    monkeypatch.setattr(translate, "atomic_write", atomic_write_on_a_full_disk)
    code = translate.main(["--quiet", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {out}: no space left on the device (No space left on device) while writing "
                          f"the translations; {out} is as it was: free some space")
    assert out.read_text(encoding="utf-8") == "yesterday's translations\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt", "tiny.pt"]


# ---------------------------------------------------------------------------------------------- torchrun

def test_a_collective_failure_is_one_line_and_a_bug_is_not():
    """DistContext.failure: gloo's timeout and a lost peer become one line naming the cause and the
    flag; any other error stays itself. A timeout that is not a positive number is refused."""
    import torch

    from nmt.train.distributed import DistContext, init_from_env
    ctx = DistContext(rank=0, local_rank=0, world_size=2, backend="gloo", device=torch.device("cpu"),
                      timeout_minutes=0.5)
    timeout = ctx.failure(RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 30000ms "
                                       "for recv operation to complete"))
    assert isinstance(timeout, DistributedError)
    assert str(timeout).startswith("no answer from the other processes within 0.5 minutes (--dist-timeout-minutes): "
                                   "a rank is stopped (SIGSTOP, Ctrl-Z), hung or far slower")
    gone = ctx.failure(RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:3463"))
    assert str(gone).startswith("another process of the job ended")
    assert ctx.failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert ctx.failure(ValueError("timed out")) is None
    with pytest.raises(DistributedError, match="--dist-timeout-minutes 0: must be a positive number"):
        init_from_env("cpu", timeout_minutes=0, environ={"WORLD_SIZE": "2", "RANK": "0"})


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_train(work, run: Path, *extra: str) -> subprocess.Popen:  # noqa: F811
    """train.py on 2 gloo processes (rank 0's stdout is torchrun's), in a session of its own."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(REPO / "train.py"),
           *train_argv(work, run, *extra)]
    return subprocess.Popen(cmd, cwd=run.parent, env={**ENV, "GLOO_SOCKET_IFNAME": "lo"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def worker_pid(torchrun: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker of ``rank`` (its child with RANK=rank in its environment)."""
    children = Path(f"/proc/{torchrun.pid}/task/{torchrun.pid}/children").read_text().split()
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker of rank {rank} among {children}")


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)           # torchrun and its workers: no orphans left behind
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s (a hang?)\n{out[-2000:]}\n{err[-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["rank 1", "torchrun"])
def test_sigterm_under_torchrun_stops_every_rank_at_the_same_update(work, tmp_path, target):  # noqa: F811
    """torchrun, 2 processes, SIGTERM in epoch 2 to rank 1 alone (a node's processes signalled) or to
    torchrun (a scheduler's stop: torchrun passes it on to every worker): the ranks agree, finish the
    same update, rank 0 saves and says so; one process resumes to the end."""
    run = tmp_path / "run"
    proc = torchrun_train(work, run)
    wait_for_line(proc, proc.stdout, "epoch 1:")
    os.kill(worker_pid(proc, 1) if target == "rank 1" else proc.pid, signal.SIGTERM)
    out, err = finish(proc)
    ckpt = load_checkpoint(run / "decoder" / "checkpoint_last.pt")
    assert ckpt["world_size"] == 2 and ckpt["epoch"] >= 1 and ckpt["batch_in_epoch"] > 0, out[-2000:] + err[-3000:]
    assert f"interrupted by SIGTERM: saved {run / 'decoder' / 'checkpoint_last.pt'} at update {ckpt['step']}" in out
    assert "error: rank" not in err and err.count("Traceback (most recent call last)") == 1, err[-3000:]  # torchrun's
    if target == "rank 1":      # torchrun's summary of the workers: both ended with 143, the same stop
        assert err.count("exitcode  : 143") == 2, err[-3000:]
        return
    assert "SignalException: Process" in err and "got signal: 15" in err     # torchrun's own exit (status 1)
    resumed = subprocess.run([sys.executable, str(REPO / "train.py"), *train_argv(work, run, "--resume")],
                             cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["epoch"] for r in metrics(run) if r["event"] == "epoch"] == [1, 2, 3]


@pytest.mark.slow
def test_a_stopped_rank_is_one_error_line_after_the_timeout(work, tmp_path):  # noqa: F811
    """torchrun, 2 processes, --dist-timeout-minutes 0.1: rank 1 stopped (SIGSTOP) mid-epoch; rank 0
    says so in one line within seconds, not after 30 minutes; rank 1, continued, ends with one line too."""
    run = tmp_path / "run"
    proc = torchrun_train(work, run, "--dist-timeout-minutes", "0.1")
    wait_for_line(proc, proc.stdout, "epoch 1:")
    rank1 = worker_pid(proc, 1)
    os.kill(rank1, signal.SIGSTOP)
    t0 = time.time()
    try:
        lines = wait_for_line(proc, proc.stderr, "error: rank 0:", seconds=90)
    finally:
        os.kill(rank1, signal.SIGCONT)
    waited = time.time() - t0
    out, err = finish(proc)
    err = "".join(lines) + err
    assert 6 <= waited < 60, waited
    assert "error: rank 0: no answer from the other processes within 0.1 minutes (--dist-timeout-minutes): a rank " \
           "is stopped (SIGSTOP, Ctrl-Z), hung or far slower" in err
    assert proc.returncode != 0
    assert err.count("Traceback (most recent call last)") == 1, err[-3000:]      # torchrun's own (ChildFailedError)
    assert load_checkpoint(run / "decoder" / "checkpoint_last.pt")["epoch"] == 1       # the last save stays


@pytest.mark.slow
def test_waits_for_rank0_alone_outlast_the_training_timeout(tmp_path):
    """Rank 0 working alone (dev BLEU, the length-penalty choice) longer than --dist-timeout-minutes does
    not fail the others: DistContext.wait_for_rank0 has a timeout of its own; a training collective does."""
    script = tmp_path / "waits.py"
    script.write_text(
        "import time\n"
        "from nmt.train.distributed import exit_worker, init_from_env\n"
        "dist = init_from_env('cpu', timeout_minutes=0.05)\n"
        "if dist.rank == 0:\n"
        "    time.sleep(6)\n"
        "dist.wait_for_rank0()\n"
        "print(f'rank {dist.rank}: waited', flush=True)\n"
        "if dist.rank == 1:\n"
        "    time.sleep(8)\n"
        "try:\n"
        "    dist.all_reduce_sum([1.0])\n"
        "except RuntimeError as e:\n"
        "    print(f'rank {dist.rank}: {dist.failure(e)}', flush=True)\n"
        "exit_worker(0)\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**ENV, "GLOO_SOCKET_IFNAME": "lo"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    out, err = finish(proc)
    assert "rank 0: waited" in out and "rank 1: waited" in out, err[-3000:]
    assert "rank 0: no answer from the other processes within 0.05 minutes" in out, out + err[-3000:]
