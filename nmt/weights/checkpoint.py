"""Training checkpoints: one self-contained file per snapshot, written atomically.

A checkpoint holds everything needed to continue training exactly (``--resume``) and to translate
without any other file. It contains only tensors, dicts, lists, str, int, float, bool and None, so
it loads with ``torch.load(weights_only=True)`` (no code is unpickled). Keys::

    format          "nmt-checkpoint/1"
    stage           "decoder" | "finetune" | "direct" | "scratch"
    model_spec      ModelSpec.to_dict()           (nmt/model/seq2seq.py: rebuilds the network)
    model           the model's state dict; in a stage-1 checkpoint ("decoder": BERT frozen) without the
                    encoder's tensors ("encoder.*"), which are the BERT file's, unchanged
    bert_reference  stage 1 only: the BERT those tensors are read from when it loads
                    (:func:`attach_bert`): {"path" (as given to train.py --bert), "resolved" (absolute),
                    "default" (True: the installed all-MiniLM-L6-v2), "sha256" (nmt/weights/pretrained.py
                    bert_sha256), "file_bytes", "parameters", "tensor_bytes" (the tensors left out)}
    source, target  SourcePipeline / TargetPipeline .to_dict() (the vocabularies, BPE codes)
    config          TrainConfig.to_dict()
    data_sha256     the training data's content sha256 (every data file's sha256; earlier versions: of
                    meta.json): a --resume from moved or re-prepared data is accepted when it matches
    optimizer       the optimizer's state dict (checkpoint_last.pt only, as "rng")
    schedule        {"peak_lr", "warmup_steps"}   (nmt/train/schedule.py: the LR is a function of "step")
    step            updates done; "epoch" (0-based, the epoch in progress) and "batch_in_epoch"
                    (batches of that epoch already done) locate the data position
    best_dev_loss, bad_epochs   early-stopping state
    rng             {"torch": ByteTensor, "cuda": [ByteTensor, ...]}
    world_size      processes of the data-parallel run that wrote it (absent: 1); resuming with
                    another number continues at the same fraction of the epoch (nmt/train/run_state.py)
    decoding        optional, in checkpoint_best.pt: {"lenpen", ...}, the length penalty chosen on
                    the dev set after training (nmt/decode/lenpen_choice.py); absent: translate with 1.0
    snapshot_dtype  optional, in snapshots only: "float16" | "bfloat16", the dtype their floating-point
                    "model" tensors are stored in (train.py --snapshot-dtype); absent: float32, as
                    checkpoint_last.pt always is. :func:`load_checkpoint` casts them back to float32

A run directory holds one subdirectory per stage (``decoder/``, ``finetune/``, ``direct/``,
``scratch/``; nmt/files.py builds these paths), each with ``checkpoint_best.pt``,
``checkpoint_last.pt`` and ``metrics.jsonl``. Only ``checkpoint_last.pt`` is resumed from, so the
snapshots taken from it (``checkpoint_best.pt``, ``checkpoint_epochN.pt``: :func:`save_snapshot`)
leave out the optimizer's state (Adam's two moments: twice the trained weights) and the RNG, and
may store the weights in float16 or bfloat16 (``--snapshot-dtype``: half the bytes, the weights
rounded to 11 or 8 significant bits); whatever reads them computes in float32.

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "checkpoint_last.pt"
>>> save_checkpoint(path, {"format": FORMAT, "step": 3, "w": torch.ones(2)})
>>> load_checkpoint(path, required=("step",))["step"]
3
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from nmt.errors import CheckpointError
from nmt.files import STAGE_DIRS, atomic_write, stage_dir
from nmt.model.limits import check_state_shapes
from nmt.model.seq2seq import ModelSpec, Seq2Seq, build_model

if TYPE_CHECKING:
    from nmt.text.pipeline import SourcePipeline, TargetPipeline

FORMAT = "nmt-checkpoint/1"
REQUIRED_FOR_TRANSLATION = ("model_spec", "model", "source", "target")
REQUIRED_FOR_RESUME = REQUIRED_FOR_TRANSLATION + ("stage", "config", "optimizer", "schedule", "step", "epoch",
                                                  "batch_in_epoch", "best_dev_loss", "bad_epochs", "rng")
RESUME_ONLY = ("optimizer", "rng")      # kept in checkpoint_last.pt, left out of the snapshots taken from it
SNAPSHOT_DTYPES = ("float32", "float16", "bfloat16")    # train.py --snapshot-dtype: the snapshots' weights


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same directory, fsync, rename.

    A crash (or Ctrl-C) while writing leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(path) as f:
            torch.save(state, f)
    except RuntimeError as e:          # torch's writer reports a failed write (a full disk) this way
        if "inline_container" not in str(e):
            raise
        free = shutil.disk_usage(path.parent).free
        raise CheckpointError(f"{path}: could not be written ({str(e).splitlines()[0][:120]}); "
                              f"{free / 2**20:.0f} MiB free on its disk: free some space, then run the same "
                              f"command with --resume (the previous {path.name}, if any, is intact)") from None


def load_checkpoint(path: str | Path, required: tuple[str, ...] = REQUIRED_FOR_TRANSLATION,
                    map_location: str | torch.device = "cpu", bert: str | Path | None = None,
                    with_bert: bool = True, mmap: bool = False) -> dict:
    """Load and validate a checkpoint (weights_only: no code is executed). When ``required`` names
    "model" (and ``with_bert``), a stage-1 checkpoint gets its BERT's tensors back
    (:func:`attach_bert`: from ``bert``, else the path it records); otherwise it is as stored.
    ``mmap``: the tensors memory-mapped, not read (a look at the config and counters costs next to nothing).
    When ``required`` names "model", its floating-point tensors are float32 whatever the file stores
    (:func:`float32_weights`: a --snapshot-dtype snapshot), so every reader computes in float32."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:     # noqa: BLE001 -- a damaged file makes torch.load raise almost anything
        msg = str(e).split("\n")[0][:200]
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint, cannot be read ({type(e).__name__}: "
                              f"{msg}); use another checkpoint (checkpoint_best.pt / checkpoint_last.pt)") from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path}: not an nmt checkpoint (no 'format' key)")
    if state["format"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state['format']!r}, expected {FORMAT!r} "
                              f"(written by another version of nmt?)")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing} (a partial or foreign checkpoint)")
    if with_bert and "model" in required:
        attach_bert(state, path, bert)
    if "model" in required:
        state["model"] = float32_weights(state["model"])
    return state


