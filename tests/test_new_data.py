"""Continuing a trained model on new data (issue 39): tools/prepare_data.py --pipelines-from MODEL
encodes the new data with the model's own pipelines, then train.py --stage finetune --init MODEL
--reset-optimizer trains on it. Real IWSLT15 slices (tst2012 as data A, tst2013 as data B, one
sentence in both) and a tiny random BERT built here."""
from pathlib import Path

import pytest

import train as train_cli
from nmt.data.binarized import ParallelData
from nmt.text.lines import open_text_lines
from nmt.text.vocab import Vocab
from nmt.text.wordpiece import default_vocab_path
from nmt.weights.checkpoint import load_checkpoint
from tests.conftest import SHARED_IWSLT, require_path, save_tiny_bert
from tools.prepare_data import main as prepare_main

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py: tiny models run faster on one thread

TRAIN = ["--max-steps", "2", "--no-progress", "--encoder-cache", "off", "--max-sentences", "8",
         "--decoder-layers", "1", "--threads", "1"]


def _short_pairs(prefix: Path, start: int, n: int) -> list[tuple[str, str]]:
    en = [line for _, line in open_text_lines(Path(f"{prefix}.en"))]
    vi = [line for _, line in open_text_lines(Path(f"{prefix}.vi"))]
    return [(e, v) for e, v in zip(en[start:], vi[start:]) if 0 < len(e.split()) <= 10 and 0 < len(v.split()) <= 10][:n]


def _write(directory: Path, name: str, pairs: list[tuple[str, str]]) -> Path:
    for side, lang in ((0, "en"), (1, "vi")):
        (directory / f"{name}.{lang}").write_text("".join(p[side] + "\n" for p in pairs), encoding="utf-8")
    return directory / name


@pytest.fixture(scope="module")
def model_a(tmp_path_factory) -> dict:
    """Data A prepared normally, a stage-1 model trained on it for 2 updates, and raw data B."""
    iwslt = require_path(SHARED_IWSLT)
    base = tmp_path_factory.mktemp("new-data")
    raw = base / "raw"
    raw.mkdir()
    a, b = _short_pairs(iwslt / "tst2012", 0, 30), _short_pairs(iwslt / "tst2013", 0, 30)
    shared = a[3]
    prefixes = {"a": _write(raw, "a", a[:24]), "a-dev": _write(raw, "a-dev", a[24:]),
                "b": _write(raw, "b", b[:20] + [shared]), "b-dev": _write(raw, "b-dev", b[20:])}
    data_a = base / "data-a"
    assert prepare_main(["--train-prefix", str(prefixes["a"]), "--valid-prefix", str(prefixes["a-dev"]),
                         "--src", "en", "--tgt", "vi", "--target-mode", "tokenized", "--bpe-merges", "60",
                         "--bert", str(default_vocab_path()), "--out", str(data_a)]) == 0
    bert = save_tiny_bert(base / "tiny_bert.pt")
    run = base / "run-a"
    assert train_cli.main(["--stage", "decoder", "--data", str(data_a), "--bert", str(bert), "--run-dir", str(run),
                           *TRAIN]) == 0
    return {"base": base, "prefixes": prefixes, "data_a": data_a, "run": run, "shared": shared,
            "checkpoint": run / "decoder" / "checkpoint_last.pt"}


def _prepare_b(model_a, out: Path, *extra: str) -> int:
    p = model_a["prefixes"]
    return prepare_main(["--train-prefix", str(p["b"]), "--valid-prefix", str(p["b-dev"]), "--src", "en",
                         "--tgt", "vi", "--out", str(out), *extra])


