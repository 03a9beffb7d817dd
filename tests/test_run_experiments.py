"""tools/run_experiments.py end to end on a small slice of real IWSLT15 files in the Stanford NLP
layout (BOM, HTML entities, last line without newline), with a tiny random BERT; plus its checks."""
import json
import math
import re
from pathlib import Path

import pytest
import torch

from nmt.data.binarized import split_text
from nmt.metrics import SignificanceTest, corpus_bleu, paired_significance
from nmt.text.wordpiece import default_vocab_path
from nmt.train.evaluation import checkpoint_perplexity
from nmt.weights.checkpoint import load_checkpoint
from tests.conftest import SHARED_IWSLT, require_path, save_tiny_bert
from tools import run_experiments
from tools.evaluate import main as evaluate_main
from tools.prepare_data import main as prepare_main

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py: tiny models run faster on one thread


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


def _short(en: list[bytes], vi: list[bytes], start: int, n: int, max_words: int = 9) -> list[int]:
    keep = [i for i in range(start, len(en)) if 0 < len(en[i].split()) <= max_words and 0 < len(vi[i].split()) <= max_words]
    return keep[:n]


def _write(path: Path, lines: list[bytes], final_newline: bool = True) -> None:
    path.write_bytes(b"\n".join(lines) + (b"\n" if final_newline else b""))


@pytest.fixture(scope="module")
def stanford(tmp_path_factory) -> dict:
    """train.{en,vi} (40 short tst2012 pairs with &quot; entities), tst2012 as dev (10 other pairs),
    tst2013 as test: its first 4 lines (BOM on line 1) and its last line (no final newline)."""
    iwslt = require_path(SHARED_IWSLT)
    base = tmp_path_factory.mktemp("experiments")
    raw = base / "stanford"
    raw.mkdir()
    en12, vi12 = _lines(iwslt / "tst2012.en"), _lines(iwslt / "tst2012.vi")
    quoted = [i for i in range(len(en12)) if b"&quot;" in en12[i] and len(en12[i].split()) <= 14][:2]
    train = quoted + [i for i in _short(en12, vi12, 0, 60) if i not in quoted][:38]
    dev = [i for i in _short(en12, vi12, 700, 30) if i not in train][:10]
    for name, rows in (("train", train), ("tst2012", dev)):
        _write(raw / f"{name}.en", [en12[i] for i in rows])
        _write(raw / f"{name}.vi", [vi12[i] for i in rows])
    for lang in ("en", "vi"):
        lines = _lines(iwslt / f"tst2013.{lang}")
        assert lines[0].startswith(b"\xef\xbb\xbf") and lines[-1] != b""       # BOM; no final newline
        _write(raw / f"tst2013.{lang}", lines[:4] + lines[-1:], final_newline=False)
    assert b"&quot;" in (raw / "train.en").read_bytes()

    data = base / "iwslt-slice"
    assert prepare_main(["--train-prefix", str(raw / "train"), "--valid-prefix", str(raw / "tst2012"),
                         "--test-prefix", str(raw / "tst2013"), "--src", "en", "--tgt", "vi",
                         "--target-mode", "tokenized", "--bpe-merges", "120",
                         "--bert", str(default_vocab_path()), "--out", str(data)]) == 0
    bert = save_tiny_bert(base / "tiny_bert.pt")
    return {"base": base, "raw": raw, "data": data, "bert": bert}


TINY = ["--set", "decoder_layers=1", "--set", "max_sentences=10", "--set", "warmup_steps=2",
        "--beam", "2", "--bootstrap-samples", "50", "--threads", "1", "--no-progress"]


def _run(stanford, out: Path, *extra: str) -> int:
    return run_experiments.main(["--data", str(stanford["data"]), "--bert", str(stanford["bert"]),
                                 "--out", str(out), *TINY, *extra])


