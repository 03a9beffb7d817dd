#!/usr/bin/env python
"""Run the paper's systems on one data set and write its result tables (Imamura & Sumita 2019).

    python tools/run_experiments.py --pair en-de                       # the embedded demo, En->De
    python tools/run_experiments.py --data checkpoints/data/iwslt15-en-vi \\
        --bert checkpoints/pretrained/uncased_L-12_H-768_A-12 --out checkpoints/experiments/iwslt15-en-vi

Systems (Tables 3 and 5 of the paper), each trained in its own run directory ``OUT/NAME``:

- ``transformer``: a Transformer baseline trained from scratch (``--baseline-arch``) on the same
  data with a source-side BPE instead of BERT's WordPiece (``--baseline-data``; by default the tool
  prepares it once, from the same text files as ``--data``, into ``OUT/data-source-bpe``);
- ``control``: the paper's "Transformer BERT size", the same network without pre-training: an
  encoder of the BERT's shape (``--control-arch``) trained from scratch with the same decoder, on
  the baseline's source BPE (like the paper's baselines; a fresh 30K-row WordPiece table would
  leave most rows rare on a small corpus) and with the baseline's budget;
- ``transformer-converged``, ``control-converged`` (when the baseline's budget is ``matched``): the
  same two trained until the dev loss stops improving (the recipe's patience, no CPU cap; results.md
  marks a run that reached ``--max-epochs`` first, default 100, with "epoch cap"). A
  converged run is its matched twin's run without the cap (same config, seed and schedule; the cap
  is checked between epochs), so when the twin has finished it continues from the twin's last
  checkpoint instead of repeating those epochs (its CPU minutes include the twin's); they train
  after the twins for that;
- ``direct``: BERT + a new decoder trained end to end from the start (``--stage direct``);
- ``decoder``: stage 1, BERT frozen, decoder trained (``--stage decoder``);
- ``finetune-lrX``: stage 2 from the stage-1 best checkpoint, one run per ``--finetune-lrs``
  (the paper's best 8e-5 first); all start from the same stage-1 run;
- Table 4, ``after-N``: fine-tuning at the first fine-tuning LR after N epochs of stage 1. The
  stage-1 run keeps ``checkpoint_epochN.pt`` for those N (``--epoch-checkpoints``), so one stage-1
  run serves them all; N = 0 (no decoder training: a random decoder) is ``--stage direct`` at the
  fine-tuning LR; "until convergence" is the ``finetune`` row at that LR.

Every system is evaluated with its best checkpoint (chosen by dev loss only; test sets are never
used for a choice): dev perplexity (nmt.train.evaluation.checkpoint_perplexity), beam search of every test
split (and the dev set) from the original text files named in the data directory's meta.json, BLEU
(sacrebleu 13a on the output as translate.py writes it, and tokenize "none": the paper-era
tokenized BLEU on pre-tokenized references such as the Stanford IWSLT files) and chrF. The tables
mark each BLEU (both columns) against the Transformer baseline, (+)/(−) at p < 0.05, by the test
``--significance`` names (nmt.metrics.SIGNIFICANCE_TESTS; default ``ar``, approximate
randomization with 10,000 trials: the paper's MultEval test), computed from the stored hypotheses
each time the tables are written, and the caption names the test; once ``transformer-converged``
has finished, a last table repeats the test against it (the paper's baselines are trained to
convergence).

Resumable: per-system results go to ``OUT/NAME/result.json``; a rerun with the same ``--out`` skips
finished systems and continues unfinished training from its ``checkpoint_last.pt``. The tables go
to ``OUT/results.md`` and stdout (a run without a result yet shows as "unfinished", with its
best dev PPL, epochs and CPU minutes so far). Bad input: ``error: ...`` and exit status 2; Ctrl-C
saves the current run (SIGTERM and SIGHUP too: exit status 128 + the signal, 130 for Ctrl-C; run the
same command again to continue). ``--tables-only`` rewrites results.md from what ``--out`` holds
(result.json and SPLIT.hyp files) and trains and decodes nothing: e.g. the same study re-marked
with ``--significance bootstrap``.

A recipe search (e.g. the control's dropout, chosen on the dev set): ``--train-only`` with
``--set FIELD=VALUE`` and one ``--out`` per setting trains without decoding anything, so no test
set is looked at; each results.md then gives the run's best dev PPL.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from nmt.errors import DivergedError, NmtError, StopSignal, error_line
from nmt.files import DEMO_PAIRS, atomic_copy, atomic_write, demo_name, experiment_dir
from nmt.metrics import SIGNIFICANCE_TESTS
from nmt.model.seq2seq import ARCHS
from nmt.train.config import (
    TrainConfig,
    arch_preset,
    compose_config,
    demo_bpe_merges,
    demo_data_dir,
)

DEFAULT_FINETUNE_LRS = "8e-5,4e-4,2e-5"       # the paper's best first; 4e-4 diverged in the paper
DEFAULT_TABLE4_EPOCHS = "0,1,3"                # + "until convergence" (the main fine-tuning run)
GROUPS = ("transformer", "control", "converged", "direct", "decoder", "finetune", "table4")
FROM_SCRATCH = ("transformer", "control", "converged")   # groups trained from scratch on the source-BPE data
STAGE1 = "decoder"                             # the stage-1 system's name (and its stage)


class ExperimentError(NmtError):
    """Bad input to the experiment runner (data, systems, options)."""


@dataclass
class System:
    name: str                 # run directory name under --out, e.g. "finetune-lr8e-5"
    label: str                # row label in the tables
    group: str                # one of GROUPS
    stage: str                # TrainConfig.stage
    lr: float                 # peak learning rate
    init_epoch: str | None = None   # finetune: "best" or an epoch number of the stage-1 run
    decoder_epochs: str = ""        # Table 4: decoder-training epochs before fine-tuning
    arch: str = "bert"              # FROM_SCRATCH groups: the baseline or control architecture
    budget: str = "epochs"          # "matched": the CPU time of stage 1 + the main fine-tuning run


def lr_name(lr: float) -> str:
    """4e-4 -> "4e-4", 8e-05 -> "8e-5", 1.5e-4 -> "1.5e-4": as the paper writes learning rates."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def parse_list(text: str, kind, what: str) -> list:
    try:
        values = [kind(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ExperimentError(f"{what} {text!r}: expected a comma-separated list") from None
    if not values:
        raise ExperimentError(f"{what} is empty")
    return values


def plan_systems(finetune_lrs: Sequence[float], table4_epochs: Sequence[int], direct_lr: float,
                 baseline_arch: str, train_lr: float = 4e-4, control_arch: str = "transformer-bert-size",
                 baseline_budget: str = "epochs") -> list[System]:
    """Every system of the study, in table order (the paper's Table 3: the from-scratch systems
    first). ``train_lr``: stage 1's LR (paper: 4e-4)."""
    main_lr = finetune_lrs[0]

    def scratch(name: str, group: str, arch: str, budget: str, what: str) -> System:
        return System(name, f"{what} ({arch}, from scratch{', converged' if group == 'converged' else ''})", group,
                      "scratch", arch_preset(arch).get("lr", train_lr), arch=arch, budget=budget)
    systems = [scratch("transformer", "transformer", baseline_arch, baseline_budget, "Transformer")]
    if baseline_budget == "matched":
        systems.append(scratch("transformer-converged", "converged", baseline_arch, "epochs", "Transformer"))
    systems.append(scratch("control", "control", control_arch, baseline_budget, "Transformer, BERT's shape"))
    if baseline_budget == "matched":
        systems.append(scratch("control-converged", "converged", control_arch, "epochs", "Transformer, BERT's shape"))
    systems += [System("direct", "Direct fine-tuning (BERT + new decoder, end to end)", "direct", "direct", direct_lr),
               System(STAGE1, "Decoder training (stage 1, BERT frozen)", "decoder", "decoder", train_lr)]
    systems += [System(f"finetune-lr{lr_name(lr)}", "+ Fine-tuning (stage 2)", "finetune", "finetune", lr, "best")
                for lr in finetune_lrs]
    for n in table4_epochs:
        if n == 0:
            systems.append(System("after-0", "0 (random decoder: direct at the fine-tuning LR)", "table4",
                                  "direct", main_lr, decoder_epochs="0"))
        else:
            systems.append(System(f"after-{n}", str(n), "table4", "finetune", main_lr, str(n), str(n)))
    return systems


def select_systems(systems: list[System], wanted: str | None) -> list[System]:
    """--systems: group names (transformer, direct, decoder, finetune, table4) or system names."""
    if not wanted:
        return systems
    names = parse_list(wanted, str, "--systems")
    known = set(GROUPS) | {s.name for s in systems}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ExperimentError(f"unknown system {', '.join(map(repr, unknown))} in --systems; expected group names "
                              f"{', '.join(GROUPS)} or system names {', '.join(s.name for s in systems)}")
    return [s for s in systems if s.group in names or s.name in names]


# ----------------------------------------------------------------------------------------------
# data

def raw_prefix(path: str, lang: str) -> str:
    """The prepare_data prefix of a side file: ``DIR/train.en`` or ``DIR/train.en.gz`` -> ``DIR/train``."""
    for suffix in (f".{lang}.gz", f".{lang}"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    raise ExperimentError(f"{path}: cannot tell the prefix of this file (expected it to end in .{lang} or "
                          f".{lang}.gz); prepare the baseline data yourself and pass --baseline-data")


def test_splits(data_dir: Path) -> list[str]:
    from nmt.data.binarized import read_meta
    splits = read_meta(data_dir).get("splits", {})
    if "valid" not in splits:
        raise ExperimentError(f"{data_dir}: no dev split 'valid' (has {', '.join(sorted(splits))}); prepare the data "
                              f"with tools/prepare_data.py --valid-prefix")
    tests = sorted((s for s in splits if s.startswith("test")), key=lambda s: (len(s), s))
    if not tests:
        raise ExperimentError(f"{data_dir}: no test split (has {', '.join(sorted(splits))}); prepare the data with "
                              f"tools/prepare_data.py --test-prefix (repeatable)")
    return tests


def prepare_baseline_data(data_dir: Path, out: Path, print_fn) -> Path:
    """The Transformer baseline's data: the same text files and target BPE settings as ``data_dir``,
    with a source BPE instead of BERT's WordPiece (prepared once; reused when the inputs are unchanged)."""
    from nmt.data.binarized import read_meta
    from nmt.data.prepare import prepare
    settings = read_meta(data_dir).get("settings", {})
    inputs, src, tgt = settings.get("inputs", {}), settings.get("src"), settings.get("tgt")
    if "train" not in inputs or not src or not tgt:
        raise ExperimentError(f"{data_dir}/meta.json: no record of the input files; pass --baseline-data")
    prefix = {name: raw_prefix(files[0][0], src) for name, files in inputs.items()}
    for name, files in inputs.items():
        if not Path(files[0][0]).is_file():
            raise ExperimentError(f"{files[0][0]}: the text {data_dir} was prepared from is gone; prepare the "
                                  f"baseline data with tools/prepare_data.py --source-bpe and pass --baseline-data")
    tests = sorted((s for s in prefix if s.startswith("test")), key=lambda s: (len(s), s))
    prepare(out, train_prefix=prefix["train"], valid_prefix=prefix.get("valid"),
            test_prefixes=[prefix[t] for t in tests], src=src, tgt=tgt, target_mode=settings["target_mode"],
            bpe_merges=settings["bpe_merges"], source_bpe=True, max_len=settings["max_len"],
            min_frequency=settings["min_frequency"], reuse=True, print_fn=print_fn)
    return out


# ----------------------------------------------------------------------------------------------
# training

def metrics_records(stage_out: Path) -> list[dict]:
    """The records of a run's metrics.jsonl ([] if none); a line cut short (by a kill, or being
    written right now) is skipped, as the trainer's resume drops it."""
    path = stage_out / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def epoch_records(stage_out: Path) -> list[dict]:
    """The per-epoch records of a run's metrics.jsonl, in order."""
    return [r for r in metrics_records(stage_out) if r.get("event") == "epoch"]


def train(cfg: TrainConfig, run_dir: Path, print_fn) -> dict:
    """Train one run to the end (or continue it); returns its train.json record. A finished run
    (train.json present) is not trained again. Holds the stage's lock while it trains (one writer)."""
    from nmt.train.assemble import stage_lock
    from nmt.train.trainer import setup
    stage_out = run_dir / cfg.stage
    record_path = stage_out / "train.json"
    if record_path.is_file():
        return json.loads(record_path.read_text(encoding="utf-8"))
    resume = (stage_out / "checkpoint_last.pt").is_file()
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir), resume=resume)
    print_fn(f"== {run_dir.name}: {'resuming ' if resume else ''}stage {cfg.stage}, LR {cfg.peak_lr():g}")
    seconds_path = stage_out / "seconds.txt"
    before = float(seconds_path.read_text()) if seconds_path.is_file() else 0.0
    t0 = time.time()
    try:
        with stage_lock(cfg):
            trainer = setup(cfg, print_fn=print_fn)
            why = trainer.fit()
        record, signum = {"stop": why, "epochs": trainer.epoch, "steps": trainer.step}, trainer.stop_signal
    except DivergedError as e:                  # a result of the study, not an input error
        record = {"stop": "diverged", "error": str(e)}
    finally:
        stage_out.mkdir(parents=True, exist_ok=True)
        seconds_path.write_text(f"{before + time.time() - t0:.1f}")
        trainer = None
        gc.collect()
    if record["stop"] == "interrupted":
        raise StopSignal(signum)            # the exit status names it: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP
    epochs = epoch_records(stage_out)
    improved = [r for r in epochs if r.get("improved")]
    record.update(seconds=round(before + time.time() - t0, 1), best_epoch=improved[-1]["epoch"] if improved else None,
                  cpu_seconds=epochs[-1].get("cpu_seconds") if epochs else None)
    if record["stop"] == "diverged":
        record["epochs"] = epochs[-1]["epoch"] if epochs else 0
    record_path.write_text(json.dumps(record, indent=1), encoding="utf-8")
    return record


# ----------------------------------------------------------------------------------------------
# evaluation

def evaluate(checkpoint: Path, data_dir: Path, splits: Sequence[str], out_dir: Path, args, print_fn) -> dict:
    """Dev perplexity, and for each split: translations (written to OUT/NAME/SPLIT.hyp), BLEU, chrF."""
    from nmt.data.binarized import split_text
    from nmt.decode.translator import Translator
    from nmt.metrics import corpus_bleu, corpus_chrf
    from nmt.train.evaluation import checkpoint_perplexity
    dev = checkpoint_perplexity(checkpoint, data_dir, "valid", device=args.device)
    translator = Translator.from_checkpoint(checkpoint, args.device)
    scores = {}
    for split in splits:
        src, ref, name = split_text(data_dir, split)
        progress = None
        if args.progress:
            from tqdm import tqdm
            progress = tqdm(total=sum(bool(x.strip()) for x in src), desc=f"translating {name}", unit="sent",
                            leave=False, file=sys.stderr)
        t0 = time.time()
        results = translator.translate(src, beam=args.beam, lenpen=args.lenpen, batch_size=args.batch_size,
                                       progress=progress)
        if progress is not None:
            progress.close()
        hyps = [r.text for r in results]
        (out_dir / f"{split}.hyp").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
        bleu, signature = corpus_bleu(hyps, ref, "13a")
        tok_bleu, tok_signature = corpus_bleu(hyps, ref, "none")
        chrf, _ = corpus_chrf(hyps, ref)
        scores[split] = {"name": name, "sentences": len(src), "bleu": bleu.score, "tok_bleu": tok_bleu.score,
                         "chrf": chrf.score, "signature": signature, "tok_signature": tok_signature,
                         "decode_seconds": round(time.time() - t0, 1)}
        print_fn(f"   {split} ({name}): BLEU {bleu.score:.2f}, tokenized BLEU {tok_bleu.score:.2f}, "
                 f"chrF {chrf.score:.2f} ({len(src)} sentences, {time.time() - t0:.0f} s)")
    del translator
    gc.collect()
    return {"dev": dev, "splits": scores}


# ----------------------------------------------------------------------------------------------
# the experiment

@dataclass
class Experiment:
    out: Path
    data: Path                  # BERT (WordPiece source) data
    baseline_data: dict[str, Path]  # from-scratch arch -> its source-BPE data
    demo: bool                  # the embedded demo corpus (its preset applies under the given values)
    given: dict                 # TrainConfig values every run shares: the user's and the study's
    systems: list[System]       # the whole study, table order
    selected: list[System]      # what this invocation runs
    args: argparse.Namespace
    stage_epochs: dict[str, int]  # --max-epochs STAGE=N
    print_fn: Callable[[str], None] = print

    def log(self, msg: str) -> None:
        self.print_fn(msg)
        with open(self.out / "experiment.log", "a", encoding="utf-8") as f:
            f.write(msg + "\n")

    def run_dir(self, name: str) -> Path:
        return self.out / name

    def config_for(self, system: System, budget: bool = True) -> TrainConfig:
        """The system's TrainConfig: nmt.train.config.compose_config (defaults < demo preset < the
        architecture's recipe < the given values) with the study's stage, architecture, LR, data and
        epochs per stage; ``budget``: the matched CPU budget too (known once the BERT runs are done)."""
        data = self.baseline_data[system.arch] if system.group in FROM_SCRATCH else self.data
        given = {**self.given, "stage": system.stage, "arch": system.arch, "lr": system.lr, "data": str(data),
                 **({"max_epochs": self.stage_epochs[system.stage]} if system.stage in self.stage_epochs else {})}
        cfg, _ = compose_config(given, demo=self.demo)
        if system.group in FROM_SCRATCH:
            if system.budget == "matched" and budget:
                cfg = dataclasses.replace(cfg, max_cpu_minutes=self.matched_budget() / 60)
            return cfg
        if system.stage == "decoder":
            keep = sorted({int(s.init_epoch) for s in self.systems if s.init_epoch not in (None, "best")})
            return dataclasses.replace(cfg, epoch_checkpoints=",".join(map(str, keep)) or None)
        if system.stage == "finetune":
            stage1 = self.run_dir(STAGE1) / "decoder"
            name = "checkpoint_best.pt" if system.init_epoch == "best" else f"checkpoint_epoch{system.init_epoch}.pt"
            return dataclasses.replace(cfg, init=str(stage1 / name))
        return cfg

    def budget_systems(self) -> list[System]:
        """What the baseline's compute is matched to: stage 1 and the main fine-tuning run."""
        return [s for s in self.systems if s.name == STAGE1] + [next(s for s in self.systems if s.group == "finetune")]

    def matched_budget(self) -> float:
        """CPU seconds of stage 1 + the main fine-tuning run (encoder cache, updates, dev evaluation):
        --baseline-budget matched gives the Transformer baseline exactly that."""
        total = 0.0
        for s in self.budget_systems():
            if not (self.run_dir(s.name) / s.stage / "train.json").is_file():   # e.g. still training elsewhere
                raise ExperimentError(f"--baseline-budget matched: {self.run_dir(s.name) / s.stage} has not finished "
                                      f"training (no train.json); run the systems "
                                      f"{', '.join(x.name for x in self.budget_systems())} to the end first (they "
                                      f"run before the baseline when selected) or pass --baseline-budget epochs")
            epochs = epoch_records(self.run_dir(s.name) / s.stage)
            if not epochs or "cpu_seconds" not in epochs[-1]:
                raise ExperimentError(f"--baseline-budget matched: {self.run_dir(s.name) / s.stage}/metrics.jsonl has no "
                                      f"CPU time yet; run the systems {', '.join(x.name for x in self.budget_systems())} "
                                      f"first (they run before the baseline when selected) or pass --baseline-budget epochs")
            total += float(epochs[-1]["cpu_seconds"])
        if not total > 0:
            raise ExperimentError(f"--baseline-budget matched: the systems {', '.join(x.name for x in self.budget_systems())} "
                                  f"logged no CPU time (their metrics.jsonl say 0 s); pass --baseline-budget epochs")
        return total

    def continue_matched_twin(self, system: System, cfg: TrainConfig) -> None:
        """Start a converged run where its compute-matched twin (``control`` for ``control-converged``)
        stopped: the twin is the same run with a CPU cap checked between epochs, so its last
        checkpoint is the state the converged run reaches after the same epochs (resuming is exact:
        tests/test_trainer.py). Copies the twin's checkpoints, metrics (without its length-penalty
        record: the converged run chooses again at its own end) and wall seconds; done only when
        the twin finished and its logged config equals ``cfg`` up to the cap and run directory."""
        if system.group != "converged":
            return
        twin = next((s for s in self.systems if s.name == system.name.removesuffix("-converged")
                     and s.budget == "matched"), None)
        target = self.run_dir(system.name) / cfg.stage
        if twin is None or (target / "checkpoint_last.pt").is_file() or (target / "train.json").is_file():
            return
        source = self.run_dir(twin.name) / cfg.stage
        record = json.loads((source / "train.json").read_text(encoding="utf-8")) if (source / "train.json").is_file() \
            else {}
        if record.get("stop") not in ("cpu_budget", "converged", "max_epochs") \
                or not (source / "checkpoint_last.pt").is_file():
            self.log(f"== {system.name}: from scratch ({twin.name}, the same run with a CPU cap, has not finished; "
                     f"run it first and this run continues from it)")
            return
        records = metrics_records(source)
        logged = next((r["config"] for r in records if r.get("event") == "start"), {})
        mine = cfg.to_dict()
        differ = sorted(k for k in set(logged) | set(mine)
                        if k not in ("max_cpu_minutes", "run_dir", "resume") and logged.get(k) != mine.get(k))
        if differ:
            self.log(f"== {system.name}: from scratch ({twin.name} was trained with another config: "
                     f"{', '.join(differ)})")
            return
        target.mkdir(parents=True, exist_ok=True)
        with atomic_write(target / "metrics.jsonl", "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records if r.get("event") != "lenpen"))
        last = source / "checkpoint_last.pt"        # copied last: once it is there, the run resumes from it
        others = [c for c in sorted(source.glob("checkpoint_*.pt")) if c != last]
        for path in others + [source / "seconds.txt", last]:
            if path.is_file():
                atomic_copy(path, target / path.name)
        self.log(f"== {system.name}: continuing {twin.name}'s run after its epoch {record.get('epochs')} "
                 f"({(record.get('cpu_seconds') or 0) / 60:.1f} CPU min, counted in this run's), without the CPU cap")

    def result_path(self, system: System) -> Path:
        return self.run_dir(system.name) / "result.json"

    def ensure_stage1(self) -> dict:
        stage1 = next(s for s in self.systems if s.name == STAGE1)
        return train(self.config_for(stage1), self.run_dir(STAGE1), self.log)

    def run_system(self, system: System) -> dict:
        path = self.result_path(system)
        if path.is_file():
            self.log(f"== {system.name}: done (results in {path})")
            return json.loads(path.read_text(encoding="utf-8"))
        cfg = self.config_for(system)
        result = {"system": system.name, "label": system.label, "group": system.group, "stage": system.stage,
                  "lr": system.lr, "decoder_epochs": system.decoder_epochs}
        if system.stage == "finetune":
            stage1 = self.ensure_stage1()
            init = Path(cfg.init)
            if not init.is_file():
                why = (f"stage 1 stopped after {stage1.get('epochs')} epochs ({stage1.get('stop')}), before epoch "
                       f"{system.init_epoch}" if system.init_epoch != "best" else f"stage 1 has no {init.name}")
                result.update(status="skipped", reason=why)
                self.log(f"== {system.name}: skipped: {why}")
                return self._write(path, result)
            if system.init_epoch != "best" and stage1.get("best_epoch") == int(system.init_epoch):
                why = (f"stage 1's best checkpoint is its epoch {system.init_epoch}: the same run as "
                       f"'until convergence'")
                result.update(status="same", reason=why)
                self.log(f"== {system.name}: not run: {why}")
                return self._write(path, result)
            result["init"] = str(init.relative_to(self.out) if init.is_relative_to(self.out) else init)
        run_dir = self.run_dir(system.name)
        self.continue_matched_twin(system, cfg)
        record = train(cfg, run_dir, self.log)
        if self.args.train_only:        # a recipe search: ranked on the dev loss, never decoded or scored
            self.log(f"== {system.name}: trained ({record['stop']}, {record['epochs']} epochs); not evaluated "
                     f"(--train-only)")
            return {**result, "status": "trained", "train": record}
        result["train"] = record
        if record["stop"] == "diverged":
            result.update(status="diverged", reason=record["error"])
            self.log(f"== {system.name}: diverged ({record['error'][:120]}...)")
            return self._write(path, result)
        stage_out = run_dir / cfg.stage
        checkpoint = stage_out / "checkpoint_best.pt"
        if not checkpoint.is_file():                  # stopped by --max-steps inside the first epoch
            checkpoint = stage_out / "checkpoint_last.pt"
        data_dir = Path(cfg.data)
        splits = test_splits(data_dir) + (["valid"] if self.args.dev_bleu else [])
        self.log(f"== {system.name}: evaluating {checkpoint.relative_to(self.out)}")
        result.update(status="ok", checkpoint=str(checkpoint.relative_to(self.out)),
                      **evaluate(checkpoint, data_dir, splits, run_dir, self.args, self.log))
        self.log(f"   dev PPL {result['dev']['ppl']:.2f}; {record['epochs']} epochs (best {record['best_epoch']}), "
                 f"{record['seconds']:.0f} s training")
        return self._write(path, result)

    @staticmethod
    def _write(path: Path, result: dict) -> dict:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as f:
            f.write(json.dumps(result, indent=1))
        return result

    def run(self) -> str:
        t0 = time.time()
        order = list(self.selected)
        # a matched budget is known only after the BERT systems; a converged run continues its matched twin
        order.sort(key=lambda s: 2 if s.group == "converged" else int(s.budget == "matched"))
        for system in order if not self.args.tables_only else []:
            self.run_system(system)
        table = self.tables()
        (self.out / "results.md").write_text(table, encoding="utf-8")
        self.log(f"\n{table}")
        self.log(f"wrote {self.out / 'results.md'} ({time.time() - t0:.0f} s this invocation)")
        return table

    # -- the tables
    def significance_test(self):
        """The test that marks the tables (--significance, --significance-samples, --significance-seed)."""
        from nmt.metrics import SignificanceTest
        return SignificanceTest.named(self.args.significance, self.args.significance_samples,
                                      self.args.significance_seed)

    def load_results(self) -> dict[str, dict]:
        return {s.name: json.loads(self.result_path(s).read_text(encoding="utf-8"))
                for s in self.systems if self.result_path(s).is_file()}

    def significance_marks(self, results: dict[str, dict], tests: list[str],
                           baseline: str = "transformer") -> dict[tuple[str, str, str], str]:
        """(system, test split, "bleu" | "tok_bleu") -> "(+)", "(−)" or "": the significance test of
        every finished system against ``baseline`` (none without a finished baseline), from the
        SPLIT.hyp files the runs wrote, so a finished study can be re-marked with another test."""
        from nmt.data.binarized import split_text
        from nmt.metrics import paired_significance
        from nmt.text.lines import read_lines
        if results.get(baseline, {}).get("status") != "ok":
            return {}

        def hyps(name: str, split: str) -> list[str]:
            return read_lines(self.run_dir(name) / f"{split}.hyp")

        refs = {t: split_text(self.data, t)[1] for t in tests}
        marks: dict[tuple[str, str, str], str] = {}
        for name, r in results.items():
            if name == baseline or r.get("status") != "ok":
                continue
            for t in tests:
                for key, tok in (("bleu", "13a"), ("tok_bleu", "none")):
                    marks[name, t, key] = paired_significance(
                        hyps(name, t), hyps(baseline, t), refs[t], self.significance_test(), tokenize=tok).mark
        return marks

    def tables(self) -> str:
        """results.md: the paper's Tables 3/5 and 4 from the systems' result.json files."""
        from nmt.data.binarized import split_text
        results = self.load_results()
        tests = test_splits(self.data)
        names = {t: split_text(self.data, t)[2] for t in tests}
        marks = self.significance_marks(results, tests)
        unfinished = {s.name: run for s in self.systems if s.name not in results
                      and (run := self.unfinished_run(s)) is not None}    # still training, or interrupted
        has_baseline = results.get("transformer", {}).get("status") == "ok"
        # a converged run is meant to stop on its dev loss; one that reached --max-epochs first says so
        capped = {s.name for s in self.systems if s.group == "converged"
                  and (results.get(s.name) or {}).get("train", {}).get("stop") == "max_epochs"}

        def scores(r: dict | None, name: str, marks: dict = marks) -> list[str]:
            if r is None:
                run = unfinished.get(name)
                status = f"unfinished (best so far {run['best_ppl']:.2f})" if run else "not run"
                return [status] + [""] * (2 * len(tests))
            if r.get("status") != "ok":
                status = {"same": "= until convergence"}.get(r.get("status"), r.get("status", "?"))
                return [status] + ["–"] * (2 * len(tests))
            cells = [f"{r['dev']['ppl']:.2f}" if math.isfinite(r["dev"]["ppl"]) else "inf"]
            for t in tests:
                for key in ("bleu", "tok_bleu"):
                    mark = marks.get((name, t, key), "")
                    cells.append(f"{r['splits'][t][key]:.2f}{(' ' + mark) if mark else ''}")
            return cells

        def epochs(r: dict | None, name: str) -> str:
            if r is None and name in unfinished:
                return f"{unfinished[name]['epoch']} so far"
            if r is None or "train" not in r:
                return ""
            t = r["train"]
            notes = [f"best {t['best_epoch']}"] if t.get("best_epoch") not in (None, t.get("epochs")) else []
            notes += ["epoch cap"] if name in capped else []
            return f"{t.get('epochs')}" + (f" ({'; '.join(notes)})" if notes else "")

        def cpu_minutes(r: dict | None, name: str) -> str:
            cpu = (r or {}).get("train", {}).get("cpu_seconds") if r else unfinished.get(name, {}).get("cpu_seconds")
            return f"{cpu / 60:.1f}" if cpu is not None else ""

        score_head = [h for t in tests for h in (f"{names[t]} BLEU", f"{names[t]} tok. BLEU")]
        main_head = ["| System | LR | dev PPL | " + " | ".join(score_head) + " | Epochs | CPU min |",
                     "|---|---|---:|" + "---:|" * len(score_head) + "---:|---:|"]

        def main_row(s: System, marks: dict = marks) -> str:
            r = results.get(s.name)
            return (f"| {s.label} | {lr_name(s.lr)} | " + " | ".join(scores(r, s.name, marks)) + f" | {epochs(r, s.name)} | "
                    f"{cpu_minutes(r, s.name)} |")

        lines = ["### Main results (the paper's Tables 3 and 5)", "", *main_head]
        lines += [main_row(s) for s in self.systems if s.group != "table4"]

        main = next(s for s in self.systems if s.group == "finetune")
        stage1 = results.get(STAGE1, {}).get("train") or self._stage1_record()
        conv = f"until convergence ({stage1['best_epoch']})" if stage1 and stage1.get("best_epoch") else "until convergence"
        lines += ["", f"### Decoder-training epochs before fine-tuning at LR {lr_name(main.lr)} (the paper's Table 4)", "",
                  "| Decoder-training epochs | dev PPL | " + " | ".join(score_head) + " | Fine-tuning epochs |",
                  "|---|---:|" + "---:|" * len(score_head) + "---:|"]
        for s in self.systems:
            if s.group == "table4":
                r = results.get(s.name)
                lines.append(f"| {s.label} | " + " | ".join(scores(r, s.name)) + f" | {epochs(r, s.name)} |")
        r = results.get(main.name)
        lines.append(f"| {conv} | " + " | ".join(scores(r, main.name)) + f" | {epochs(r, main.name)} |")

        # the paper's baselines are trained to convergence: the same test against the converged one
        converged = self.significance_marks(results, tests, baseline="transformer-converged")
        if converged:
            lines += ["", "### Against the converged Transformer baseline", "", *main_head]
            lines += [main_row(s, converged) for s in self.systems
                      if s.group != "table4" and results.get(s.name, {}).get("status") == "ok"]

        notes = [f"- `{s.name}`: {results[s.name]['status']}: {results[s.name].get('reason', '')}"
                 for s in self.systems if results.get(s.name, {}).get("status") not in (None, "ok")]
        lines += ([""] + notes) if notes else []
        any_ok = next((r for r in results.values() if r.get("status") == "ok"), None)
        lines += ["", f"dev PPL: perplexity of the best checkpoint (lowest dev loss) on the dev set, per target "
                      f"subword token. BLEU: sacrebleu on the output as written (beam {self.args.beam}, length penalty "
                      f"{self.args.lenpen:g}); tok. BLEU: tokenize 'none' (the paper-era number on pre-tokenized "
                      f"references). "
                  + (f"(+)/(−): significantly better/worse than the Transformer baseline (test: "
                     f"{self.significance_test().describe()})." if has_baseline
                     else "No significance marks: the Transformer baseline has not been run.")
                  + (" In the last table, (+)/(−) compare with the converged Transformer baseline." if converged else "")
                  + (" unfinished: a run without a result yet (still training, or interrupted): its best dev PPL, "
                     "epochs and CPU minutes so far." if unfinished else "")
                  + " Epochs: epochs trained (best epoch by dev loss). CPU min: process CPU time of the run's "
                    "training (encoder cache, updates, dev evaluation)"
                  + (f"; the baseline and the control were given the CPU time of "
                     f"{' + '.join(s.name for s in self.budget_systems())}; the converged ones trained until the "
                     f"dev loss stopped improving" + (" (\"epoch cap\": --max-epochs came first)" if capped else "") + "."
                     if self.args.baseline_budget == "matched" else ".")]
        if any_ok:
            sig = any_ok["splits"][tests[0]]
            lines += [f"BLEU signature: `{sig['signature']}`; tok. BLEU: `{sig['tok_signature']}`"]
        return "\n".join(lines) + "\n"

    def unfinished_run(self, system: System) -> dict | None:
        """Where a run without a result stands (still training, or interrupted): its last epoch, CPU
        seconds so far and best dev PPL so far, from its metrics.jsonl; None if it has no epoch yet."""
        epochs = epoch_records(self.run_dir(system.name) / system.stage)
        if not epochs:
            return None
        return {"epoch": epochs[-1]["epoch"], "cpu_seconds": epochs[-1].get("cpu_seconds"),
                "best_ppl": min(e["dev"]["ppl"] for e in epochs)}

    def _stage1_record(self) -> dict | None:
        path = self.run_dir(STAGE1) / "decoder" / "train.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# ----------------------------------------------------------------------------------------------
# command line

def parse_max_epochs(text: str | None) -> dict:
    """--max-epochs "3,decoder=8" -> {None: 3, "decoder": 8} (None: every stage)."""
    from nmt.model.seq2seq import STAGES
    out: dict = {}
    for item in (text or "").replace(" ", "").split(","):
        if not item:
            continue
        stage, sep, value = item.rpartition("=")
        if (sep and stage not in STAGES) or not value.isdigit() or int(value) < 1:
            raise ExperimentError(f"--max-epochs {text!r}: expected N and/or STAGE=N with N >= 1 and STAGE one of "
                                  f"{', '.join(STAGES)}, e.g. 3,decoder=8")
        out[stage or None] = int(value)
    return out


def parse_set(items: Sequence[str]) -> dict:
    """--set KEY=VALUE (TrainConfig fields, e.g. decoder_layers=3) with the field's type."""
    from nmt.train.config import parse_optional
    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types:
            raise ExperimentError(f"--set {item!r}: expected FIELD=VALUE with a TrainConfig field "
                                  f"(e.g. decoder_layers=3, max_sentences=500)")
        kind = {"int": int, "float": float, "str": str, "bool": lambda v: v.lower() in ("1", "true", "yes")}[
            types[key].split(" ")[0]]
        try:
            out[key] = parse_optional(kind)(value) if "None" in types[key] else kind(value)
        except ValueError:
            raise ExperimentError(f"--set {item!r}: {value!r} is not a valid {types[key]}") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="prepared data (BERT WordPiece source) with splits train, valid, test...; "
                                  "none: the embedded demo corpus (--pair)")
    p.add_argument("--pair", default="en-de", help="demo direction without --data: en-de or en-vi")
    p.add_argument("--baseline-data", help="prepared source-BPE data for the Transformer baseline (same text files); "
                                           "none: prepared by this tool into OUT/data-source-bpe")
    p.add_argument("--bert", help="BERT model the data was prepared with (native .pt, Google TF or HF dir); "
                                  "none: the installed all-MiniLM-L6-v2")
    p.add_argument("--out", help="experiment directory; none: checkpoints/experiments/demo-PAIR or DATA_NAME")
    p.add_argument("--systems", help=f"comma list of groups ({', '.join(GROUPS)}) or system names; none: all")
    p.add_argument("--finetune-lrs", default=DEFAULT_FINETUNE_LRS,
                   help="fine-tuning LRs, the main one first (default: %(default)s)")
    p.add_argument("--direct-lr", type=float,
                   help="LR of direct fine-tuning (default: stage 1's, TrainConfig.train_lr: 4e-4, demo 1e-3)")
    p.add_argument("--table4-epochs", default=DEFAULT_TABLE4_EPOCHS,
                   help="Table 4: stage-1 epochs before fine-tuning, 0 = none (default: %(default)s; "
                        "'until convergence' is always there)")
    p.add_argument("--baseline-arch", choices=[a for a in ARCHS if a != "bert"],
                   help="the Transformer baseline (default: transformer-small, the low-resource recipe, on the demo; "
                        "transformer-base, the paper's, with --data)")
    p.add_argument("--control-arch", choices=[a for a in ARCHS if a != "bert"],
                   help="the same network without pre-training (default: transformer-minilm-size, the demo BERT's "
                        "shape, on the demo; transformer-bert-size, BERT-base's, with --data)")
    p.add_argument("--baseline-budget", choices=("matched", "epochs"),
                   help="matched: the baseline trains (after them) for the CPU time that stage 1 + the main "
                        "fine-tuning run took; epochs: until early stopping or --max-epochs (default: matched on "
                        "the demo, epochs with --data)")
    p.add_argument("--max-epochs", help="cap on epochs per run: N for every stage and/or STAGE=N (stages decoder, "
                                        "finetune, direct, scratch), e.g. 3,decoder=8 (default: 100; demo 3)")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs (default: 3, demo 2)")
    p.add_argument("--max-steps", type=int, help="cap on updates per run (smoke tests)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other TrainConfig field for every run, e.g. --set max_sentences=500 (repeatable)")
    p.add_argument("--beam", type=int, default=10, help="beam size (default: 10, the paper's)")
    p.add_argument("--lenpen", type=float, default=1.0, help="length penalty (default: 1.0, the paper's)")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per decoding batch")
    p.add_argument("--dev-bleu", action=argparse.BooleanOptionalAction, default=True,
                   help="also decode the dev set and report its BLEU in result.json (default: on)")
    p.add_argument("--significance", choices=SIGNIFICANCE_TESTS, default="ar",
                   help="the test behind the tables' (+)/(−): ar, approximate randomization (the paper's, "
                        "MultEval's; the default); bootstrap, sacrebleu's two-sided paired bootstrap; "
                        "bootstrap-one-sided, Koehn's one-sided paired bootstrap")
    p.add_argument("--significance-samples", "--bootstrap-samples", dest="significance_samples", type=int,
                   help="AR trials or bootstrap resamples (default: 10,000 for ar, 1,000 for the bootstraps)")
    p.add_argument("--significance-seed", "--bootstrap-seed", dest="significance_seed", type=int, default=12345,
                   help="seed of the test's RNG (default: 12345, as sacrebleu)")
    p.add_argument("--tables-only", action="store_true",
                   help="rewrite OUT/results.md from the result.json and SPLIT.hyp files already there, training "
                        "and decoding nothing (e.g. to re-mark a finished study with another --significance)")
    p.add_argument("--seed", type=int, default=1, help="training seed (default: 1)")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (cuda when available; the default)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    p.add_argument("--train-only", action="store_true",
                   help="train the selected systems and evaluate none (no decoding, no test set, no result.json): "
                        "a recipe search ranked on the dev loss, which results.md shows per run as its best dev "
                        "PPL so far (e.g. --systems control --set dropout=0.1 --baseline-budget epochs)")
    return p


def make_experiment(args: argparse.Namespace, print_fn=print) -> Experiment:
    """Validate the arguments, prepare the data if needed, and plan the runs."""
    from nmt.data.binarized import read_meta
    from nmt.data.prepare import prepare_demo
    finetune_lrs = parse_list(args.finetune_lrs, float, "--finetune-lrs")
    table4 = parse_list(args.table4_epochs, int, "--table4-epochs")
    demo = args.data is None
    # what every run shares, over the presets; the tables decode with --lenpen (the paper's 1.0), so no
    # run chooses its own length penalty on the dev set (the demo preset's lenpen_grid) unless --set asks;
    # and every run trains in fp32 unless --set amp=bfloat16 (not the demo preset's "auto"), so that a
    # study continued on another kind of CPU keeps one arithmetic in its tables
    given = {"lenpen_grid": "", "amp": "off", **parse_set(args.set)}
    stage_epochs = parse_max_epochs(args.max_epochs)
    if None in stage_epochs:
        given["max_epochs"] = stage_epochs.pop(None)
    for key in ("patience", "max_steps"):
        if getattr(args, key) is not None:
            given[key] = getattr(args, key)
    given.update(seed=args.seed, device=args.device, threads=args.threads, progress=args.progress, bert=args.bert,
                 **({"pair": args.pair} if demo else {}))
    train_lr = compose_config({**given, "stage": "decoder"}, demo=demo)[0].train_lr
    if args.direct_lr is None:
        args.direct_lr = train_lr
    if any(lr <= 0 for lr in finetune_lrs + [args.direct_lr]) or any(n < 0 for n in table4):
        raise ExperimentError("learning rates must be positive and --table4-epochs >= 0")
    if args.beam < 1 or args.batch_size < 1:
        raise ExperimentError("--beam and --batch-size must be >= 1")
    if (args.significance_samples is not None and args.significance_samples < 1) or args.significance_seed < 0:
        raise ExperimentError("--significance-samples must be >= 1 and --significance-seed >= 0")
    if args.tables_only and args.train_only:
        raise ExperimentError("--tables-only writes the tables without training, --train-only trains without "
                              "scoring: pass one of them")
    if len(set(map(lr_name, finetune_lrs))) != len(finetune_lrs) or len(set(table4)) != len(table4):
        raise ExperimentError("--finetune-lrs and --table4-epochs must not repeat a value")
    args.baseline_arch = args.baseline_arch or ("transformer-small" if demo else "transformer-base")
    args.control_arch = args.control_arch or ("transformer-minilm-size" if demo else "transformer-bert-size")
    args.baseline_budget = args.baseline_budget or ("matched" if demo else "epochs")
    systems = plan_systems(finetune_lrs, table4, args.direct_lr, args.baseline_arch, train_lr, args.control_arch,
                           args.baseline_budget)
    selected = select_systems(systems, args.systems)
    if demo and args.pair not in DEMO_PAIRS:
        raise ExperimentError(f"unknown demo --pair {args.pair!r}; expected one of {', '.join(DEMO_PAIRS)}")
    name = demo_name(args.pair) if demo else Path(args.data).resolve().name
    out = Path(args.out) if args.out else experiment_dir(name)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    from nmt.train.assemble import resolve_device
    args.device = str(resolve_device(args.device))     # one device for training and decoding
    if args.tables_only and not (out / "results.md").is_file() and not any(out.glob("*/result.json")):
        raise ExperimentError(f"{out}: no results to tabulate (no */result.json); --tables-only rewrites the tables "
                              f"of an existing study: pass its --out")
    # --tables-only trains nothing: no baseline data to prepare, no run config to check
    scratch_archs = sorted({s.arch for s in selected if s.group in FROM_SCRATCH and not args.tables_only})
    baselines: dict[str, Path] = {}
    if demo:
        data = demo_data_dir(args.pair)
        prepare_demo(data, args.pair, bert=args.bert, bpe_merges=demo_bpe_merges(), reuse=True, print_fn=print_fn)
        for arch in scratch_archs:
            baselines[arch] = demo_data_dir(args.pair, arch)
            prepare_demo(baselines[arch], args.pair, bpe_merges=demo_bpe_merges(arch), source_bpe=True, reuse=True,
                         print_fn=print_fn)
    else:
        data = Path(args.data)
        if read_meta(data).get("source", {}).get("kind") != "wordpiece":
            raise ExperimentError(f"{data}: its source side is not BERT WordPiece; --data is the BERT data "
                                  f"(prepared without --source-bpe); the baseline's goes to --baseline-data")
        baseline = Path(args.baseline_data) if args.baseline_data else None
        if scratch_archs and baseline is None:
            out.mkdir(parents=True, exist_ok=True)
            baseline = prepare_baseline_data(data, out / "data-source-bpe", print_fn)
        baselines = dict.fromkeys(scratch_archs, baseline)
    tests = test_splits(data)
    for baseline in sorted(set(baselines.values())):
        from nmt.data.binarized import split_text
        if read_meta(baseline).get("source", {}).get("kind") != "bpe":
            raise ExperimentError(f"{baseline}: not source-BPE data (prepare it with tools/prepare_data.py --source-bpe)")
        if test_splits(baseline) != tests:
            raise ExperimentError(f"{baseline} has test splits {test_splits(baseline)}, {data} has {tests}")
        for t in tests + ["valid"]:
            if split_text(baseline, t)[1] != split_text(data, t)[1]:
                raise ExperimentError(f"the {t!r} references of {baseline} and {data} differ: prepare both from the "
                                      f"same text files")
    experiment = Experiment(out, data, baselines, demo, given, systems, selected, args, stage_epochs, print_fn)
    experiment.significance_test()              # a bad --significance-* fails before anything runs
    if args.tables_only:                        # experiment.json keeps the record of the training invocation
        return experiment
    for s in selected:                          # every run's config must be valid before anything trains
        experiment.config_for(s, budget=False).validate()
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps({"argv": sys.argv, "args": vars(args), "given": given,
                                                     "baseline_data": {a: str(d) for a, d in baselines.items()}},
                                                    indent=1, default=str), encoding="utf-8")
    return experiment


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nmt.errors import raise_on_stop_signals, restore_signals, signal_name
    from nmt.train.run_state import stop_status
    stop_handlers = raise_on_stop_signals()      # SIGTERM, SIGHUP as Ctrl-C; training saves its run first
    try:
        experiment = make_experiment(args)
        experiment.log(f"experiment in {experiment.out}: systems {', '.join(s.name for s in experiment.selected)}")
        experiment.run()
    except (NmtError, OSError) as e:     # ExperimentError, the library's errors, the disk
        print(error_line(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:       # 128 + the signal: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP
        print(f"interrupted by {signal_name(stop_status(e) - 128)}: run the same command again to continue",
              file=sys.stderr)
        return stop_status(e)
    finally:
        restore_signals(stop_handlers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
