#!/usr/bin/env python
"""Draw the learning curves of every system (dev loss and dev BLEU per epoch) into one PNG.

    python tools/plot_curves.py checkpoints/experiments/demo-en-vi     # -> .../demo-en-vi/learning_curves.png
    python tools/plot_curves.py checkpoints/demo-en-de checkpoints/demo-en-vi --out curves.png --title "demo"

Inputs are experiment directories of tools/run_experiments.py (``OUT/SYSTEM/STAGE/metrics.jsonl``,
one curve per system, labelled by the system directory: ``decoder``, ``finetune-lr8e-5``, ...),
train.py run directories (``RUN/decoder/metrics.jsonl`` and ``RUN/finetune/metrics.jsonl``,
labelled by the stage directory) or metrics.jsonl files and stage directories (labelled
``RUN/STAGE``). Labels that would clash get their parent directory's name in front.

``--table`` prints the curves as a Markdown table instead (dev and train perplexity per epoch),
then each run's best epoch by dev loss and the run with the lowest: the record of a recipe chosen on
the dev set, e.g. a grid of one ``--out`` per setting (docs/experiments.md); ``--epochs N`` ranks
the runs on their first N epochs, so that runs trained for longer are compared on equal terms:

    python tools/plot_curves.py grid/dropout0.1 grid/dropout0.2 grid/dropout0.3 --table --epochs 8

Each curve is read from the trainer's ``epoch`` records (a resumed run repeats epochs: the last
record of an epoch wins). The left panel is the dev loss (label-smoothed, nats per target token),
the right one the dev BLEU that newer runs log after each epoch (``dev_bleu``). A fine-tuning run
(stage 2) is drawn where its starting checkpoint left off: from epoch N for ``checkpoint_epochN.pt``,
from stage 1's best epoch for ``checkpoint_best.pt`` (stage 1 being one of the inputs:
``OUT/decoder/decoder`` or ``RUN/decoder``). matplotlib is needed only to draw (requirements-dev.txt).
Bad input: ``error: ...`` on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nmt.errors import NmtError

METRICS = "metrics.jsonl"
STAGE_ORDER = ("scratch", "direct", "decoder", "finetune")   # the order systems are listed and drawn in
STAGE1 = "decoder"
EPOCH_CHECKPOINT = re.compile(r"checkpoint_epoch(\d+)\.pt$")
DEFAULT_NAME = "learning_curves.png"


class CurveError(NmtError):
    """Bad input: a missing path, a malformed metrics file, no run with epoch records."""


class NoEpochs(CurveError):
    """A run that has not finished an epoch yet: skipped with a warning when other runs have."""


@dataclass
class Curve:
    """One training run's dev metrics per epoch (epochs of its own run, before any offset)."""
    name: str                          # legend label, e.g. "finetune-lr8e-5"
    path: Path                         # its metrics.jsonl
    stage: str                         # scratch, direct, decoder or finetune
    init: str | None                   # the checkpoint it started from (config["init"])
    epochs: list[int]
    dev_loss: list[float]
    dev_bleu: list[float | None]       # None where that epoch logged no BLEU
    dev_ppl: list[float | None]        # dev perplexity (of the NLL, not the smoothed loss), per epoch
    train_ppl: list[float | None]      # the epoch's training perplexity
    bleu_search: str | None = None     # e.g. "greedy", "beam 4" (the last one logged)
    offset: int = 0                    # stage 2: the stage-1 epoch it continues from
    offset_from: str = ""              # how the offset was found, for the legend

    @property
    def x(self) -> list[int]:
        """Epochs on the common axis: stage-2 runs continue from their stage-1 epoch."""
        return [epoch + self.offset for epoch in self.epochs]

    @property
    def best_epoch(self) -> int:
        """The epoch of the lowest dev loss (the first on ties): the trainer's checkpoint_best.pt."""
        losses = [loss if math.isfinite(loss) else math.inf for loss in self.dev_loss]
        return self.epochs[losses.index(min(losses))]

    @property
    def has_bleu(self) -> bool:
        return any(bleu is not None for bleu in self.dev_bleu)


# ----------------------------------------------------------------------------------------------
# reading