def test_bert_systems_end_to_end_then_rerun_skips_them(stanford, tmp_path, capsys):
    """Every BERT system of both tables with 2 epochs per run; the second call trains nothing."""
    out = tmp_path / "exp"
    assert _run(stanford, out, "--systems", "direct,decoder,finetune,table4", "--max-epochs", "2",
                "--finetune-lrs", "8e-5,4e-4,2e-5", "--table4-epochs", "0,1,3", "--no-dev-bleu") == 0
    table = (out / "results.md").read_text(encoding="utf-8")
    assert table in capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    for label in ("Transformer (transformer-base, from scratch)", "Direct fine-tuning (BERT + new decoder, end to end)",
                  "Decoder training (stage 1, BERT frozen)", "0 (random decoder: direct at the fine-tuning LR)", "1", "3"):
        assert label in rows, label
    assert sum(line.startswith("| + Fine-tuning (stage 2) |") for line in table.splitlines()) == 3
    assert any(k.startswith("until convergence (") for k in rows)
    assert "not run" in rows["Transformer (transformer-base, from scratch)"]
    assert "skipped" in rows["3"]                        # stage 1 ran 2 epochs: no checkpoint after epoch 3
    assert "tst2013 BLEU" in table and "No significance marks" in table

    ok = [json.loads(p.read_text()) for p in out.glob("*/result.json")]
    ok = [r for r in ok if r["status"] == "ok"]
    assert {r["system"] for r in ok} == {"direct", "decoder", "finetune-lr8e-5", "finetune-lr4e-4",
                                         "finetune-lr2e-5", "after-0", "after-1"}
    for r in ok:
        assert math.isfinite(r["dev"]["ppl"]) and r["dev"]["ppl"] > 1
        s = r["splits"]["test"]
        assert s["name"] == "tst2013" and s["sentences"] == 5
        assert all(0 <= s[k] <= 100 for k in ("bleu", "tok_bleu", "chrf"))
        assert r["train"]["epochs"] == 2
        assert len((out / r["system"] / "test.hyp").read_text(encoding="utf-8").split("\n")) == 6
    # one stage-1 run serves all fine-tuning runs, with its epoch-1 checkpoint for Table 4
    assert (out / "decoder" / "decoder" / "checkpoint_epoch1.pt").is_file()
    assert not (out / "finetune-lr8e-5" / "decoder").exists()
    by_name = {r["system"]: r for r in ok}
    assert by_name["after-1"]["init"] == "decoder/decoder/checkpoint_epoch1.pt"
    assert by_name["finetune-lr2e-5"]["init"] == "decoder/decoder/checkpoint_best.pt"
    assert by_name["after-0"]["stage"] == "direct" and by_name["after-0"]["lr"] == 8e-5
    # dev PPL of the best checkpoint = what the trainer logged for it
    records = [json.loads(x) for x in (out / "decoder" / "decoder" / "metrics.jsonl").read_text().splitlines()]
    best = [x for x in records if x.get("event") == "epoch" and x["improved"]][-1]
    assert by_name["decoder"]["dev"]["ppl"] == pytest.approx(best["dev"]["ppl"], rel=1e-5)

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*/checkpoint_*.pt")}
    assert _run(stanford, out, "--systems", "direct,decoder,finetune,table4", "--max-epochs", "2",
                "--finetune-lrs", "8e-5,4e-4,2e-5", "--table4-epochs", "0,1,3", "--no-dev-bleu") == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/checkpoint_*.pt")} == stamps
    assert capsys.readouterr().out.count(": done (results in") == 8
    assert (out / "results.md").read_text(encoding="utf-8") == table

    # a run without a result (still training, or killed) shows where it stands, from its metrics.jsonl
    (out / "direct" / "result.json").unlink()
    args = run_experiments.build_parser().parse_args(
        ["--data", str(stanford["data"]), "--bert", str(stanford["bert"]), "--out", str(out), *TINY,
         "--systems", "direct", "--finetune-lrs", "8e-5,4e-4,2e-5", "--table4-epochs", "0,1,3"])
    unfinished = run_experiments.make_experiment(args, print_fn=lambda *a: None).tables()
    records = [json.loads(x) for x in (out / "direct" / "direct" / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in records if x.get("event") == "epoch"]
    best = min(x["dev"]["ppl"] for x in epochs)
    finished = next(x for x in table.splitlines() if x.startswith("| Direct fine-tuning"))
    row = next(x for x in unfinished.splitlines() if x.startswith("| Direct fine-tuning"))
    assert row == (" | ".join(finished.split(" | ")[:2]) + f" | unfinished (best so far {best:.2f}) |  |  | "
                   f"2 so far | {epochs[-1]['cpu_seconds'] / 60:.1f} |")
    assert "unfinished: a run without a result yet" in unfinished
    assert [x for x in unfinished.splitlines() if x.startswith("| + Fine-tuning")] == \
        [x for x in table.splitlines() if x.startswith("| + Fine-tuning")]


@pytest.mark.slow
def test_baseline_is_prepared_and_marks_significance(stanford, tmp_path):
    """The Transformer baseline's source-BPE data is prepared from the same Stanford files; the
    other systems get significance marks against it."""
    out = tmp_path / "exp"
    assert _run(stanford, out, "--systems", "transformer,decoder", "--max-steps", "3") == 0
    meta = json.loads((out / "data-source-bpe" / "meta.json").read_text())
    assert meta["source"]["kind"] == "bpe" and set(meta["splits"]) == {"train", "valid", "test"}
    decoder = json.loads((out / "decoder" / "result.json").read_text())
    assert decoder["splits"]["valid"]["sentences"] == 10                 # --dev-bleu is on by default
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "approximate randomization, 50 trials" in table
    row = next(line for line in table.splitlines() if line.startswith("| Transformer"))
    assert re.search(r"\| \d+\.\d\d \|", row)


def test_continue_after_interruption(stanford, tmp_path, monkeypatch):
    """A run stopped mid-way (here: by --max-steps inside epoch 1, as after Ctrl-C) is resumed."""
    out = tmp_path / "exp"
    from nmt.train import trainer as trainer_module
    real_fit = trainer_module.Trainer.fit
    calls = []

    def fit_then_interrupt(self):
        calls.append(self.step)
        if len(calls) == 1:
            self.request_stop()                     # stop after the first update, as Ctrl-C does
        return real_fit(self)
    monkeypatch.setattr(trainer_module.Trainer, "fit", fit_then_interrupt)
    assert _run(stanford, out, "--systems", "decoder", "--max-epochs", "1", "--no-dev-bleu") == 130
    assert load_checkpoint(out / "decoder" / "decoder" / "checkpoint_last.pt")["step"] == 1
    assert not (out / "decoder" / "result.json").exists()
    assert _run(stanford, out, "--systems", "decoder", "--max-epochs", "1", "--no-dev-bleu") == 0
    assert calls == [0, 1]                          # the second call resumed at update 1
    result = json.loads((out / "decoder" / "result.json").read_text())
    assert result["status"] == "ok" and result["train"]["epochs"] == 1
    # Table 4 after 1 epoch when stage 1's best is epoch 1: the "until convergence" run, not run twice
    assert _run(stanford, out, "--systems", "after-1", "--table4-epochs", "1", "--max-epochs", "1") == 0
    assert json.loads((out / "after-1" / "result.json").read_text())["status"] == "same"
    assert "| 1 | = until convergence |" in (out / "results.md").read_text(encoding="utf-8")
    assert not (out / "after-1" / "finetune").exists()


def test_a_diverged_run_is_a_result_not_an_error(stanford, tmp_path, monkeypatch):
    """DivergedError (by type, not by message) ends that system as "diverged"; the study goes on."""
    from nmt.errors import DivergedError
    from nmt.train import trainer as trainer_module

    def diverge(self):
        raise DivergedError("the loss blew up")
    monkeypatch.setattr(trainer_module.Trainer, "fit", diverge)
    out = tmp_path / "exp"
    assert _run(stanford, out, "--systems", "decoder", "--max-epochs", "1", "--no-dev-bleu") == 0
    result = json.loads((out / "decoder" / "result.json").read_text())
    assert result["status"] == "diverged" and result["reason"] == "the loss blew up"


def test_bad_input_is_a_clear_error(stanford, tmp_path, capsys):
    out = str(tmp_path / "exp")
    cases = [
        (["--data", str(tmp_path / "missing")], "data directory not found"),
        (["--data", str(stanford["data"]), "--systems", "decoder,bogus"], "unknown system 'bogus'"),
        (["--data", str(stanford["data"]), "--set", "no_such_field=1"], "TrainConfig field"),
        (["--data", str(stanford["data"]), "--finetune-lrs", "8e-5,x"], "comma-separated"),
        (["--pair", "xx-yy"], "unknown demo --pair"),
        (["--data", str(stanford["data"]), "--max-epochs", "3,stage9=2"], "STAGE=N"),
    ]
    for argv, message in cases:
        assert run_experiments.main([*argv, "--out", out]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (argv, err)
    # a data directory without a test split
    no_test = tmp_path / "no-test"
    raw = stanford["raw"]
    assert prepare_main(["--train-prefix", str(raw / "train"), "--valid-prefix", str(raw / "tst2012"),
                         "--src", "en", "--tgt", "vi", "--target-mode", "tokenized", "--bpe-merges", "50",
                         "--bert", str(default_vocab_path()), "--out", str(no_test)]) == 0
    capsys.readouterr()
    assert run_experiments.main(["--data", str(no_test), "--out", out, "--systems", "decoder"]) == 2
    assert "no test split" in capsys.readouterr().err


def test_evaluate_cli_prints_checkpoint_perplexity(stanford, tmp_path, capsys):
    out = tmp_path / "exp"
    assert _run(stanford, out, "--systems", "decoder", "--max-epochs", "1", "--no-dev-bleu") == 0
    ckpt = out / "decoder" / "decoder" / "checkpoint_best.pt"
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(ckpt), "--data", str(stanford["data"])]) == 0
    line = capsys.readouterr().out
    ppl = checkpoint_perplexity(ckpt, stanford["data"])["ppl"]
    assert line.startswith("valid: loss ") and f"ppl {ppl:.2f}" in line
    assert evaluate_main(["--checkpoint", str(ckpt), "--data", str(stanford["data"]), "--split", "test9"]) == 2
    assert "no split 'test9'" in capsys.readouterr().err

    # the dropout diagnostic: the first batch of the training split, dropout off and on (seeded masks)
    off = checkpoint_perplexity(ckpt, stanford["data"], "train", max_batches=1)
    on = checkpoint_perplexity(ckpt, stanford["data"], "train", max_batches=1, dropout=True)
    full = checkpoint_perplexity(ckpt, stanford["data"], "train")
    assert on["sentences"] == off["sentences"] < full["sentences"] and on["tokens"] == off["tokens"]
    assert on["ppl"] != off["ppl"]
    rng = torch.get_rng_state()
    assert checkpoint_perplexity(ckpt, stanford["data"], "train", max_batches=1, dropout=True) == on
    assert torch.equal(torch.get_rng_state(), rng)                     # the caller's RNG untouched
    assert evaluate_main(["--checkpoint", str(ckpt), "--data", str(stanford["data"]), "--split", "train",
                          "--max-batches", "1", "--dropout-on"]) == 0
    assert capsys.readouterr().out.startswith(f"train (dropout on): loss {on['loss']:.4f} nll {on['nll']:.4f} "
                                              f"ppl {on['ppl']:.2f} ")
    assert evaluate_main(["--checkpoint", str(ckpt), "--data", str(stanford["data"]), "--max-batches", "0"]) == 2
    assert "--max-batches must be at least 1" in capsys.readouterr().err