def floating_weights_as(model_state, dtype: torch.dtype):
    """``model_state`` with its floating-point tensors in ``dtype``, everything else as is (a value
    that is not a state dict too: :func:`check_weights_fit` reports it)."""
    if not isinstance(model_state, dict):
        return model_state
    return {name: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
            for name, t in model_state.items()}


def float32_weights(model_state):
    """``model_state`` with its floating-point tensors as float32 (a float16/bfloat16 snapshot's, and a
    re-attached BERT's whatever its file holds): the one place a snapshot's weights are cast back at
    load, so the network, averaging and export all see float32."""
    return floating_weights_as(model_state, torch.float32)


ENCODER_PREFIX = "encoder."             # the BERT's tensors in a Seq2Seq state dict


def bert_reference(bert: str | Path, default: bool = False) -> dict:
    """What a stage-1 checkpoint records of the BERT ``bert`` (a native .pt or a TF/HF directory) instead
    of its weights: path as given and resolved, sha256 (hashed once per process), file size."""
    from nmt.weights.pretrained import bert_sha256
    path = Path(bert)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) if path.is_dir() else path.stat().st_size
    return {"path": str(bert), "resolved": str(path.resolve()), "default": bool(default),
            "sha256": bert_sha256(path), "file_bytes": int(size)}


def without_bert(model_state: dict, reference: dict) -> tuple[dict, dict]:
    """A stage-1 state dict without the frozen BERT's tensors, and ``reference`` completed with what
    was left out (parameters, bytes): the checkpoint saves the decoder only."""
    dropped = [t for name, t in model_state.items() if name.startswith(ENCODER_PREFIX)]
    kept = {name: t for name, t in model_state.items() if not name.startswith(ENCODER_PREFIX)}
    return kept, {**reference, "parameters": sum(t.numel() for t in dropped),
                  "tensor_bytes": sum(t.numel() * t.element_size() for t in dropped)}


def attach_bert(state: dict, path: str | Path, bert: str | Path | None = None) -> dict:
    """Put a stage-1 checkpoint's BERT tensors back into ``state["model"]`` (in place; nothing to do
    for a checkpoint that holds them): read from ``bert`` if given, else from the path it records
    (resolved, as given, or the default BERT's place), after checking the file's sha256. A missing
    or different BERT is a CheckpointError naming the file and --bert."""
    reference = state.get("bert_reference")
    model = state.get("model")
    if not isinstance(reference, dict) or not isinstance(model, dict) \
            or any(name.startswith(ENCODER_PREFIX) for name in model):
        return state
    from nmt.weights.pretrained import bert_sha256, default_bert_path, load_native, read_bert_dir
    recorded, want = reference.get("path"), str(reference.get("sha256"))
    what = f"the BERT it was trained with ({recorded}, sha256 {want[:16]})"
    if bert is not None:
        candidates = [Path(bert)]
    else:
        candidates = [Path(reference.get("resolved", recorded)), Path(recorded)]
        candidates += [default_bert_path()] if reference.get("default") else []
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        looked = " or ".join(dict.fromkeys(str(c) for c in candidates))
        raise CheckpointError(f"{path}: a stage-1 checkpoint without its BERT weights, and {looked} is missing; "
                              f"pass --bert PATH (bert= in Python) with {what}")
    digest = bert_sha256(found)
    if digest != want:
        raise CheckpointError(f"{found}: not the BERT {path} was trained with (its sha256 is {digest[:16]}, the "
                              f"checkpoint records {want[:16]} for {recorded}); pass --bert PATH (bert= in Python) "
                              f"with {what}")
    weights = (read_bert_dir(found, lower_case=True) if found.is_dir() else load_native(found)).state_dict
    state["model"] = {**{ENCODER_PREFIX + name: t for name, t in weights.items() if not name.startswith("pooler.")},
                      **model}
    return state