def find_metrics(path: Path) -> list[tuple[Path, str, str]]:
    """(metrics file, label, longer label for a clash) of each run under one input: an experiment
    directory's runs are named after their system directory, a run directory's after their stage."""
    if (path / METRICS).is_file():     # a stage directory itself
        path = path / METRICS
    if path.is_file():
        parts = path.resolve().parts
        return [(path, "/".join(parts[-3:-1]), "/".join(parts[-4:-1]))]
    if not path.is_dir():
        raise CurveError(f"{path}: no such file or directory")
    found = [(p, p.parent.parent.name) for p in sorted(path.glob(f"*/*/{METRICS}"))]
    found += [(p, p.parent.name) for p in sorted(path.glob(f"*/{METRICS}"))]
    if not found:
        raise CurveError(f"{path}: no {METRICS} in it (expected an experiment directory with "
                         f"SYSTEM/STAGE/{METRICS} or a run directory with STAGE/{METRICS})")
    return [(p, name, f"{path.resolve().name}/{name}") for p, name in found]


def read_records(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) for each JSON line. A last line without its newline that does not
    parse is skipped: the trainer is writing it right now."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CurveError(f"{path}: cannot read it ({err})") from None
    lines = text.split("\n")
    records = []
    for line, text_line in enumerate(lines, 1):
        if not text_line.strip():
            continue
        try:
            record = json.loads(text_line)
        except json.JSONDecodeError as err:
            if line == len(lines):         # no "\n" after it: a line still being written
                continue
            raise CurveError(f"{path}:{line}: not a JSON line ({err.msg})") from None
        if not isinstance(record, dict):
            raise CurveError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
        records.append((line, record))
    return records