def test_matched_baseline_trains_last_with_the_cpu_time_of_stage_1_and_2(stanford, tmp_path, capsys):
    """--baseline-budget matched: the small baseline runs after stage 1 and the main fine-tuning run,
    with --max-cpu-minutes = their CPU time, and the table says so."""
    out = tmp_path / "exp"
    assert _run(stanford, out, "--systems", "transformer,decoder,finetune-lr8e-5", "--baseline-arch",
                "transformer-small", "--baseline-budget", "matched", "--max-epochs", "1,scratch=50",
                "--no-dev-bleu") == 0
    records = {name: [json.loads(line) for line in (out / name / stage / "metrics.jsonl").read_text().splitlines()]
               for name, stage in (("decoder", "decoder"), ("finetune-lr8e-5", "finetune"), ("transformer", "scratch"))}
    spent = sum([r for r in records[name] if r["event"] == "epoch"][-1]["cpu_seconds"]
                for name in ("decoder", "finetune-lr8e-5"))
    start = records["transformer"][0]
    assert start["event"] == "start" and start["config"]["arch"] == "transformer-small"
    assert start["config"]["max_cpu_minutes"] == pytest.approx(spent / 60)
    assert start["config"]["dropout"] == 0.3 and start["config"]["lr"] == 1e-3     # the low-resource recipe
    assert records["transformer"][0]["time"] > records["finetune-lr8e-5"][-1]["time"]  # trained last
    baseline = json.loads((out / "transformer" / "result.json").read_text())
    assert baseline["train"]["stop"] in ("cpu_budget", "converged")
    assert baseline["train"]["cpu_seconds"] >= spent or baseline["train"]["stop"] == "converged"
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "the baseline and the control were given the CPU time of decoder + finetune-lr8e-5" in table
    assert "| Transformer (transformer-small, from scratch) | 1e-3 |" in table
    # a budget system still training (in another process: no train.json yet) is no budget
    (out / "finetune-lr8e-5" / "finetune" / "train.json").unlink()
    assert _run(stanford, out, "--systems", "control", "--baseline-arch", "transformer-small", "--baseline-budget",
                "matched", "--max-epochs", "1,scratch=50", "--no-dev-bleu") == 2
    assert "finetune has not finished training (no train.json)" in capsys.readouterr().err