def save_snapshot(last: str | Path, path: str | Path, dtype: str = "float32") -> None:
    """Write ``path`` (checkpoint_best.pt, checkpoint_epochN.pt) from ``last`` (checkpoint_last.pt)
    without RESUME_ONLY: what translating, --init, averaging and reading the counters need, at a third
    of the size. ``dtype`` (--snapshot-dtype, :data:`SNAPSHOT_DTYPES`): float16 or bfloat16 stores the
    floating-point weights rounded to it, half the bytes again, and records it as "snapshot_dtype";
    ``last`` stays float32 so resuming is exact. As stored otherwise (a stage-1 checkpoint stays without
    its BERT); atomic, repeatable."""
    if dtype not in SNAPSHOT_DTYPES:
        raise CheckpointError(f"snapshot dtype {dtype!r}: expected one of {', '.join(SNAPSHOT_DTYPES)}")
    state = load_checkpoint(last, required=(), mmap=True)
    for key in RESUME_ONLY:
        state.pop(key, None)
    if dtype != "float32":
        state["model"] = floating_weights_as(state["model"], getattr(torch, dtype))
        state["snapshot_dtype"] = dtype
    save_checkpoint(path, state)


def update_checkpoint(path: str | Path, **entries) -> None:
    """Set top-level keys of a saved checkpoint (e.g. ``decoding=...``), rewriting it atomically (as
    stored: a stage-1 checkpoint stays without its BERT)."""
    state = load_checkpoint(path, required=())
    state.update(entries)
    save_checkpoint(path, state)


def average_checkpoints(paths: list[str | Path], bert: str | Path | None = None) -> dict:
    """The parameters of several checkpoints of one run averaged (fairseq's average_checkpoints; the
    last epochs' average usually translates a little better than any one of them). Everything
    else -- spec, text pipelines, config, chosen length penalty -- is the newest input's (highest
    step); optimizer state and resume bookkeeping are dropped, so the result is for translation.
    The mean is taken in float64 over the inputs' weights as loaded (float32, also from float16 or
    bfloat16 snapshots: :func:`float32_weights`) and stored in float32, whatever the inputs' dtype.
    Inputs with another network spec or other vocabularies are refused. Stage-1 checkpoints of one
    BERT (same sha256) average without it and the result refers to it too; otherwise each gets its
    BERT back first (``bert``: as for :func:`load_checkpoint`)."""
    if len(paths) < 2:
        raise CheckpointError(f"averaging needs at least 2 checkpoints, got {len(paths)}")
    states = [(Path(p), load_checkpoint(p, with_bert=False)) for p in paths]
    shared = {str(s.get("bert_reference", {}).get("sha256")) if "bert_reference" in s else None
              for _, s in states}
    if len(shared) != 1 or any(name.startswith(ENCODER_PREFIX) for _, s in states for name in s["model"]):
        states = [(p, attach_bert(s, p, bert)) for p, s in states]
    newest_path, newest = max(states, key=lambda item: (int(item[1].get("step", 0)), str(item[0])))
    for path, state in states:
        for key in ("model_spec", "source", "target"):
            if state[key] != newest[key]:
                raise CheckpointError(f"{path}: its {key} differs from {newest_path}'s; only checkpoints of one "
                                      f"run (same network and vocabularies) can be averaged")
    model = {}
    for name, tensor in newest["model"].items():
        if tensor.is_floating_point():
            total = sum(state["model"][name].double() for _, state in states)
            model[name] = (total / len(states)).float()
        else:                       # integer buffers (none in our models today) are taken as they are
            model[name] = tensor
    keep = ("format", "stage", "model_spec", "source", "target", "config", "decoding", "step", "epoch")
    if not any(name.startswith(ENCODER_PREFIX) for name in model):
        keep += ("bert_reference",)
    return {**{k: newest[k] for k in keep if k in newest}, "model": model,
            "averaged_from": [str(p) for p, _ in states]}


