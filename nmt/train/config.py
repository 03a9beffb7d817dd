"""Training configuration: one dataclass, a comment per field; the CLI flags are made from it.

Defaults are the paper's Table 2 (Imamura & Sumita 2019): batches of ~500 sentences, Adam with
betas (0.9, 0.99), peak LR 4e-4 (8e-5 for fine-tuning), linear warm-up for 5 epochs then inverse
square-root decay, label smoothing 0.1, dropout 0.15. Each field is declared with its ``--help`` text
(:func:`flag`: the dataclass field's metadata), so there is one place to document a field:

>>> args = build_parser().parse_args(["--data", "d", "--stage", "finetune", "--max-epochs", "3"])
>>> cfg, _ = compose_config(given_options(args))
>>> cfg.stage, cfg.max_epochs, cfg.peak_lr(), cfg.adam_betas
('finetune', 3, 8e-05, (0.9, 0.99))
>>> FIELD_HELP["label_smoothing"]
'label smoothing epsilon (paper: 0.1; fairseq formulation, eps / (V - 1) per wrong class)'

With no data arguments train.py trains on the embedded demo corpus; the demo's own settings are
the explicit :data:`DEMO_PRESET`, applied over the defaults for every field the user did not set
(:func:`compose_config`, the one place options are layered).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from nmt.decode.lenpen_choice import parse_grid
from nmt.errors import ConfigError
from nmt.files import DEMO_PAIRS, data_dir, demo_name, training_run_dir
from nmt.model.seq2seq import ARCHS, STAGES
from nmt.train.schedule import PAPER_WARMUP_REFERENCE
from nmt.weights.checkpoint import SNAPSHOT_DTYPES


# Whether a setting may differ when a run is continued (--resume), declared with each field: what
# the model is, what it learns from and how (architecture, data, batching, LR and schedule, seed,
# dropout) must stay as the run started, or the checkpoint would no longer describe its model;
# when it stops and what it keeps or reports (MAY_CHANGE) may be changed by a flag and are otherwise
# the run's, so `--resume` alone continues the run as planned; the machine it runs on (THIS_COMMAND:
# device, threads, precision, progress) is always the resuming command's. --resume and --overwrite
# are the actions themselves. nmt/train/assemble.py compares (resume_differences below).
MUST_MATCH, MAY_CHANGE, THIS_COMMAND, NOT_COMPARED = "must match", "may change", "this command's", "not compared"


def flag(default, help: str, resume: str):
    """A TrainConfig field: its default, its ``--help`` text and its rule on --resume (MUST_MATCH,
    MAY_CHANGE, THIS_COMMAND or NOT_COMPARED)."""
    assert resume in (MUST_MATCH, MAY_CHANGE, THIS_COMMAND, NOT_COMPARED), resume
    return field(default=default, metadata={"help": help, "resume": resume})


@dataclass
class TrainConfig:
    # ---- what to train
    stage: str = flag("decoder", "decoder (stage 1: frozen BERT) | finetune (stage 2) | direct (BERT + new decoder "
                                 "end to end) | scratch (Transformer baselines)", MUST_MATCH)
    arch: str = flag("bert", "bert | transformer-base | transformer-bert-size | transformer-minilm-size | "
                             "transformer-small (the baselines train with --stage scratch)", MUST_MATCH)
    data: str | None = flag(None, "prepared data directory (tools/prepare_data.py); none: the embedded demo corpus",
                            MUST_MATCH)
    pair: str = flag("en-de", "demo direction when --data is not given: en-de or en-vi", MUST_MATCH)
    bert: str | None = flag(None, "BERT model (native .pt, TF or HF dir); none: the installed all-MiniLM-L6-v2",
                            MUST_MATCH)
    allow_casing_mismatch: bool = flag(False, "train although the data was prepared with another lower-casing than "
                                              "the BERT's (source.json vs the BERT's tokenizer_config.json, Google's "
                                              "directory name or what its .pt records)", THIS_COMMAND)
    init: str | None = flag(None, "finetune: the stage-1 checkpoint, a file or a run directory (its "
                                  "decoder/checkpoint_best.pt); none: RUN_DIR/decoder/checkpoint_best.pt", MUST_MATCH)
    # A field, not only what --init does: every --init already starts a fresh optimizer, schedule and
    # best score (a checkpoint's weights are all it takes); this flag says the start is another trained
    # model continued on new data, so --init RUN_DIR means that run's best model, any stage (fairseq's
    # --reset-optimizer, JoeyNMT's reset_*); MUST_MATCH like --init: it decides what the stage starts from.
    reset_optimizer: bool = flag(False, "finetune: continue any trained model (stage 1 or 2) on new data prepared with "
                                        "tools/prepare_data.py --pipelines-from it: --init RUN_DIR means its best "
                                        "model (finetune/ if present, else decoder/); the optimizer, LR schedule and "
                                        "best dev score start fresh, as with every --init", MUST_MATCH)
    run_dir: str | None = flag(None, "run directory; none: checkpoints/demo-PAIR or checkpoints/DATA_NAME (+ -ARCH "
                                     "for baselines)", THIS_COMMAND)
    resume: bool = flag(False, "continue from RUN_DIR/STAGE/checkpoint_last.pt (model, optimizer, schedule, RNG, "
                               "data position); the settings of the model, data, batching and schedule stay the "
                               "checkpoint's (a flag that changes one is refused), stopping and device flags apply",
                        NOT_COMPARED)
    overwrite: bool = flag(False, "start the stage over although RUN_DIR/STAGE holds a run; its files are kept in "
                                  "RUN_DIR/STAGE.previous-N/, nothing is deleted", NOT_COMPARED)
    epoch_checkpoints: str | None = flag(None, 'also keep checkpoint_epochN.pt after these epochs, e.g. "1,3" '
                                               "(fine-tuning after N epochs of stage 1, the paper's Table 4)",
                                         MAY_CHANGE)
    save_interval_updates: int = flag(0, "also save checkpoint_last.pt every N updates inside an epoch (fairseq's "
                                         "--save-interval-updates), so a kill no process can catch (SIGKILL, the "
                                         "out-of-memory killer, a lost node) costs at most N updates, not the epoch; "
                                         "0: only at the end of an epoch and on a stop signal", MAY_CHANGE)
    keep_last_epochs: int = flag(0, "keep checkpoint_epochN.pt of the last N epochs (older ones are removed unless "
                                    "--epoch-checkpoints lists them), e.g. for tools/average_checkpoints.py; 0: none",
                                 MAY_CHANGE)
    snapshot_dtype: str = flag("float32", "dtype of the weights in checkpoint_best.pt and checkpoint_epochN.pt: "
                                          "float32 | float16 | bfloat16 (half the bytes, weights rounded to 11 or 8 "
                                          "significant bits; read back as float32); checkpoint_last.pt stays float32",
                               MAY_CHANGE)
    best_metric: str = flag("loss", "the dev score that picks checkpoint_best.pt and drives early stopping: loss "
                                    "(dev loss, lower is better) | bleu (greedy dev BLEU, higher; needs --dev-bleu)",
                            MUST_MATCH)
    # ---- optimisation (paper, Table 2)
    lr: float | None = flag(None, "peak learning rate; none: --train-lr (--finetune-lr for stage finetune)", MUST_MATCH)
    train_lr: float = flag(4e-4, "peak LR of stages decoder, direct and scratch when --lr is not given (paper: 4e-4)",
                           MUST_MATCH)
    finetune_lr: float = flag(8e-5, "peak LR of stage finetune when --lr is not given (paper: 8e-5)", MUST_MATCH)
    warmup_epochs: float | None = flag(None, "linear warm-up in epochs; none: --warmup-reference scaled by LR/4e-4",
                                       MUST_MATCH)
    warmup_reference: float = flag(PAPER_WARMUP_REFERENCE, "warm-up epochs at LR 4e-4 that other LRs scale from "
                                                           "(paper: 5, so finetune at 8e-5 gets 1)", MUST_MATCH)
    warmup_steps: int | None = flag(None, "linear warm-up in updates (overrides --warmup-epochs)", MUST_MATCH)
    adam_beta1: float = flag(0.9, "Adam beta1", MUST_MATCH)
    adam_beta2: float = flag(0.99, "Adam beta2 (paper: 0.99)", MUST_MATCH)
    adam_eps: float = flag(1e-8, "Adam epsilon", MUST_MATCH)
    weight_decay: float = flag(0.0, "Adam weight decay (L2; the paper uses none)", MUST_MATCH)
    clip_norm: float = flag(0.0, "clip the gradient norm to this (0: off, fairseq's default)", MUST_MATCH)
    label_smoothing: float = flag(0.1, "label smoothing epsilon (paper: 0.1; fairseq formulation, eps / (V - 1) per "
                                       "wrong class)", MUST_MATCH)
    dropout: float = flag(0.15, "decoder (and baseline encoder) dropout (paper: 0.15)", MUST_MATCH)
    encoder_dropout: float | None = flag(None, "BERT hidden dropout in finetune/direct; none: BERT's own (0.1)",
                                         MUST_MATCH)
    decoder_layers: int = flag(6, "decoder layers (paper: 6); width and heads follow the encoder", MUST_MATCH)
    # ---- batches and stopping
    max_sentences: int = flag(500, "sentences per batch (paper: ~500), length-bucketed: on average with --batching "
                                   "tokens, exactly with sentences", MUST_MATCH)
    batching: str = flag("tokens", "tokens: every batch holds about max_sentences x the mean padded length in "
                                   "tokens, so every update sees the same number of target tokens (fairseq's "
                                   "--max-tokens) | sentences: exactly max_sentences per batch (then a token of a "
                                   "short segment weighs more: the loss is a per-batch token mean)", MUST_MATCH)
    max_tokens: int | None = flag(None, "also cap padded tokens per batch (B x longest side); none: no cap", MUST_MATCH)
    update_freq: int = flag(1, "accumulate the gradients of N batches into each update (fairseq's --update-freq): "
                               "N times the batch per update in the memory of one; warm-up and schedule count "
                               "updates", MUST_MATCH)
    max_epochs: int = flag(100, "stop after this many epochs", MAY_CHANGE)
    patience: int = flag(3, "stop when the dev loss has not improved for this many epochs", MAY_CHANGE)
    dev_bleu: bool = flag(False, "after each epoch also translate the dev set (greedy search) and log its BLEU",
                          MAY_CHANGE)
    lenpen_grid: str = flag("", "after the stage, translate the dev set (beam 10) with each of these length "
                                "penalties, e.g. 1.0,1.2,1.5,2.0, and store the best by BLEU in checkpoint_best.pt "
                                "as translate.py's default (nmt/decode/lenpen_choice.py); empty: off (1.0)",
                            MAY_CHANGE)
    max_steps: int | None = flag(None, "stop after this many updates in total (tests, benchmarks)", THIS_COMMAND)
    max_cpu_minutes: float | None = flag(None, "stop after the epoch in which this stage's process CPU time (encoder "
                                               "cache, updates, dev loss) reaches this; compute-matched baselines",
                                         MAY_CHANGE)
    seed: int = flag(1, "seed for initialisation, dropout and batch shuffling", MUST_MATCH)
    # ---- speed
    encoder_cache: str = flag("auto", "decoder stage: cache encoder outputs: auto | memory | disk | off", THIS_COMMAND)
    cache_dtype: str = flag("float16", "encoder cache precision: float16 (half the memory) | float32 (exact)",
                            THIS_COMMAND)
    cache_max_gb: float = flag(4.0, "auto: largest in-memory cache (GB); larger ones go to disk in the run directory",
                               THIS_COMMAND)
    device: str = flag("auto", "cpu | cuda | cuda:N | auto (cuda when available)", THIS_COMMAND)
    amp: str = flag("off", "autocast dtype: off | bfloat16 (CUDA, or CPUs with bf16 instructions) | float16 (CUDA) "
                           "| auto (bfloat16 on a CPU with bf16 instructions, else off; the demo preset's)", THIS_COMMAND)
    threads: int = flag(0, "torch CPU threads (0: torch's default)", THIS_COMMAND)
    dist_timeout_minutes: float = flag(5.0, "torchrun: how long a training collective waits for a rank that is "
                                            "stopped, hung or far slower before the job fails with one error line "
                                            "(rank 0's own work, e.g. the length-penalty choice, may take longer)",
                                       THIS_COMMAND)
    progress: bool = flag(True, "show a tqdm bar per epoch", THIS_COMMAND)

    def peak_lr(self) -> float:
        """--lr, else the stage's: --finetune-lr (paper: 8e-5) for fine-tuning, --train-lr (4e-4) otherwise."""
        if self.lr is not None:
            return self.lr
        return self.finetune_lr if self.stage == "finetune" else self.train_lr

    @property
    def adam_betas(self) -> tuple[float, float]:
        return (self.adam_beta1, self.adam_beta2)

    def validate(self) -> "TrainConfig":
        """Raise ConfigError for an unknown stage/arch or an impossible combination."""
        if self.stage not in STAGES:
            raise ConfigError(f"unknown --stage {self.stage!r}; expected one of {', '.join(STAGES)}")
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown --arch {self.arch!r}; expected one of {', '.join(ARCHS)}")
        if (self.arch == "bert") == (self.stage == "scratch"):
            raise ConfigError(f"--stage {self.stage} does not go with --arch {self.arch}: BERT trains with "
                              f"--stage decoder/finetune/direct, the Transformer baselines with --stage scratch")
        if self.data is None and self.pair not in DEMO_PAIRS:
            raise ConfigError(f"unknown demo --pair {self.pair!r}; expected one of {', '.join(DEMO_PAIRS)}")
        if self.batching not in ("tokens", "sentences"):
            raise ConfigError(f"unknown --batching {self.batching!r}; expected tokens or sentences")
        if self.encoder_cache not in ("auto", "memory", "disk", "off"):
            raise ConfigError(f"unknown --encoder-cache {self.encoder_cache!r}; expected auto, memory, disk or off")
        if self.cache_dtype not in ("float16", "float32"):
            raise ConfigError(f"unknown --cache-dtype {self.cache_dtype!r}; expected float16 or float32")
        if self.snapshot_dtype not in SNAPSHOT_DTYPES:
            raise ConfigError(f"unknown --snapshot-dtype {self.snapshot_dtype!r}; expected "
                              f"{', '.join(SNAPSHOT_DTYPES)}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues the stage and --overwrite starts it over: give one of them")
        if self.amp not in ("off", "bfloat16", "float16", "auto"):
            raise ConfigError(f"unknown --amp {self.amp!r}; expected off, bfloat16, float16 or auto")
        positive = {"max_sentences": self.max_sentences, "max_epochs": self.max_epochs, "patience": self.patience,
                    "decoder_layers": self.decoder_layers, "update_freq": self.update_freq}
        if self.keep_last_epochs < 0:
            raise ConfigError(f"--keep-last-epochs must be >= 0, got {self.keep_last_epochs}")
        if self.save_interval_updates < 0:
            raise ConfigError(f"--save-interval-updates must be >= 0 (0: off), got {self.save_interval_updates}")
        if self.reset_optimizer and self.stage != "finetune":
            raise ConfigError(f"--reset-optimizer goes with --stage finetune --init MODEL, not --stage {self.stage}")
        if self.best_metric not in ("loss", "bleu"):
            raise ConfigError(f"unknown --best-metric {self.best_metric!r}; expected loss or bleu")
        if self.best_metric == "bleu" and not self.dev_bleu:
            raise ConfigError("--best-metric bleu needs --dev-bleu (the dev BLEU it compares)")
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        for f in fields(self):          # a NaN or an infinity makes no sense in any float setting
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        if self.max_cpu_minutes is not None and not self.max_cpu_minutes > 0:
            raise ConfigError(f"--max-cpu-minutes must be positive, got {self.max_cpu_minutes}")
        for name in ("max_tokens", "max_steps", "warmup_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if (self.warmup_epochs is not None and self.warmup_epochs < 0) or not self.warmup_reference > 0:
            raise ConfigError("--warmup-epochs must be >= 0 and --warmup-reference > 0")
        for name in ("lr", "train_lr", "finetune_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
        for name in ("label_smoothing", "dropout", "encoder_dropout", "adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
        for name in ("clip_norm", "weight_decay", "cache_max_gb"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not self.adam_eps > 0:
            raise ConfigError(f"--adam-eps must be positive, got {self.adam_eps}")
        self.kept_epochs()
        try:
            grid = parse_grid(self.lenpen_grid)
        except ValueError as e:
            raise ConfigError(f"--lenpen-grid: {e}") from None
        if any(not 0 <= x <= 5 for x in grid):
            raise ConfigError(f"--lenpen-grid {self.lenpen_grid!r}: length penalties must be in [0, 5]")
        return self

    def kept_epochs(self) -> set[int]:
        """The epochs listed in --epoch-checkpoints ("1,3" -> {1, 3})."""
        text = (self.epoch_checkpoints or "").replace(" ", "")
        try:
            epochs = {int(x) for x in text.split(",") if x}
        except ValueError:
            epochs = {0}
        if any(e < 1 for e in epochs):
            raise ConfigError(f"--epoch-checkpoints {self.epoch_checkpoints!r}: expected epoch numbers >= 1 "
                              f"separated by commas, e.g. 1,3")
        return epochs

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Rebuild from a checkpoint's "config"; keys of other versions are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# The embedded demo's settings (train.py with no --data): the best model 2 CPU cores can train in
# about the time README command 1 takes, per stage; printed at start. Why each value: docs/demo.md ("Why
# the demo preset is what it is"). Data preparation settings for the demo live here too.
DEMO_PRESET: dict = {
    "max_sentences": 64,       # small corpus: more, smaller updates per epoch (~64 sentences on average)
    "train_lr": 1e-3,          # stage 1 learns faster per update than at the paper's 4e-4 in a short run
    "finetune_lr": 4e-4,       # chosen on the dev sets among 8e-5 / 4e-4 / 2e-5 by dev BLEU ("Chosen on the dev
                               # set" in docs/results-demo-en-vi.md, docs/results-demo-en-de.md): 1-2 epochs at 8e-5
                               # barely move BERT; the paper's divergence at 4e-4 came with 100K+ pairs and more epochs
    "warmup_reference": 0.4,   # warm-up 1 epoch at 1e-3 (0.08 for fine-tuning at 8e-5); 5 would be most of a short run
    "patience": 2,
    "decoder_layers": 3,       # a lighter decoder trains faster on CPU
    "dev_bleu": True,          # greedy dev BLEU after every epoch (cheap next to an epoch's training)
    "lenpen_grid": "1.0,1.2,1.5,2.0",  # after each stage: translate.py's default length penalty, by dev BLEU
                               # (short runs end sentences early at 1.0: docs/demo.md)
    "amp": "auto",             # bf16 autocast on CPUs with bf16 instructions (AVX512-BF16, AMX), fp32 elsewhere:
                               # 1.3x less CPU time a stage, dev BLEU -0.15 to +0.37 against fp32 (docs/speed.md)
}
# epochs per stage. En->De stage 1 (README command 1): as many as fit that command's time budget on 2 CPU
# cores, since dev BLEU was still rising; En->Vi, a smaller corpus: about the updates of an earlier
# 3-epoch En->De stage 1 (docs/demo.md)
DEMO_EPOCHS: dict = {"en-de": {"decoder": 6, "finetune": 1}, "en-vi": {"decoder": 6, "finetune": 2}}


def demo_preset(pair: str, stage: str = "decoder") -> dict:
    """DEMO_PRESET with the pair's epoch cap for the stage (direct runs as long as fine-tuning)."""
    epochs = DEMO_EPOCHS.get(pair, DEMO_EPOCHS["en-de"])
    return {**DEMO_PRESET, "max_epochs": epochs.get(stage, epochs["finetune"])}


# train.py --quick: the whole stage-1 pipeline (preparation, training, the length-penalty choice) on a
# slice of the demo corpus in about two minutes on 2 CPU cores, to see every step run; not a useful model
QUICK_PAIRS: dict = {"train": 3000, "dev": 200, "test": 200}   # the first lines of each demo split
QUICK_BPE_MERGES = 1000        # a small target vocabulary for 3,000 sentences
QUICK_PRESET: dict = {         # over the demo preset
    "decoder_layers": 1,       # the smallest decoder: the point is the pipeline, not the model
    "max_epochs": 2,
    "warmup_epochs": 0.5,      # 2 epochs of ~47 updates: warm up over the first half epoch
    "lenpen_grid": "1.0,1.5",  # the dev-set choice of translate.py's length penalty, on two values
}


DEMO_BPE_MERGES = 8000         # target BPE merges for the demo corpus (the paper's 16K is for 100K+ pairs)

# The Transformer baseline for small corpora (--arch transformer-small; the demo's baseline): the
# low-resource recipe of Sennrich & Zhang (2019) and Araabi & Monz (2020) -- a narrow, shallow model
# (nmt/model/transformer_encoder.py), strong dropout, a smaller BPE vocabulary, many epochs -- where
# transformer-base (51M parameters) barely starts to learn in the same time. Applied under the
# flags the user gives, like the demo preset.
LOW_RESOURCE_BASELINE: dict = {
    "dropout": 0.3,            # Sennrich & Zhang: aggressive dropout is the largest single gain on small data
    "lr": 1e-3,                # a small post-norm model tolerates (and needs, for short runs) a larger LR
    "warmup_epochs": 1.0,
    "max_epochs": 100,         # many cheap epochs; bounded by early stopping or --max-cpu-minutes
    "patience": 10,            # a from-scratch model's dev loss plateaus for a few epochs before it reads the
                               # source, and the demo's patience 2 stopped such a run too early (docs/demo.md)
}
LOW_RESOURCE_BPE_MERGES = 4000  # the baseline's source and target BPE merges on the demo corpus


# The demo's control, the demo BERT's shape trained from scratch (--arch transformer-minilm-size): the
# same low-resource recipe at fairseq's IWSLT LR for a 6+6-layer post-norm model, 5e-4, with a
# 4-epoch warm-up (~880 updates). A deep post-norm model needs the long warm-up: with the baseline's
# 1 epoch (221 updates) the En-Vi control never left the unigram plateau and diverged at 5e-4, and
# crawled at 2.5e-4 (dev PPL 360 after 4 epochs, where transformer-small had 53; docs/notes/results-demo-en-vi-history.md).
LOW_RESOURCE_CONTROL: dict = {**LOW_RESOURCE_BASELINE, "lr": 5e-4, "warmup_epochs": 4.0}


def arch_preset(arch: str) -> dict:
    """Training settings that belong to a baseline architecture (empty for the others)."""
    return dict({"transformer-small": LOW_RESOURCE_BASELINE, "transformer-minilm-size": LOW_RESOURCE_CONTROL}.get(arch, {}))


def demo_bpe_merges(arch: str = "bert") -> int:
    return LOW_RESOURCE_BPE_MERGES if arch == "transformer-small" else DEMO_BPE_MERGES


FIELD_HELP = {f.name: f.metadata["help"] for f in fields(TrainConfig)}     # field name -> its --help text
RESUME_RULE = {f.name: f.metadata["resume"] for f in fields(TrainConfig)}  # field name -> MUST_MATCH, MAY_CHANGE, ...
PATH_FIELDS = ("data", "bert", "init")          # compared as the files they name


def resume_differences(saved: dict, cfg: TrainConfig) -> tuple[list[tuple], list[tuple]]:
    """The settings in which ``cfg`` differs from a checkpoint's ``saved`` config, by their rule
    (:data:`RESUME_RULE`): (must match, may change), each a list of (field, saved value, cfg value).
    Compared as the run uses them: ``cfg`` as resolved at start (--amp auto is the dtype it chose),
    paths as the files they name, the demo --pair only without --data; a key the checkpoint lacks
    (written by an older version) is not compared.

    >>> saved = dataclasses.replace(TrainConfig(), data="d", decoder_layers=1, max_epochs=10).to_dict()
    >>> resume_differences(saved, dataclasses.replace(TrainConfig(), data="./d", decoder_layers=3, max_epochs=20))
    ([('decoder_layers', 1, 3)], [('max_epochs', 10, 20)])
    """
    def view(name: str, value):
        if name in PATH_FIELDS and value is not None:
            return str(Path(value).expanduser().resolve())
        return value
    must, may = [], []
    for name, rule in RESUME_RULE.items():
        if rule == NOT_COMPARED or name not in saved or (name == "pair" and (saved.get("data") or cfg.data)):
            continue
        old, new = saved[name], getattr(cfg, name)
        if view(name, old) != view(name, new):
            (must if rule == MUST_MATCH else may).append((name, old, new))
    return must, may


def describe_differences(differences: list[tuple]) -> str:
    """Each difference as its flag with both values.

    >>> describe_differences([("decoder_layers", 1, 3), ("lr", None, 5e-3), ("batching", "tokens", "sentences")])
    '--decoder-layers: checkpoint 1, this command 3; --lr: checkpoint none, this command 0.005; --batching: \
checkpoint tokens, this command sentences'
    """
    return "; ".join(f"--{name.replace('_', '-')}: checkpoint {show_setting(old)}, this command {show_setting(new)}"
                     for name, old, new in differences)


def show_setting(value) -> str:
    """A setting as it is written on the command line: none, true, 0.005, tokens."""
    if value is None or isinstance(value, bool):
        return "none" if value is None else str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_optional(kind):
    """An argparse type for an optional value: "none" or "" is None, anything else ``kind(text)``."""
    def parse(text: str):
        return None if text.lower() in ("none", "") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    """argparse flags generated from TrainConfig; every default is None so that the flags the user
    actually gave can be told apart (the demo preset only fills the others)."""
    p = argparse.ArgumentParser(description="Train a BERT-encoder NMT model (Imamura & Sumita 2019) or a baseline.")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = FIELD_HELP.get(f.name, "") + (f" (default: {default})" if default is not None else "")
        help_text = help_text.replace("%", "%%")
        if f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        kind = {"int": int, "float": float, "str": str}[str(f.type).split(" ")[0]]
        p.add_argument(flag, dest=f.name, type=parse_optional(kind) if "None" in str(f.type) else kind,
                       default=None, metavar=f.name.upper(), help=help_text)
    return p


def given_options(args: argparse.Namespace) -> dict:
    """The options the user set on the command line."""
    return {k: v for k, v in vars(args).items() if v is not None}


def presets(demo: bool, pair: str | None, stage: str, arch: str) -> dict:
    """The settings between TrainConfig's defaults and the user's: the demo preset for the pair and
    stage (only without --data), then the architecture's recipe (the baselines')."""
    return {**(demo_preset(pair or "en-de", stage) if demo else {}), **arch_preset(arch)}


def compose_config(given: dict, demo: bool | None = None) -> tuple[TrainConfig, dict]:
    """defaults < :func:`presets` < ``given`` (the values the user, or a study, set): the one place the
    precedence of options is decided, for train.py and tools/run_experiments.py alike. ``demo``: the
    run is on the embedded demo (default: no ``data`` given). Returns the config (not validated yet)
    and the preset it applied. A baseline ``arch`` without ``stage`` trains with stage "scratch".

    >>> cfg, preset = compose_config({"arch": "transformer-small", "patience": 4})
    >>> cfg.stage, cfg.dropout, cfg.patience, preset["patience"]      # recipe over demo, flag over both
    ('scratch', 0.3, 4, 10)
    """
    arch = given.get("arch", "bert")
    stage = implied_stage(given.get("stage"), arch)
    preset = presets(given.get("data") is None if demo is None else demo, given.get("pair"), stage, arch)
    return dataclasses.replace(TrainConfig(), **{**preset, **given, "stage": stage}), preset


def implied_stage(stage: str | None, arch: str) -> str:
    """--stage as given, else "decoder" for BERT and "scratch" for the baselines.

    >>> implied_stage(None, "transformer-small"), implied_stage(None, "bert"), implied_stage("finetune", "bert")
    ('scratch', 'decoder', 'finetune')
    """
    return stage or ("decoder" if arch == "bert" else "scratch")


def default_run_dir(cfg: TrainConfig) -> Path:
    """checkpoints/demo-en-de, checkpoints/iwslt15-en-vi, checkpoints/demo-en-de-transformer-base, ...
    (nmt/files.py: ``training_run_dir``, where run paths are built)."""
    return training_run_dir(cfg.data, cfg.pair, cfg.arch, given=cfg.run_dir)


def demo_data_dir(pair: str, arch: str = "bert") -> Path:
    """Cache of the prepared demo corpus (prepared once by nmt.data.prepare.prepare_demo):
    demo-en-de (BERT), demo-en-de-source-bpe (transformer-base), demo-en-de-source-bpe4000 (small)."""
    name = demo_name(pair)
    if arch != "bert":
        merges = demo_bpe_merges(arch)
        name += "-source-bpe" + ("" if merges == DEMO_BPE_MERGES else str(merges))
    return data_dir(name)