def test_new_data_gets_the_models_pipelines_byte_for_byte(model_a, capsys):
    data_b = model_a["base"] / "data-b"
    assert _prepare_b(model_a, data_b, "--pipelines-from", str(model_a["checkpoint"])) == 0
    out = capsys.readouterr().out
    assert "tgt <unk>" in out and "learning" not in out                       # nothing learned
    for name in ("source.json", "target.json"):
        assert (data_b / name).read_bytes() == (model_a["data_a"] / name).read_bytes(), name
    a, b = ParallelData(model_a["data_a"], "train", verify=True), ParallelData(data_b, "train", verify=True)
    assert len(b) == 21
    pair_a, pair_b = a.pair(3), b.pair(20)                 # the shared sentence: line 4 of A, line 21 of B
    assert pair_a[0].tolist() == pair_b[0].tolist() and pair_a[1].tolist() == pair_b[1].tolist()
    # new target words that A's BPE cannot spell from A's symbols become <unk>, counted in the summary
    unk = sum(int((b.pair(i)[1] == Vocab.UNK).sum()) for i in range(len(b)))
    assert unk > 0
    row = next(line for line in out.splitlines() if line.startswith("train "))
    assert row.split()[-1] == f"{unk:,}"


def test_pipelines_from_refuses_settings_it_replaces(model_a, capsys):
    ckpt = str(model_a["checkpoint"])
    for extra in (["--bert", "x"], ["--cased"], ["--bpe-merges", "10"], ["--source-bpe"]):
        assert _prepare_b(model_a, model_a["base"] / "x", "--pipelines-from", ckpt, *extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --pipelines-from") and "drop --" in err and err.count("\n") == 1
    assert _prepare_b(model_a, model_a["base"] / "x", "--pipelines-from", ckpt, "--target-mode", "raw") == 2
    assert "differs from the 'tokenized' mode" in capsys.readouterr().err
    assert _prepare_b(model_a, model_a["base"] / "x", "--pipelines-from", str(model_a["base"] / "none.pt")) == 2
    assert "no such checkpoint file or run directory" in capsys.readouterr().err


def test_continue_on_new_data_with_reset_optimizer(model_a, capsys):
    """Stage 1 of A, continued on B (prepared with its pipelines), then that fine-tuned model continued
    again from its run directory: --init RUN_DIR with --reset-optimizer takes finetune/ first."""
    data_b = model_a["base"] / "data-b2"
    assert _prepare_b(model_a, data_b, "--pipelines-from", str(model_a["checkpoint"])) == 0
    run_b = model_a["base"] / "run-b"
    argv = ["--stage", "finetune", "--data", str(data_b), "--run-dir", str(run_b), "--reset-optimizer", *TRAIN]
    capsys.readouterr()
    assert train_cli.main([*argv, "--init", str(model_a["checkpoint"])]) == 0
    assert "fresh optimizer, schedule and best score: --reset-optimizer" in capsys.readouterr().out
    state = load_checkpoint(run_b / "finetune" / "checkpoint_last.pt")
    assert state["step"] == 2 and state["config"]["reset_optimizer"] is True

    # a run directory: its best model, finetune/ before decoder/
    (run_b / "finetune" / "checkpoint_best.pt").write_bytes((run_b / "finetune" / "checkpoint_last.pt").read_bytes())
    run_c = model_a["base"] / "run-c"
    argv_c = [a if a != str(run_b) else str(run_c) for a in argv]
    assert train_cli.main([*argv_c, "--init", str(run_b)]) == 0
    assert f"fine-tuning from {run_b / 'finetune' / 'checkpoint_best.pt'}" in capsys.readouterr().out


def test_data_with_other_pipelines_is_refused_with_the_fix(model_a, capsys):
    data_new = model_a["base"] / "data-b-own-bpe"
    assert _prepare_b(model_a, data_new, "--target-mode", "tokenized", "--bpe-merges", "40",
                      "--bert", str(default_vocab_path())) == 0
    capsys.readouterr()
    code = train_cli.main(["--stage", "finetune", "--data", str(data_new), "--run-dir", str(model_a["base"] / "r"),
                           "--init", str(model_a["checkpoint"]), "--reset-optimizer", *TRAIN])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "target vocabulary" in err and f"--pipelines-from {model_a['checkpoint']}" in err


def test_reset_optimizer_only_with_finetune(capsys):
    assert train_cli.main(["--stage", "decoder", "--data", "nowhere", "--reset-optimizer"]) == 2
    assert "--reset-optimizer goes with --stage finetune" in capsys.readouterr().err
