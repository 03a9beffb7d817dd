"""tools/plot_curves.py on small synthetic metrics.jsonl files laid out as tools/run_experiments.py
and train.py write them: the series read (epochs, offsets, dev loss, dev BLEU), the PNG, bad input."""
import json
import re
from pathlib import Path

import pytest

from tools.plot_curves import CurveError, main, plot_curves, read_curves


def start(stage: str, init: str | None = None) -> dict:
    return {"time": 1.0, "event": "start", "config": {"stage": stage, "lr": 4e-4, "init": init}, "world_size": 1}


def epoch(n: int, dev_loss: float, bleu: float | None = None, search: str = "greedy") -> dict:
    record = {"time": 2.0, "event": "epoch", "epoch": n, "step": 10 * n, "seconds": 1.5,
              "train": {"loss": dev_loss + 0.5, "nll": dev_loss, "ppl": 10.0},
              "dev": {"loss": dev_loss, "nll": dev_loss - 0.2, "ppl": 9.0, "tokens": 100, "sentences": 10},
              "best_dev_loss": dev_loss, "improved": True}
    if bleu is not None:
        record.update(dev_bleu=bleu, dev_bleu_search=search)
    return record


def write_metrics(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def experiment(tmp_path) -> Path:
    """An experiment directory: stage 1 (3 epochs, best 2), two fine-tuning runs (from its best
    checkpoint and from its epoch 1), a resumed transformer run repeating epoch 2."""
    out = tmp_path / "exp"
    stage1 = out / "decoder" / "decoder"
    write_metrics(stage1 / "metrics.jsonl", [
        start("decoder"), {"event": "train", "step": 5, "epoch": 1, "loss": 9.0},
        epoch(1, 5.0, 1.0), epoch(2, 4.0, 3.0), epoch(3, 4.5, 2.5)])
    write_metrics(out / "finetune-lr8e-5" / "finetune" / "metrics.jsonl", [
        start("finetune", init=None), epoch(1, 3.5, 5.0, "beam 4"), epoch(2, 3.2, 6.0, "beam 4")])
    write_metrics(out / "after-1" / "finetune" / "metrics.jsonl", [
        start("finetune", init=str(stage1 / "checkpoint_epoch1.pt")), epoch(1, 4.2)])
    write_metrics(out / "transformer" / "scratch" / "metrics.jsonl", [
        start("scratch"), epoch(1, 7.0), epoch(2, 6.8), {"event": "interrupted", "step": 25, "epoch": 3},
        start("scratch"), epoch(2, 6.5), epoch(3, 6.0)])
    return out


def test_read_curves_experiment(experiment):
    curves = read_curves([experiment])
    assert list(curves) == ["transformer", "decoder", "after-1", "finetune-lr8e-5"]   # by stage, then name

    decoder = curves["decoder"]
    assert decoder.stage == "decoder" and decoder.offset == 0 and decoder.best_epoch == 2
    assert decoder.x == [1, 2, 3]
    assert decoder.dev_loss == [5.0, 4.0, 4.5]
    assert decoder.dev_bleu == [1.0, 3.0, 2.5]

    best = curves["finetune-lr8e-5"]          # init null: continues from stage 1's best epoch
    assert best.offset == 2 and best.x == [3, 4]
    assert best.dev_loss == [3.5, 3.2] and best.dev_bleu == [5.0, 6.0] and best.bleu_search == "beam 4"

    after1 = curves["after-1"]                # init checkpoint_epoch1.pt
    assert after1.offset == 1 and after1.x == [2]
    assert after1.dev_bleu == [None] and not after1.has_bleu

    transformer = curves["transformer"]       # resumed: the last record of epoch 2 wins
    assert transformer.x == [1, 2, 3]
    assert transformer.dev_loss == [7.0, 6.5, 6.0]


def test_run_dirs_offset_and_clashing_names(tmp_path):
    """train.py run directories: stage 1 next to stage 2 (init checkpoint_best.pt), and two runs'
    "decoder" curves told apart by their run directory."""
    for run, best_loss in (("run-a", 3.0), ("run-b", 5.0)):
        write_metrics(tmp_path / run / "decoder" / "metrics.jsonl",
                      [start("decoder"), epoch(1, 6.0), epoch(2, 5.5), epoch(3, best_loss)])
    write_metrics(tmp_path / "run-a" / "finetune" / "metrics.jsonl",
                  [start("finetune", init="run-a/decoder/checkpoint_best.pt"), epoch(1, 2.5)])
    curves = read_curves([tmp_path / "run-a", tmp_path / "run-b"])
    assert set(curves) == {"run-a/decoder", "run-b/decoder", "finetune"}
    assert curves["finetune"].offset == 3 and curves["finetune"].x == [4]
    assert curves["run-b/decoder"].dev_loss == [6.0, 5.5, 5.0]

    alone = read_curves([tmp_path / "run-a" / "finetune" / "metrics.jsonl"])   # no stage 1 among the inputs
    assert alone["run-a/finetune"].offset == 0


def test_draws_png(experiment, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main([str(experiment), "--title", "synthetic"]) == 0
    png = experiment / "learning_curves.png"
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000
    assert "wrote" in capsys.readouterr().out

    no_bleu = plot_curves(read_curves([experiment / "transformer"]), tmp_path / "sub" / "no-bleu.png")
    assert no_bleu.read_bytes().startswith(b"\x89PNG")


def test_malformed_line_names_file_and_line(tmp_path, capsys):
    path = write_metrics(tmp_path / "run" / "decoder" / "metrics.jsonl", [start("decoder"), epoch(1, 5.0)])
    path.write_text(path.read_text() + '{"event": "epoch", "epoch": 2,\n' + json.dumps(epoch(3, 4.0)) + "\n")
    with pytest.raises(CurveError, match=re.escape(f"{path}:3: not a JSON line")):
        read_curves([tmp_path / "run"])
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "x.png")]) == 2
    assert f"{path}:3" in capsys.readouterr().err


