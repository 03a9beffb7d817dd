"""Assembling a training run from its config: the prepared data (the demo corpus is prepared on
first use, nmt/data/prepare.py), the text pipelines, and the model the stage starts from -- BERT's
weights and a new decoder (stage 1, direct), a fresh baseline (scratch), the stage-1 best checkpoint
(fine-tuning) or the checkpoint to resume. Nothing here trains; nmt/train/trainer.py does (and sets
the model to its stage: Seq2Seq.set_stage runs there, once).

The stage directory's rules live here too: one writer at a time (:func:`stage_lock`, taken by
train.py and tools/run_experiments.py for the whole stage); a stage that holds a run is continued
(``--resume``, with the settings that must match checked against the checkpoint:
nmt.train.config.RESUME_RULE) or started over (``--overwrite``, the old files kept in
``STAGE.previous-N/``), never replaced silently.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from nmt.data.binarized import ParallelData, data_content_sha256, file_sha256, read_meta
from nmt.data.prepare import prepare_demo
from nmt.cpu.inference_linear import cpu_has_bf16
from nmt.errors import DataError, NmtError, TrainingError
from nmt.files import exclusive_lock, remove_stale_temporaries, stage_dir
from nmt.model.seq2seq import ModelSpec, Seq2Seq, build_model
from nmt.text.pipeline import SourcePipeline, TargetPipeline
from nmt.train.config import (
    MAY_CHANGE,
    MUST_MATCH,
    RESUME_RULE,
    TrainConfig,
    default_run_dir,
    demo_bpe_merges,
    demo_data_dir,
    describe_differences,
    resume_differences,
    show_setting,
)
from nmt.train.distributed import DistContext
from nmt.weights.checkpoint import (
    REQUIRED_FOR_RESUME,
    check_vocabularies,
    load_checkpoint,
    model_from_checkpoint,
)


@dataclass
class Run:
    """Everything a Trainer starts from."""
    model: Seq2Seq                  # not yet set to the stage: the Trainer does that (and builds the optimizer)
    spec: ModelSpec                 # how to rebuild the model (stored in checkpoints)
    source: SourcePipeline          # text -> source ids (WordPiece for BERT, BPE for the baselines)
    target: TargetPipeline          # text <-> target ids (BPE)
    train: ParallelData             # the binarized training split
    valid: ParallelData             # the dev split: loss, early stopping, dev BLEU
    out_dir: Path                   # RUN_DIR/STAGE: checkpoints and metrics.jsonl
    resume_state: dict | None       # checkpoint_last.pt's contents with --resume, else None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def resolve_amp(amp: str, device: torch.device) -> str:
    """The autocast dtype a run trains with: ``amp`` itself, or for "auto" (the demo preset's)
    bfloat16 on a CPU with bf16 instructions and off elsewhere (on a GPU the demo's small products
    ran slower in bf16 than in fp32: docs/speed.md). TrainingError for an ``amp`` the device cannot
    run well: float16 needs CUDA; bfloat16 on the CPU needs bf16 instructions (elsewhere PyTorch
    emulates bf16 products, several times slower)."""
    if amp == "auto":
        return "bfloat16" if device.type == "cpu" and cpu_has_bf16() else "off"
    if amp == "float16" and device.type != "cuda":
        raise TrainingError(f"--amp float16 needs a CUDA device (this run is on {device}); use --amp bfloat16 or off")
    if amp == "bfloat16" and device.type == "cpu" and not cpu_has_bf16():
        raise TrainingError("--amp bfloat16: this CPU has no bfloat16 instructions (no avx512_bf16/amx_bf16 in "
                            "/proc/cpuinfo), so bf16 products would run several times slower than fp32; "
                            "use --amp off")
    return amp


def prepare_run(cfg: TrainConfig, print_fn: Callable[[str], None], master_process: bool,
                dist: DistContext | None) -> tuple[TrainConfig, Run, torch.device]:
    """What nmt/train/trainer.py's ``setup`` does before building the Trainer: the config validated and
    as the run trains with it (--amp auto resolved for the device: checkpoints record it), the run
    assembled, rank 0 first (it may write shared files: demo data, converted BERT), after removing
    what a killed run left in the stage directory. A stage directory that holds a run is refused
    unless --resume (continue it) or --overwrite (its files set aside first)."""
    cfg.validate()
    out_dir = stage_dir(default_run_dir(cfg), cfg.stage)
    held = None if cfg.resume else existing_run(out_dir)      # every rank reads it: all refuse alike
    if held is not None and not cfg.overwrite:
        raise TrainingError(f"{out_dir} already holds a run of stage {cfg.stage} ({held}): continue it with "
                            f"--resume, or start it over with --overwrite (its files are then kept in "
                            f"{aside_dir(out_dir)}/)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = dist.device if dist is not None else resolve_device(cfg.device)
    amp = resolve_amp(cfg.amp, device)
    if cfg.amp == "auto" and master_process:
        print_fn(f"--amp auto: {'bfloat16 autocast, this CPU has bf16 instructions' if amp == 'bfloat16' else 'off'}"
                 f" (--amp off or bfloat16 to choose)")
    cfg = dataclasses.replace(cfg, amp=amp)
    if cfg.resume:                              # before the data is read: compared as resolved (--amp)
        check_resume(cfg, out_dir / "checkpoint_last.pt", print_fn if master_process else lambda *_: None)
    with dist.rank0_first() if dist is not None else contextlib.nullcontext():
        if master_process:                      # before any rank writes there
            for path in remove_stale_temporaries(out_dir):
                print_fn(f"removed {path}, left behind by an interrupted run")
            if cfg.overwrite and not cfg.resume and stage_files(out_dir):
                aside = set_aside(out_dir)
                print_fn(f"--overwrite: stage {cfg.stage} starts over; the previous run's files"
                         f"{f' ({held})' if held else ''} are kept in {aside}/")
        run = assemble_run(cfg, print_fn)
    return cfg, run, device


# ---------------------------------------------------------------------------------------------------
# the stage directory: one writer, never replaced silently, --resume checked, --init found

LOCK_FILE = ".lock"        # in the stage directory: fcntl.flock'ed by its writer, holds the writer's PID


def stage_lock(cfg: TrainConfig) -> contextlib.AbstractContextManager:
    """The lock of the stage ``cfg`` writes (RUN_DIR/STAGE/.lock, nmt.files.exclusive_lock), held by
    train.py (rank 0 under torchrun) and tools/run_experiments.py for the whole stage: a second
    writer of the same stage is a TrainingError naming the PID of the first. Validates ``cfg`` first."""
    out_dir = stage_dir(default_run_dir(cfg.validate()), cfg.stage)
    return exclusive_lock(out_dir / LOCK_FILE, str(out_dir), error=TrainingError)


def stage_files(out_dir: Path) -> list[Path]:
    """What a stage directory holds besides its lock."""
    return sorted(p for p in out_dir.iterdir() if p.name != LOCK_FILE) if out_dir.is_dir() else []


def checkpoint_header(path: Path) -> dict:
    """A checkpoint's entries without its tensors' data (memory-mapped, so a large checkpoint costs
    next to nothing): the config, counters and best scores, validated as load_checkpoint validates."""
    state = load_checkpoint(path, required=(), mmap=True)
    return {k: v for k, v in state.items() if k not in ("model", "optimizer", "rng")}


def existing_run(out_dir: Path) -> str | None:
    """What a stage directory holds, in a few words ("best dev loss 4.708 at epoch 7; 10 epochs
    trained, update 2340"), or None when it holds no checkpoint (nothing a new start would replace)."""
    names = sorted(p.name for p in out_dir.glob("checkpoint_*.pt")) if out_dir.is_dir() else []
    if not names:
        return None
    parts = []
    for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
        if name not in names:
            continue
        try:
            header = checkpoint_header(out_dir / name)
        except NmtError:
            parts.append(f"{name} unreadable")
            continue
        if name == "checkpoint_best.pt":
            metric = header.get("config", {}).get("best_metric", "loss")
            score = header.get(f"best_dev_{metric}")
            parts.append(f"best dev {metric} {'none' if score is None else f'{score:.3f}'} at epoch "
                         f"{header.get('epoch')}")
        else:
            within = f" and {header['batch_in_epoch']} batches" if header.get("batch_in_epoch") else ""
            parts.append(f"{header.get('epoch')} epochs{within} trained, update {header.get('step')}")
    return "; ".join(parts) or ", ".join(names)


def aside_dir(out_dir: Path) -> Path:
    """Where --overwrite keeps a stage's files: RUN_DIR/STAGE.previous-N, the first N not taken."""
    n = 1
    while out_dir.with_name(f"{out_dir.name}.previous-{n}").exists():
        n += 1
    return out_dir.with_name(f"{out_dir.name}.previous-{n}")


def set_aside(out_dir: Path) -> Path:
    """--overwrite: move the stage's files (all but its lock) to :func:`aside_dir`; nothing is deleted.
    Each move is a rename; a kill part-way leaves the rest for the next --overwrite."""
    aside = aside_dir(out_dir)
    aside.mkdir()
    for path in stage_files(out_dir):
        os.replace(path, aside / path.name)
    return aside


def continue_config(cfg: TrainConfig, given: Iterable[str], print_fn: Callable[[str], None] = print) -> TrainConfig:
    """train.py --resume: the settings that must match or may change (nmt.train.config.RESUME_RULE)
    and that the command line did not give are the checkpoint's, so ``--resume`` alone continues a run
    as it was started and planned (its --max-epochs too); those it gave are compared with the
    checkpoint's by :func:`check_resume`, and the machine's (device, threads, precision, progress)
    are this command's. Says which values came from the checkpoint."""
    if not cfg.resume:
        return cfg
    run_dir = default_run_dir(cfg)
    path = stage_dir(run_dir, cfg.stage) / "checkpoint_last.pt"
    if not path.is_file():
        return cfg                              # assemble_run: "nothing to resume"
    saved, given = checkpoint_header(path).get("config", {}), set(given)
    taken = {name: saved[name] for name, rule in RESUME_RULE.items()
             if rule in (MUST_MATCH, MAY_CHANGE) and name in saved and name not in given and name != "stage"}
    changed = [(name, getattr(cfg, name), value) for name, value in taken.items() if getattr(cfg, name) != value]
    if cfg.run_dir is None and any(name in ("data", "pair", "arch") for name, _, _ in changed):
        taken["run_dir"] = str(run_dir)         # where the checkpoint was found, whatever its data is called
    if changed:
        print_fn("--resume: the checkpoint's settings, not given here: " + ", ".join(
            f"--{name.replace('_', '-')} {show_setting(value)} (else {show_setting(default)})"
            for name, default, value in changed))
    return dataclasses.replace(cfg, **taken)


def check_resume(cfg: TrainConfig, path: Path, print_fn: Callable[[str], None]) -> None:
    """--resume continues the run the checkpoint ``path`` describes: a setting that must match and
    differs is a TrainingError listing each with both values; the others that differ are said in one
    line. Stage 1's BERT and the prepared data may come from another path (moved) when their sha256 is
    the one the checkpoint records. Nothing to check without the file (assemble_run says there is nothing
    to resume)."""
    if not path.is_file():
        return
    header = checkpoint_header(path)
    must, may = resume_differences(header.get("config", {}), cfg)
    moved = [d for d in must if (d[0] == "bert" and header.get("bert_reference") and cfg.bert is not None)
             or (d[0] == "data" and same_data(header.get("data_sha256"), cfg.data))]
    if moved:       # stage 1 names its BERT by sha256 (load_checkpoint checks it), every run its data: another
        must, may = [d for d in must if d not in moved], may + moved     # path is fine for the same files
    if must:
        raise TrainingError(f"{path}: --resume with settings that must stay as the run started: "
                            f"{describe_differences(must)}; drop those flags (the checkpoint's values apply), "
                            f"or start the stage over with --overwrite")
    if may:
        print_fn(f"--resume with changed settings: {describe_differences(may)}")


def same_data(recorded: str | None, data: str | None) -> bool:
    """Whether the data directory ``data`` holds the data a checkpoint recorded (``data_sha256``: its
    content sha256, nmt.data.binarized.data_content_sha256; in checkpoints of an earlier version the
    sha256 of meta.json; absent before that)."""
    if not recorded or data is None:
        return False
    try:
        content = data_content_sha256(read_meta(data))     # a DataError: no prepared data there
    except DataError:
        return False
    return recorded == content or recorded == file_sha256(Path(data) / "meta.json")


def init_checkpoint(cfg: TrainConfig, run_dir: Path) -> Path:
    """The checkpoint --stage finetune starts from: --init as a file, or as a run directory (its
    decoder/checkpoint_best.pt; with --reset-optimizer its best model, finetune/ first:
    best_checkpoint_path) or a stage directory (its checkpoint_best.pt); without --init, this
    run's decoder/checkpoint_best.pt. A TrainingError names each path looked for."""
    def only_last(best: Path) -> str:
        last = best.with_name("checkpoint_last.pt")
        return (f"; {last} exists: stage 1 has not finished an epoch yet (pass --init {last} to fine-tune from "
                f"it anyway)") if last.is_file() else ""
    if cfg.init is None:
        path = stage_dir(run_dir, "decoder") / "checkpoint_best.pt"
        if not path.is_file():
            raise TrainingError(f"{path}: no stage-1 checkpoint to fine-tune (looked for it there: no --init was "
                                f"given){only_last(path)}; train stage 1 first (train.py --stage decoder) or pass "
                                f"--init with a stage-1 checkpoint file or run directory")
        return path
    given = Path(cfg.init)
    if given.is_file():
        return given
    if not given.is_dir():
        raise TrainingError(f"--init {given}: no such file or directory; pass a stage-1 checkpoint file "
                            f"(RUN_DIR/decoder/checkpoint_best.pt) or its run directory")
    first = "finetune" if cfg.reset_optimizer and (stage_dir(given, "finetune") / "checkpoint_best.pt").is_file() \
        else "decoder"
    looked = [stage_dir(given, first) / "checkpoint_best.pt", given / "checkpoint_best.pt"]
    found = next((c for c in looked if c.is_file()), None)
    if found is None:
        raise TrainingError(f"--init {given}: a directory without a stage-1 best checkpoint (looked for "
                            f"{looked[0]} and {looked[1]}){only_last(looked[0])}; pass a stage-1 run directory or "
                            f"checkpoint file")
    return found


def open_data(cfg: TrainConfig, print_fn: Callable[[str], None]) -> tuple[Path, ParallelData, ParallelData]:
    """The prepared data directory (the demo is prepared once into checkpoints/data/), train and valid."""
    if cfg.data is None:                                # the demo corpus is prepared on first use
        directory = demo_data_dir(cfg.pair, cfg.arch)
        prepare_demo(directory, cfg.pair, bert=cfg.bert, bpe_merges=demo_bpe_merges(cfg.arch),
                     source_bpe=cfg.arch != "bert", reuse=True, print_fn=print_fn)
    else:
        directory = Path(cfg.data)
    splits = read_meta(directory).get("splits", {})
    if "valid" not in splits:
        raise TrainingError(f"{directory}: no dev set (split 'valid'; has {', '.join(sorted(splits)) or 'none'}); "
                            f"early stopping needs one: prepare the data with tools/prepare_data.py --valid-prefix")
    # verify: every file against its sha256 in meta.json and every id against its vocabulary, so a
    # damaged file is a clear error here instead of an IndexError or a silent change mid-training
    train, valid = ParallelData(directory, "train", verify=True), ParallelData(directory, "valid", verify=True)
    for data in (train, valid):
        if len(data) == 0:
            raise TrainingError(f"{directory}: the {data.split!r} split is empty (0 sentence pairs); check the "
                                f"input files given to tools/prepare_data.py")
    return directory, train, valid


def _load_bert_for(cfg: TrainConfig, source: SourcePipeline, data_dir: Path, print_fn) -> tuple:
    from nmt.weights.pretrained import bert_casing, ensure_default_bert, load_bert
    path = Path(cfg.bert) if cfg.bert else ensure_default_bert(print_fn=print_fn)
    casing = bert_casing(path)
    # a BERT that does not say how it cases its input takes the data's (decided when it was prepared)
    encoder, tokenizer = load_bert(path, lower_case=source.do_lower_case if casing.lower is None else None)
    if source.kind != "wordpiece" or list(tokenizer.vocab_tokens) != source.vocab_tokens:
        raise TrainingError(f"{data_dir}: the data's source side was not encoded with the WordPiece vocabulary of "
                            f"{path}; prepare the data with this BERT (tools/prepare_data.py --bert {path})")
    check_casing(casing, source.do_lower_case, path, data_dir, cfg.allow_casing_mismatch, print_fn)
    return encoder, path


def check_casing(casing, data_lower: bool, bert_path: Path, data_dir: Path, allow: bool, print_fn) -> None:
    """The data's lower-casing (its source.json) must be the BERT's: an uncased BERT reading cased text
    (or the reverse) sees many unknown or rare word pieces. A TrainingError naming both, unless
    ``allow`` (--allow-casing-mismatch); nothing to compare when the BERT does not say."""
    data_says = f"{'lower-cased' if data_lower else 'case-kept'} (do_lower_case {str(data_lower).lower()} in " \
                f"{data_dir / 'source.json'})"
    if casing.lower is None:
        print_fn(f"encoder casing: {bert_path} {casing.describe()}; using the data's: {data_says}")
        return
    if casing.lower == data_lower:
        return
    message = (f"{data_dir}: the source side was prepared {data_says}, but the BERT {bert_path} "
               f"{casing.describe()}; prepare the data again with this BERT (tools/prepare_data.py --bert "
               f"{bert_path}), or pass --allow-casing-mismatch to train on it anyway")
    if not allow:
        raise TrainingError(message)
    print_fn(f"warning: {message}")


def build_new_model(cfg: TrainConfig, source: SourcePipeline, target: TargetPipeline, data_dir: Path,
                    print_fn) -> tuple[Seq2Seq, ModelSpec]:
    """Stage decoder/direct: BERT weights + a fresh decoder; stage scratch: a fresh baseline."""
    if cfg.arch == "bert":
        encoder, path = _load_bert_for(cfg, source, data_dir, print_fn)
        bert_config = encoder.config.to_dict()
        if cfg.encoder_dropout is not None:
            bert_config["hidden_dropout_prob"] = cfg.encoder_dropout
        spec = ModelSpec.bert(bert_config, tgt_vocab_size=len(target.vocab), src_pad_id=source.pad_id,
                              dropout=cfg.dropout, num_layers=cfg.decoder_layers)
        model = build_model(spec)
        weights = {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}
        model.encoder.load_state_dict(weights, strict=True)
        print_fn(f"encoder: BERT from {path}")
    else:
        spec = ModelSpec.transformer(cfg.arch, src_vocab_size=len(source.vocab_tokens),
                                     tgt_vocab_size=len(target.vocab), src_pad_id=source.pad_id, dropout=cfg.dropout)
        model = build_model(spec)
    return model, spec


def encoder_dropout(cfg: TrainConfig) -> float | None:
    """--encoder-dropout replaces the dropout a stage-1 checkpoint's BERT was built with when fine-tuning."""
    return cfg.encoder_dropout if cfg.stage == "finetune" else None


def assemble_run(cfg: TrainConfig, print_fn: Callable[[str], None] = print) -> Run:
    """The data, the model for the stage (BERT + a new decoder, the stage-1 best, or the state to
    resume) and where the stage writes."""
    run_dir = default_run_dir(cfg)
    out_dir = stage_dir(run_dir, cfg.stage)
    data_dir, train, valid = open_data(cfg, print_fn)
    source = SourcePipeline.from_dict(train.source_config, what=str(data_dir / "source.json"))
    target = TargetPipeline.from_dict(train.target_config, what=str(data_dir / "target.json"))
    torch.manual_seed(cfg.seed)
    resume_state = None
    if cfg.resume:
        path = out_dir / "checkpoint_last.pt"
        if not path.is_file():
            raise TrainingError(f"{path}: nothing to resume (no checkpoint_last.pt for stage {cfg.stage!r}); "
                                f"drop --resume to start this stage")
        resume_state = load_checkpoint(path, required=REQUIRED_FOR_RESUME, bert=cfg.bert)
        if resume_state["stage"] != cfg.stage:
            raise TrainingError(f"{path}: a {resume_state['stage']!r} checkpoint, but --stage is {cfg.stage!r}")
        check_vocabularies(resume_state, source, target, path, data_dir)
        model, spec = model_from_checkpoint(resume_state, path, encoder_dropout(cfg))
        print_fn(f"resuming from {path} (step {resume_state['step']}, epoch {resume_state['epoch'] + 1}, "
                 f"batch {resume_state['batch_in_epoch']})")
    elif cfg.stage == "finetune":
        path = init_checkpoint(cfg, run_dir)
        init = load_checkpoint(path, bert=cfg.bert)       # a stage-1 checkpoint gets its BERT back
        check_vocabularies(init, source, target, path, data_dir)
        model, spec = model_from_checkpoint(init, path, encoder_dropout(cfg))
        if spec.arch != "bert":
            raise TrainingError(f"{path}: a {spec.arch} model; --stage finetune needs a BERT stage-1 checkpoint")
        print_fn(f"fine-tuning from {path}" + (f" (its {init.get('stage', '?')} model; fresh optimizer, schedule "
                                                f"and best score: --reset-optimizer)" if cfg.reset_optimizer else ""))
    else:
        model, spec = build_new_model(cfg, source, target, data_dir, print_fn)
    return Run(model, spec, source, target, train, valid, out_dir, resume_state)
