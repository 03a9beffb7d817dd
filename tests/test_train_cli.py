"""The user's path end to end through the command lines: train.py on the embedded default (no data
arguments: demo corpus + the installed all-MiniLM-L6-v2), then translate.py; and the same path
with Google's TensorFlow checkpoint layout given as --bert (the real TF-written MiniLM in ../shared).

A few updates only: these check that the path works offline and produces a usable checkpoint, not
translation quality (the README's measured demo results do that)."""
import io
import sys

import pytest
import torch
from conftest import SHARED_BERT_TF, require_path

import train as train_cli
import translate as translate_cli
from nmt.cpu.inference_linear import cpu_has_bf16
from nmt.weights.checkpoint import load_checkpoint

SENTENCE = "Select the cells that you want to copy."


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py: tiny models run faster on one thread


def translate(capsys, monkeypatch, *argv) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((SENTENCE + "\n\n").encode("utf-8"))))
    code = translate_cli.main(["--quiet", "--beam", "2", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_default_trains_offline_and_translates(tmp_path, capsys, monkeypatch):
    """`python train.py --stage decoder` with no data arguments: prepares the embedded En-De demo,
    converts the installed BERT once, trains; then `--stage finetune` continues from it."""
    from nmt.weights.pretrained import ensure_default_bert
    try:
        ensure_default_bert(print_fn=lambda *_: None)
    except ValueError as e:                     # the registry package is not installed here
        pytest.skip(str(e))
    run = tmp_path / "run"
    common = ["--run-dir", run, "--max-steps", "2", "--no-progress", "--encoder-cache", "off", "--max-sentences", "8"]
    assert train_cli.main(["--stage", "decoder", *map(str, common)]) == 0
    out = capsys.readouterr().out
    assert "no --data: training on the embedded demo corpus (en-de)" in out
    assert "encoder:   22.57M (trainable 0, frozen 22,565,376)" in out        # the real MiniLM, frozen
    stage1 = load_checkpoint(run / "decoder" / "checkpoint_last.pt")
    assert stage1["stage"] == "decoder" and stage1["step"] == 2 and stage1["config"]["decoder_layers"] == 3
    # the preset's --amp auto, resolved for this CPU, is what the checkpoint records
    amp = "bfloat16" if cpu_has_bf16() else "off"
    assert "amp=auto" in out and f"--amp auto: {amp}" in out and stage1["config"]["amp"] == amp

    # stage 2 starts from a stage-1 checkpoint (here the last one: two updates never reach a dev evaluation)
    init = run / "decoder" / "checkpoint_last.pt"
    assert train_cli.main(["--stage", "finetune", "--init", str(init), *map(str, common)]) == 0
    assert f"fine-tuning from {init}" in capsys.readouterr().out
    stage2 = load_checkpoint(run / "finetune" / "checkpoint_last.pt")
    assert stage2["config"]["finetune_lr"] == 4e-4 and stage1["config"]["train_lr"] == 1e-3   # the demo preset
    changed = [k for k in stage1["model"] if k.startswith("encoder.")
               and not torch.equal(stage1["model"][k], stage2["model"][k])]
    assert changed                                                          # BERT itself was fine-tuned

    code, out, err = translate(capsys, monkeypatch, "--checkpoint", run / "finetune" / "checkpoint_last.pt")
    assert code == 0, err
    assert out.count("\n") == 2 and out.endswith("\n\n")                   # one line per input line


def test_google_tf_checkpoint_layout_as_bert(tmp_path, capsys, monkeypatch):
    """--bert DIR with bert_model.ckpt.{index,data-*} + bert_config.json + vocab.txt (Google's layout,
    written by TensorFlow): the data is prepared with its vocabulary and stage 1 trains on it."""
    bert = require_path(SHARED_BERT_TF)
    raw = tmp_path / "raw"
    raw.mkdir()
    en = ["Select the cells that you want to copy.", "Click OK.", "Choose Format - Cells.", "Close the dialog."]
    de = ["Wählen Sie die Zellen aus, die Sie kopieren möchten.", "Klicken Sie auf OK.",
          "Wählen Sie Format - Zellen.", "Schließen Sie den Dialog."]
    for name in ("train", "dev"):
        (raw / f"{name}.en").write_text("\n".join(en) + "\n", encoding="utf-8")
        (raw / f"{name}.de").write_text("\n".join(de) + "\n", encoding="utf-8")
    from tools.prepare_data import main as prepare_main
    data = tmp_path / "data"
    assert prepare_main(["--train-prefix", str(raw / "train"), "--valid-prefix", str(raw / "dev"), "--src", "en",
                         "--tgt", "de", "--target-mode", "raw", "--bpe-merges", "50", "--bert", str(bert), "--out", str(data)]) == 0
    run = tmp_path / "run"
    assert train_cli.main(["--data", str(data), "--bert", str(bert), "--run-dir", str(run), "--max-epochs", "1",
                           "--decoder-layers", "1", "--no-progress", "--encoder-cache", "memory",
                           "--cache-dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert f"encoder: BERT from {bert}" in out and "frozen 22,565,376" in out
    code, out, err = translate(capsys, monkeypatch, "--checkpoint", run)
    assert code == 0 and out.count("\n") == 2, err

    # a BERT whose vocabulary is not the one the data was prepared with is refused, naming both
    other = tmp_path / "other_bert"
    other.mkdir()
    for f in bert.iterdir():
        (other / f.name).symlink_to(f)
    (other / "vocab.txt").unlink()
    words = (bert / "vocab.txt").read_text(encoding="utf-8").splitlines()
    words[1000], words[1001] = words[1001], words[1000]
    (other / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    code = train_cli.main(["--data", str(data), "--bert", str(other), "--run-dir", str(tmp_path / "run2"),
                           "--max-steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and str(data) in err and "WordPiece vocabulary" in err


def _default_bert_or_skip():
    from nmt.weights.pretrained import ensure_default_bert
    try:
        ensure_default_bert(print_fn=lambda *_: None)
    except ValueError as e:                     # the registry package is not installed here
        pytest.skip(str(e))


def test_quick_prepares_a_demo_slice_and_trains_stage_1(tmp_path, capsys, monkeypatch):
    """`python train.py --quick`: the first QUICK_PAIRS lines of each demo split, prepared into
    checkpoints/data/quick-en-de, and stage 1 with the quick preset; translate.py reads the run."""
    from nmt.data.binarized import read_meta
    from nmt.files import data_dir
    from nmt.train.config import QUICK_PAIRS, QUICK_PRESET
    _default_bert_or_skip()
    run = tmp_path / "quick"
    assert train_cli.main(["--quick", "--run-dir", str(run), "--max-steps", "2", "--no-progress",
                           "--encoder-cache", "off"]) == 0
    out = capsys.readouterr().out
    assert "it does not translate well" in out and f"--checkpoint {run}" in out
    splits = read_meta(data_dir("quick-en-de"))["splits"]
    assert splits["valid"]["pairs"] == QUICK_PAIRS["dev"] and splits["test"]["pairs"] == QUICK_PAIRS["test"]
    assert QUICK_PAIRS["train"] - 5 <= splits["train"]["pairs"] <= QUICK_PAIRS["train"]   # overlong pairs dropped
    config = load_checkpoint(run / "decoder" / "checkpoint_last.pt")["config"]
    assert {k: config[k] for k in QUICK_PRESET} == QUICK_PRESET and config["stage"] == "decoder"
    assert config["max_sentences"] == 64                                   # the demo preset beneath it
    code, translation, _ = translate(capsys, monkeypatch, "--checkpoint", run / "decoder" / "checkpoint_last.pt")
    assert code == 0 and translation.strip()


def test_quick_refuses_other_stages_and_data(capsys):
    assert train_cli.main(["--quick", "--stage", "finetune"]) == 2
    assert "--quick runs stage 1 of a demo pair" in capsys.readouterr().err
    assert train_cli.main(["--quick", "--pair", "en-fr"]) == 2
    assert "error: --quick" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_runs_the_whole_pipeline(tmp_path, capsys, monkeypatch):
    """The whole --quick run as a user runs it (about two minutes on 2 cores): two epochs, the
    length penalty chosen on the dev slice, and a run directory translate.py picks its model from."""
    _default_bert_or_skip()
    run = tmp_path / "quick"
    assert train_cli.main(["--quick", "--run-dir", str(run), "--no-progress"]) == 0
    assert "reached --max-epochs 2" in capsys.readouterr().out
    best = load_checkpoint(run / "decoder" / "checkpoint_best.pt")
    assert best["epoch"] == 2 or best["epoch"] == 1
    code, translation, err = translate(capsys, monkeypatch, "--checkpoint", run)
    assert code == 0 and translation.strip()