def test_partial_last_line_is_skipped(tmp_path):
    """A run still training: its last line may be half written (no newline yet)."""
    path = write_metrics(tmp_path / "run" / "decoder" / "metrics.jsonl", [start("decoder"), epoch(1, 5.0)])
    path.write_text(path.read_text() + '{"event": "epoch", "ep')
    assert read_curves([path])["run/decoder"].x == [1]


def test_bad_inputs(tmp_path, capsys):
    with pytest.raises(CurveError, match="no such file"):
        read_curves([tmp_path / "missing"])
    empty = write_metrics(tmp_path / "run" / "decoder" / "metrics.jsonl", [start("decoder")])
    with pytest.raises(CurveError, match="has finished an epoch yet"):
        read_curves([tmp_path / "run"])
    # a run still in its first epoch next to finished ones is skipped with a warning
    write_metrics(tmp_path / "run" / "finetune" / "metrics.jsonl", [start("finetune"), epoch(1, 4.0)])
    assert list(read_curves([tmp_path / "run"])) == ["finetune"]
    assert f"skipped {empty}: no epoch records" in capsys.readouterr().err
    (tmp_path / "nothing-here").mkdir()
    with pytest.raises(CurveError, match="nothing-here: no metrics.jsonl"):
        read_curves([tmp_path / "nothing-here"])
    bad = write_metrics(tmp_path / "bad" / "decoder" / "metrics.jsonl",
                        [start("decoder"), {"event": "epoch", "epoch": 1}])
    with pytest.raises(CurveError, match=re.escape(f"{bad}:2: dev loss is not a number")):
        read_curves([bad])
    for run in ("a", "b"):
        write_metrics(tmp_path / run / "decoder" / "metrics.jsonl", [start("decoder"), epoch(1, 5.0)])
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 2      # two inputs: --out is needed
    assert "give --out" in capsys.readouterr().err


def test_table_records_a_recipe_search(tmp_path, capsys):
    """--table: a grid of one experiment directory per setting, as docs/experiments.md runs it. Per
    epoch each run's dev and train PPL (best epoch by dev loss in bold), then the bests and the choice;
    --epochs ranks on the first N epochs only: here the run that wins later loses on epochs 1-2."""
    def grid_run(setting: str, losses: list[float]) -> Path:
        records = [start("scratch")]
        for n, loss in enumerate(losses, 1):
            r = epoch(n, loss)
            r["dev"]["ppl"], r["train"]["ppl"] = round(2.0 ** loss, 2), 100.0 + n
            records.append(r)
        write_metrics(tmp_path / f"dropout{setting}" / "control" / "scratch" / "metrics.jsonl", records)
        return tmp_path / f"dropout{setting}"

    a, b = grid_run("0.1", [9.0, 8.0, 5.0]), grid_run("0.3", [8.5, 7.0])
    assert main([str(a), str(b), "--table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:5] == [
        "| epoch | dropout0.1/control: dev PPL | train PPL | dropout0.3/control: dev PPL | train PPL |",
        "|---:|---:|---:|---:|---:|",
        "| 1 | 512.00 | 101.00 | 362.04 | 101.00 |",
        "| 2 | 256.00 | 102.00 | **128.00** | 102.00 |",
        "| 3 | **32.00** | 103.00 |  |  |"]
    assert lines[6:] == ["dropout0.1/control: best epoch 3 of 3, dev loss 5.000, dev PPL 32.00",
                         "dropout0.3/control: best epoch 2 of 2, dev loss 7.000, dev PPL 128.00",
                         "lowest best dev loss over the epochs trained: dropout0.1/control"]
    assert main([str(a), str(b), "--table", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "| 3 |" not in out and "dropout0.1/control: best epoch 2 of 2, dev loss 8.000" in out
    assert out.endswith("lowest best dev loss in epochs 1-2: dropout0.3/control\n")
    assert main([str(a), "--epochs", "2"]) == 2
    assert capsys.readouterr().err == "error: --epochs N goes with --table, N >= 1\n"