def as_number(path: Path, line: int, value, what: str) -> float:
    """A number of an epoch record, or an error naming the line."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CurveError(f"{path}:{line}: {what} is not a number: {value!r}") from None


def perplexity_of(path: Path, line: int, record: dict, part: str) -> float | None:
    """``record[part]["ppl"]`` as a number, None when the record has none."""
    value = (record.get(part) or {}).get("ppl")
    return None if value is None else as_number(path, line, value, f"{part} ppl")


def read_curve(path: Path, name: str) -> Curve:
    """One run's curve. The first start record says what the run is (a resumed run appends another
    start record; the last record of each epoch wins)."""
    records = read_records(path)
    config = next((r.get("config") or {} for _, r in records if r.get("event") == "start"), {})
    by_epoch: dict[int, tuple[int, dict]] = {}
    for line, record in records:
        if record.get("event") == "epoch":
            try:
                by_epoch[int(record["epoch"])] = (line, record)
            except (KeyError, TypeError, ValueError):
                raise CurveError(f"{path}:{line}: epoch record without an epoch number") from None
    if not by_epoch:
        raise NoEpochs(f"{path}: no epoch records (the run has not finished an epoch yet)")
    epochs = sorted(by_epoch)
    rows = [by_epoch[epoch] for epoch in epochs]
    searches = [r["dev_bleu_search"] for _, r in rows if r.get("dev_bleu_search")]
    return Curve(name=name, path=path, stage=str(config.get("stage") or path.parent.name),
                 init=config.get("init"), epochs=epochs,
                 dev_loss=[as_number(path, n, (r.get("dev") or {}).get("loss"), "dev loss") for n, r in rows],
                 dev_bleu=[None if r.get("dev_bleu") is None else as_number(path, n, r["dev_bleu"], "dev_bleu")
                           for n, r in rows],
                 dev_ppl=[perplexity_of(path, n, r, "dev") for n, r in rows],
                 train_ppl=[perplexity_of(path, n, r, "train") for n, r in rows],
                 bleu_search=searches[-1] if searches else None)


def stage1_candidates(path: Path) -> list[Path]:
    """Where the stage-1 run of a fine-tuning run's metrics file lives: ``RUN/decoder`` next to
    ``RUN/finetune``, or ``OUT/decoder/decoder`` for ``OUT/SYSTEM/finetune`` in an experiment."""
    run = path.parent.parent
    return [run / STAGE1 / METRICS, run.parent / STAGE1 / STAGE1 / METRICS]


def finetune_offset(curve: Curve, curves: Sequence[Curve]) -> tuple[int, str]:
    """(offset, how it was found) of a stage-2 run: N for init checkpoint_epochN.pt, else (null or
    checkpoint_best.pt) the best epoch of its stage-1 run among ``curves``; 0 when unknown."""
    match = EPOCH_CHECKPOINT.search(str(curve.init or ""))
    if match:
        return int(match.group(1)), f"stage-1 epoch {match.group(1)}"
    by_path = {c.path.resolve(): c for c in curves}
    for candidate in stage1_candidates(curve.path):
        stage1 = by_path.get(candidate.resolve())
        if stage1 is not None:
            return stage1.best_epoch, f"stage-1 best, epoch {stage1.best_epoch}"
    return 0, ""


def unique_names(curves: list[Curve], longer: list[str]) -> None:
    """Give clashing labels (two run directories' "decoder") their longer form, then, if they
    still clash, the run's directory as given."""
    for rename in (lambda i: longer[i], lambda i: str(curves[i].path.parent)):
        counts: dict[str, int] = {}
        for curve in curves:
            counts[curve.name] = counts.get(curve.name, 0) + 1
        for i, curve in enumerate(curves):
            if counts[curve.name] > 1:
                curve.name = rename(i)


def read_curves(paths: Sequence[Path | str]) -> dict[str, Curve]:
    """Every run under ``paths`` (experiment directories, run directories, metrics files) as
    curves by label, ordered by stage (scratch, direct, decoder, finetune), stage-2 runs offset."""
    if not paths:
        raise CurveError("no input: give an experiment directory, a run directory or a metrics.jsonl file")
    seen: set[Path] = set()
    curves, longer = [], []
    for path in map(Path, paths):
        for metrics, name, long_name in find_metrics(path):
            if metrics.resolve() not in seen:
                seen.add(metrics.resolve())
                try:
                    curves.append(read_curve(metrics, name))
                except NoEpochs as e:          # a run still in its first epoch: draw the others
                    print(f"warning: skipped {e}", file=sys.stderr)
                    continue
                longer.append(long_name)
    if not curves:
        raise CurveError(f"no run under {', '.join(map(str, paths))} has finished an epoch yet")
    for curve in curves:
        if curve.stage == "finetune":
            curve.offset, curve.offset_from = finetune_offset(curve, curves)
    unique_names(curves, longer)
    rank = {stage: i for i, stage in enumerate(STAGE_ORDER)}
    curves.sort(key=lambda c: (rank.get(c.stage, len(rank)), c.name))
    return {curve.name: curve for curve in curves}


# ----------------------------------------------------------------------------------------------
# drawing

def legend_label(curve: Curve) -> str:
    """The system's name; a stage-2 run's label says where its x axis starts."""
    return f"{curve.name} (from {curve.offset_from})" if curve.offset_from else curve.name


def plot_curves(curves: dict[str, Curve], out: Path | str, title: str | None = None) -> Path:
    """Write the PNG: dev loss per epoch, and dev BLEU per epoch (a note when no run logged it)."""
    import matplotlib
    matplotlib.use("Agg")              # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = Path(out)
    fig, (loss_ax, bleu_ax) = plt.subplots(1, 2, figsize=(13, 5))
    xlabel = "epoch (stage-2 runs continue from their stage-1 epoch)"
    colors = {name: f"C{i % 10}" for i, name in enumerate(curves)}
    for curve in curves.values():
        loss = [v if math.isfinite(v) else math.nan for v in curve.dev_loss]
        loss_ax.plot(curve.x, loss, marker="o", color=colors[curve.name], label=legend_label(curve))
        points = [(x, b) for x, b in zip(curve.x, curve.dev_bleu) if b is not None]
        if points:
            xs, bleus = zip(*points)
            label = curve.name + (f" ({curve.bleu_search})" if curve.bleu_search else "")
            bleu_ax.plot(xs, bleus, marker="o", color=colors[curve.name], label=label)
    loss_ax.set(title="dev loss", xlabel=xlabel, ylabel="label-smoothed loss (nats per token)")
    loss_ax.legend(fontsize="small")
    bleu_ax.set(title="dev BLEU", xlabel=xlabel, ylabel="BLEU")
    if any(curve.has_bleu for curve in curves.values()):
        bleu_ax.legend(fontsize="small")
    else:
        bleu_ax.text(0.5, 0.5, "no dev BLEU logged", ha="center", va="center", transform=bleu_ax.transAxes)
        bleu_ax.set(xticks=[], yticks=[])
    for ax in (loss_ax, bleu_ax):
        if ax.lines:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def describe(curve: Curve) -> str:
    """One line of text per curve, for the terminal."""
    best = curve.best_epoch
    line = (f"{curve.name}: epochs {curve.x[0]}-{curve.x[-1]}, best dev loss "
            f"{curve.dev_loss[curve.epochs.index(best)]:.3f} at epoch {best + curve.offset}")
    bleus = [b for b in curve.dev_bleu if b is not None]
    return line + (f", last dev BLEU {bleus[-1]:.2f}" if bleus else "")


def truncated(curve: Curve, epochs: int | None) -> Curve:
    """The curve's first ``epochs`` epochs (all of them for None)."""
    if epochs is None:
        return curve
    keep = sum(1 for e in curve.epochs if e <= epochs)
    if keep == 0:
        raise CurveError(f"{curve.path}: no epoch among the first {epochs}")
    return dataclasses.replace(curve, epochs=curve.epochs[:keep], dev_loss=curve.dev_loss[:keep],
                               dev_bleu=curve.dev_bleu[:keep], dev_ppl=curve.dev_ppl[:keep],
                               train_ppl=curve.train_ppl[:keep])


def markdown_table(curves: dict[str, Curve], epochs: int | None = None) -> str:
    """Per epoch, each run's dev and train perplexity (the best epoch by dev loss in bold), then each
    run's best and the run with the lowest best dev loss: the choice a recipe search records. With
    ``epochs``, only the first that many epochs are shown and ranked."""
    runs = {name: truncated(curve, epochs) for name, curve in curves.items()}
    cell = lambda v: "" if v is None else f"{v:,.2f}"           # noqa: E731
    lines = ["| epoch | " + " | ".join(f"{name}: dev PPL | train PPL" for name in runs) + " |",
             "|---:|" + "---:|---:|" * len(runs)]
    for epoch in sorted({e for c in runs.values() for e in c.epochs}):
        row = []
        for c in runs.values():
            i = c.epochs.index(epoch) if epoch in c.epochs else None
            dev = None if i is None else cell(c.dev_ppl[i])
            row += [f"**{dev}**" if i is not None and epoch == c.best_epoch and dev else dev or "",
                    "" if i is None else cell(c.train_ppl[i])]
        lines.append(f"| {epoch} | " + " | ".join(row) + " |")
    lines.append("")
    best = {}
    for name, c in runs.items():
        i = c.epochs.index(c.best_epoch)
        best[name] = c.dev_loss[i]
        lines.append(f"{name}: best epoch {c.best_epoch} of {c.epochs[-1]}, dev loss {c.dev_loss[i]:.3f}, "
                     f"dev PPL {cell(c.dev_ppl[i]) or '?'}")
    span = f"in epochs 1-{epochs}" if epochs is not None else "over the epochs trained"
    lines.append(f"lowest best dev loss {span}: {min(best, key=best.get)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="experiment directories, train.py run directories or metrics.jsonl files")
    parser.add_argument("--out", type=Path, metavar="PNG",
                        help=f"the image to write (default: PATH/{DEFAULT_NAME} for a single directory)")
    parser.add_argument("--title", help="a title above both panels")
    parser.add_argument("--table", action="store_true",
                        help="print a Markdown table of dev and train perplexity per epoch and each run's best, "
                             "instead of drawing (no matplotlib needed)")
    parser.add_argument("--epochs", type=int, metavar="N",
                        help="--table: only the first N epochs, shown and ranked (runs trained longer compared "
                             "on equal terms)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.epochs is not None and (not args.table or args.epochs < 1):
            raise CurveError("--epochs N goes with --table, N >= 1")
        curves = read_curves(args.paths)
        if args.table:
            print(markdown_table(curves, args.epochs))
            return 0
        out = args.out
        if out is None:
            if len(args.paths) != 1 or not args.paths[0].is_dir():
                raise CurveError("give --out: the default (PATH/learning_curves.png) needs a single directory")
            out = args.paths[0] / DEFAULT_NAME
        for curve in curves.values():
            print(describe(curve))
        print(f"wrote {plot_curves(curves, out, args.title)}")
    except (CurveError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