def test_control_and_converged_baselines(stanford, tmp_path):
    """The same network without pre-training (--control-arch) gets the matched budget; the converged
    systems train on until early stopping or --max-epochs, with no CPU cap; Table 3 order."""
    out = tmp_path / "exp"
    assert _run(stanford, out, "--systems", "control,converged,decoder,finetune-lr8e-5", "--baseline-arch",
                "transformer-small", "--control-arch", "transformer-minilm-size", "--baseline-budget", "matched",
                "--max-epochs", "1,scratch=2", "--set", "max_sentences=40", "--no-dev-bleu") == 0

    def start(name):
        return json.loads((out / name / "scratch" / "metrics.jsonl").read_text().splitlines()[0])["config"]
    control = start("control")
    assert control["arch"] == "transformer-minilm-size" and control["lr"] == 5e-4 and control["warmup_epochs"] == 4.0 \
        and control["max_cpu_minutes"] > 0
    # fp32 for every system, whatever the CPU: over the demo preset's --amp auto too (flags beat presets)
    assert json.loads((out / "experiment.json").read_text())["given"]["amp"] == "off" and control["amp"] == "off"
    # no matched Transformer here: its converged twin trains from scratch without a cap; the control's
    # converged twin continues the control's run (the start record is the control's, with its cap)
    cfg = start("transformer-converged")
    assert cfg["arch"] == "transformer-small" and cfg["max_cpu_minutes"] is None and cfg["max_epochs"] == 2
    assert start("control-converged") == {**control, "run_dir": str(out / "control")}
    for name in ("transformer-converged", "control-converged"):
        result = json.loads((out / name / "result.json").read_text())
        assert result["status"] == "ok" and result["train"]["stop"] == "max_epochs"     # 2 epochs: no early stop
    log = (out / "experiment.log").read_text()
    assert "== transformer-converged: from scratch (transformer, the same run with a CPU cap, has not finished" in log
    assert "== control-converged: continuing control's run after its epoch" in log
    rows = [line.split(" | ")[0] for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert rows[1:5] == ["| Transformer (transformer-small, from scratch)",
                         "| Transformer (transformer-small, from scratch, converged)",
                         "| Transformer, BERT's shape (transformer-minilm-size, from scratch)",
                         "| Transformer, BERT's shape (transformer-minilm-size, from scratch, converged)"]
    # the converged baseline gets a table of its own, its marks from the same test as the main one
    text = (out / "results.md").read_text()
    # a converged run that stopped at --max-epochs, not on its dev loss, says so; the capped control does not
    epochs = {line.split(" | ")[0]: line.split(" | ")[-2] for line in text.split("\n\n### ")[0].splitlines()[2:]
              if line.startswith("| ")}
    capped = [cell for label, cell in epochs.items() if label.endswith("converged)")]
    assert len(capped) == 2 and all(cell.startswith("2 (") and cell.endswith("epoch cap)") for cell in capped), epochs
    assert not any("epoch cap" in cell for label, cell in epochs.items() if not label.endswith("converged)"))
    assert '"epoch cap": --max-epochs came first' in text
    section = text.split("### Against the converged Transformer baseline")[1].split("\n\n")[1].splitlines()
    assert [line.split(" | ")[0] for line in section[2:]] == \
        ["| Transformer (transformer-small, from scratch, converged)",      # the reference, unmarked
         "| Transformer, BERT's shape (transformer-minilm-size, from scratch)",
         "| Transformer, BERT's shape (transformer-minilm-size, from scratch, converged)",
         "| Decoder training (stage 1, BERT frozen)", "| + Fine-tuning (stage 2)"]
    test = split_text(stanford["data"], "test")[1]

    def hyps(name):
        return (out / name / "test.hyp").read_text(encoding="utf-8").splitlines()
    for line, name in zip(section[3:], ("control", "control-converged", "decoder", "finetune-lr8e-5")):
        want = paired_significance(hyps(name), hyps("transformer-converged"), test, SignificanceTest.named("ar", 50))
        assert line.split(" | ")[3] == f"{want.bleu:.2f}" + (f" {want.mark}" if want.mark else ""), line
    assert "compare with the converged Transformer baseline" in text


def test_a_converged_run_continues_its_matched_twin_exactly(stanford, tmp_path, monkeypatch):
    """control-converged after control (capped after its first epoch) = control-converged from
    scratch, epoch by epoch and token by token; its CPU time includes the control's."""
    monkeypatch.setattr(run_experiments.Experiment, "matched_budget", lambda self: 1e-3)   # stop after epoch 1
    common = ["--baseline-arch", "transformer-small", "--control-arch", "transformer-small", "--baseline-budget",
              "matched", "--max-epochs", "scratch=3", "--set", "max_sentences=40", "--no-dev-bleu"]
    continued, scratch = tmp_path / "continued", tmp_path / "scratch"
    assert _run(stanford, continued, "--systems", "control,control-converged", *common) == 0
    assert _run(stanford, scratch, "--systems", "control-converged", *common) == 0
    twin = json.loads((continued / "control" / "result.json").read_text())["train"]
    assert twin["stop"] == "cpu_budget" and twin["epochs"] == 1
    assert "== control-converged: continuing control's run after its epoch 1" in (continued / "experiment.log").read_text()
    assert "from scratch (control, the same run with a CPU cap, has not finished" in (scratch / "experiment.log").read_text()

    def epochs(out):
        return [r for r in run_experiments.metrics_records(out / "control-converged" / "scratch") if r["event"] == "epoch"]
    a, b = epochs(continued), epochs(scratch)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [1, 2, 3]
    for x, y in zip(a, b):
        assert x["train"] == y["train"] and x["dev"] == y["dev"], (x, y)
    twin_epoch = [r for r in run_experiments.metrics_records(continued / "control" / "scratch") if r["event"] == "epoch"]
    assert a[0]["cpu_seconds"] == twin_epoch[0]["cpu_seconds"]          # the twin's epoch, counted once
    hyps = [(out / "control-converged" / "test.hyp").read_bytes() for out in (continued, scratch)]
    assert hyps[0] == hyps[1] and hyps[0].strip()


def test_train_only_ranks_a_recipe_on_the_dev_loss_without_decoding(stanford, tmp_path):
    """--train-only (a recipe search): the run trains with the --set value, nothing is decoded or
    scored (no result.json, no .hyp), and results.md gives its best dev PPL from metrics.jsonl."""
    out = tmp_path / "grid-dropout0.1"
    assert _run(stanford, out, "--systems", "control", "--control-arch", "transformer-minilm-size",
                "--baseline-budget", "epochs", "--max-epochs", "scratch=2", "--set", "dropout=0.1",
                "--train-only") == 0
    records = [json.loads(line) for line in (out / "control" / "scratch" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["config"]["dropout"] == 0.1
    assert not (out / "control" / "result.json").exists() and not list((out / "control").glob("*.hyp"))
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    best = min(r["dev"]["ppl"] for r in epochs)
    table = (out / "results.md").read_text(encoding="utf-8")
    assert f"| unfinished (best so far {best:.2f}) |" in table and "| 2 so far |" in table
    # run again: the finished run is neither trained nor evaluated again
    before = (out / "control" / "scratch" / "metrics.jsonl").read_bytes()
    assert _run(stanford, out, "--systems", "control", "--control-arch", "transformer-minilm-size",
                "--baseline-budget", "epochs", "--max-epochs", "scratch=2", "--set", "dropout=0.1",
                "--train-only") == 0
    assert (out / "control" / "scratch" / "metrics.jsonl").read_bytes() == before
    assert not (out / "control" / "result.json").exists()


def _finished_run(out: Path, name: str, hyps: list[str], refs: list[str]) -> None:
    """What a finished, evaluated system leaves in OUT/NAME: result.json and test.hyp (no checkpoints)."""
    (out / name).mkdir(parents=True)
    (out / name / "test.hyp").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    bleu, signature = corpus_bleu(hyps, refs, "13a")
    tok_bleu, tok_signature = corpus_bleu(hyps, refs, "none")
    result = {"system": name, "status": "ok", "dev": {"ppl": 12.5},
              "train": {"stop": "converged", "epochs": 3, "best_epoch": 2, "cpu_seconds": 60.0},
              "splits": {"test": {"name": "tst2013", "sentences": len(refs), "bleu": bleu.score,
                                  "tok_bleu": tok_bleu.score, "chrf": 50.0, "signature": signature,
                                  "tok_signature": tok_signature}}}
    (out / name / "result.json").write_text(json.dumps(result), encoding="utf-8")


def test_a_finished_study_is_re_marked_from_its_hypotheses(stanford, tmp_path, capsys):
    """--tables-only rewrites results.md from the stored result.json and test.hyp files with the
    test --significance names, training and decoding nothing. Stage 1 here differs from the
    baseline in one sentence: AR marks it (+) (MultEval's strict count: p = 1/(B+1)), the
    one-sided bootstrap does not; stage 2 is the reference itself, (+) by every test."""
    out = tmp_path / "study"
    refs = split_text(stanford["data"], "test")[1]
    baseline = [" ".join(line.split()[: len(line.split()) // 2]) for line in refs]
    _finished_run(out, "transformer", baseline, refs)
    _finished_run(out, "decoder", [refs[0]] + baseline[1:], refs)
    _finished_run(out, "finetune-lr8e-5", refs, refs)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def cells(table: str, label: str) -> list[str]:
        row = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
        return row.split(" | ")[3:5]                      # test BLEU, test tok. BLEU

    def remark(*extra: str) -> str:
        assert run_experiments.main(["--data", str(stanford["data"]), "--bert", str(stanford["bert"]), "--out",
                                     str(out), "--tables-only", "--no-progress", *extra]) == 0
        return (out / "results.md").read_text(encoding="utf-8")

    table = remark()                                        # the default: the paper's test
    assert "(test: approximate randomization, 10,000 trials, seed 12345, p < 0.05; the paper's MultEval test" in table
    assert all(cell.endswith(" (+)") for label in ("Decoder training (stage 1, BERT frozen)", "+ Fine-tuning (stage 2)")
               for cell in cells(table, label))
    table = remark("--significance", "bootstrap-one-sided")
    assert "(test: one-sided paired bootstrap, 1,000 resamples, seed 12345, p < 0.05; Koehn 2004" in table
    assert "approximate randomization" not in table
    stage1 = json.loads((out / "decoder" / "result.json").read_text())["splits"]["test"]
    assert cells(table, "Decoder training (stage 1, BERT frozen)") == [f"{stage1['bleu']:.2f}", f"{stage1['tok_bleu']:.2f}"]
    assert all(cell.endswith(" (+)") for cell in cells(table, "+ Fine-tuning (stage 2)"))
    # nothing trained or decoded, the stored results untouched, no record of a training invocation written
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {p: after[p] for p in before} == before
    assert sorted(p.name for p in set(after) - set(before)) == ["experiment.log", "results.md"]
    # a bad test or a directory without results: one error line, exit 2
    capsys.readouterr()
    assert run_experiments.main(["--data", str(stanford["data"]), "--out", str(out), "--tables-only",
                                 "--significance-samples", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --significance-samples must be >= 1")
    assert run_experiments.main(["--data", str(stanford["data"]), "--out", str(tmp_path / "none"), "--tables-only"]) == 2
    assert "no results to tabulate" in capsys.readouterr().err