def epoch_checkpoints(stage_dir: str | Path, last: int) -> list[Path]:
    """The ``last`` checkpoint_epochN.pt of a stage directory with the highest N, oldest first."""
    stage_dir = Path(stage_dir)
    found = sorted((int(p.stem.removeprefix("checkpoint_epoch")), p) for p in stage_dir.glob("checkpoint_epoch*.pt")
                   if p.stem.removeprefix("checkpoint_epoch").isdigit())
    if len(found) < last:
        raise CheckpointError(f"{stage_dir}: {len(found)} epoch checkpoints (checkpoint_epochN.pt), {last} asked "
                              f"for; train with --keep-last-epochs {last}")
    return [p for _, p in found[-last:]]


def model_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint", encoder_dropout: float | None = None,
                          bert: str | Path | None = None) -> tuple[Seq2Seq, ModelSpec]:
    """The network a loaded checkpoint describes, with its weights; ``encoder_dropout`` replaces
    BERT's hidden dropout (fine-tuning with --encoder-dropout). The spec is checked before anything
    is allocated: its own sizes (``ModelSpec.validate``), against the checkpoint's vocabularies, and
    against every stored tensor's shape (:func:`check_weights_fit`). A stage-1 checkpoint's BERT is
    read back first if it was not (:func:`attach_bert`, ``bert``)."""
    attach_bert(ckpt, path, bert)
    spec = ModelSpec.from_dict(ckpt["model_spec"], what=f"{path}: model_spec")
    if encoder_dropout is not None and spec.bert_config:
        spec.bert_config = {**spec.bert_config, "hidden_dropout_prob": encoder_dropout}
        spec.validate(f"{path}: model_spec")
    for side, size in (("source", spec.src_vocab_size), ("target", spec.tgt_vocab_size)):
        pipeline = ckpt.get(side)
        vocab = pipeline.get("vocab") if isinstance(pipeline, dict) else None
        if isinstance(vocab, list) and len(vocab) != size:
            field = "src_vocab_size" if side == "source" else "tgt_vocab_size"
            raise CheckpointError(f"{path}: model_spec {field} is {size} but its {side} vocabulary has {len(vocab)} "
                                  f"entries (a damaged checkpoint); use another checkpoint")
    check_weights_fit(ckpt["model"], spec, path)
    model = build_model(spec)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: model weights do not fit the model spec ({str(e)[:500]})") from None
    return model, spec


def check_weights_fit(state: dict, spec: ModelSpec, path: str | Path) -> None:
    """CheckpointError naming the tensor unless ``state`` holds exactly the tensors ``spec``'s network
    has, each of its shape. The network is built on the meta device: shapes only, no memory."""
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{path}: 'model' is not a state dict of tensors (a damaged or foreign checkpoint)")
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in build_model(spec).state_dict().items()}
    check_state_shapes(state, expected, str(path), "model_spec", "a damaged checkpoint? use another one",
                       CheckpointError)


def check_vocabularies(ckpt: dict, source: SourcePipeline, target: TargetPipeline, ckpt_path: Path,
                       data_dir: Path) -> None:
    """A checkpoint can only continue on (or be scored on) data encoded with the same source and
    target vocabularies: its own data, or new data prepared with its pipelines (--pipelines-from)."""
    for side, pipeline in (("source", source), ("target", target)):
        theirs = list(ckpt[side].get("vocab", []))
        ours = list(pipeline.vocab_tokens if side == "source" else pipeline.vocab.symbols)
        if theirs != ours:
            diff = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
            raise CheckpointError(f"{ckpt_path}: its {side} vocabulary ({len(theirs)} entries) differs from the data's "
                                  f"in {data_dir} ({len(ours)} entries; first difference at id {diff}); use the data "
                                  f"directory the checkpoint was trained on, or prepare this data with the "
                                  f"checkpoint's pipelines (tools/prepare_data.py --pipelines-from {ckpt_path})")


def rng_state() -> dict:
    """The torch RNG states (CPU and every CUDA device) as tensors."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def best_checkpoint_path(run_dir: str | Path) -> Path:
    """The checkpoint translate.py should use by default for a run directory: the fine-tuned best
    if it exists, else the stage-1 (decoder) best, else direct, else scratch (baselines).

    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> (run / "decoder").mkdir(); (run / "decoder" / "checkpoint_best.pt").touch()
    >>> best_checkpoint_path(run).relative_to(run).as_posix()
    'decoder/checkpoint_best.pt'
    """
    run_dir = Path(run_dir)
    candidates = [stage_dir(run_dir, s) / "checkpoint_best.pt" for s in STAGE_DIRS]
    for c in candidates:
        if c.is_file():
            return c
    raise CheckpointError(f"{run_dir}: no trained model found (looked for "
                          f"{', '.join(str(c.relative_to(run_dir)) for c in candidates)}); train one with train.py")
