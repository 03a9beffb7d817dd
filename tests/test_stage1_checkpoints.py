"""Stage-1 checkpoints hold the decoder and a reference to the frozen BERT (path, size, sha256), not
its weights (issue 39): much smaller, loaded with the BERT found at the recorded path or given with
--bert / bert=, one error line when it is missing or different; stage 2, resume, translation and
averaging work as with full checkpoints."""
import dataclasses
import gzip
import io
import shutil
import sys
from pathlib import Path

import pytest
import torch

import translate as translate_cli
from nmt.errors import CheckpointError
from nmt.text.wordpiece import default_vocab_path
from nmt.train.config import TrainConfig
from nmt.train.trainer import setup
from nmt.decode.translator import Translator
from nmt.weights.checkpoint import average_checkpoints, load_checkpoint, save_checkpoint
from nmt.weights.pretrained import bert_sha256, load_native, save_native
from tests.conftest import save_tiny_bert
from tools import average_checkpoints as average_cli

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo" / "en-de"
SENTENCES = ["Click OK.", "Select the cells that you want to copy."]

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py: tiny models run faster on one thread


def _pairs(split: str, n: int) -> list[tuple[str, str]]:
    with gzip.open(DEMO / f"{split}.en.gz", "rt", encoding="utf-8") as fe, \
            gzip.open(DEMO / f"{split}.de.gz", "rt", encoding="utf-8") as fd:
        pairs = [(e.strip(), d.strip()) for e, d in zip(fe, fd)]
    return [p for p in pairs if len(p[0].split()) <= 7 and len(p[1].split()) <= 7][:n]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """Prepared data (24 short En-De pairs, 8 dev) and a tiny random BERT with the real vocabulary:
    its embeddings (30K x 32) make it much bigger than the 1-layer decoder."""
    from nmt.data.prepare import prepare
    base = tmp_path_factory.mktemp("stage1")
    raw = base / "raw"
    raw.mkdir()
    for name, pairs in (("train", _pairs("train", 24)), ("dev", _pairs("dev", 8))):
        (raw / f"{name}.en").write_text("".join(e + "\n" for e, _ in pairs), encoding="utf-8")
        (raw / f"{name}.de").write_text("".join(d + "\n" for _, d in pairs), encoding="utf-8")
    prepare(base / "data", train_prefix=raw / "train", valid_prefix=raw / "dev", src="en", tgt="de",
            target_mode="tokenized", bert=default_vocab_path(), bpe_merges=100, print_fn=lambda *_: None)
    bert = save_tiny_bert(base / "tiny_bert.pt", layers=2, positions=64)
    return {"base": base, "bert": bert, "data": base / "data"}


def make_cfg(work, run_dir, bert, **kw) -> TrainConfig:
    base = dict(data=str(work["data"]), bert=str(bert), run_dir=str(run_dir), decoder_layers=1, max_sentences=8,
                batching="sentences", lr=2e-3, warmup_steps=4, progress=False, device="cpu", encoder_cache="off",
                stage="decoder", max_steps=2)
    return dataclasses.replace(TrainConfig(), **{**base, **kw})


@pytest.fixture(scope="module")
def stage1(work, tmp_path_factory) -> dict:
    """A stage-1 run (2 updates) with its own copy of the BERT, resumed to 4 updates; the checkpoint
    at each is kept."""
    base = tmp_path_factory.mktemp("run")
    bert = base / "bert" / "tiny_bert.pt"
    bert.parent.mkdir()
    shutil.copy(work["bert"], bert)
    run = base / "run"
    setup(make_cfg(work, run, bert), print_fn=lambda *_: None).fit()
    last = run / "decoder" / "checkpoint_last.pt"
    shutil.copy(last, base / "step2.pt")
    setup(make_cfg(work, run, bert, max_steps=4, resume=True), print_fn=lambda *_: None).fit()
    shutil.copy(last, base / "step4.pt")
    return {"base": base, "bert": bert, "run": run, "last": last, "step2": base / "step2.pt",
            "step4": base / "step4.pt"}


def stdin():
    return io.TextIOWrapper(io.BytesIO(b"Click OK.\n"))


def bert_encoder_weights(path) -> dict:
    return {"encoder." + k: v for k, v in load_native(path).state_dict.items() if not k.startswith("pooler.")}


def test_stage1_checkpoint_holds_a_reference_not_the_bert(work, stage1, tmp_path):
    raw = load_checkpoint(stage1["last"], with_bert=False)
    assert raw["step"] == 4 and raw["stage"] == "decoder"
    assert not [k for k in raw["model"] if k.startswith("encoder.")]
    ref = raw["bert_reference"]
    bert_weights = bert_encoder_weights(stage1["bert"])
    bert_bytes = sum(t.numel() * t.element_size() for t in bert_weights.values())
    assert ref["path"] == str(stage1["bert"]) and ref["resolved"] == str(stage1["bert"].resolve())
    assert ref["sha256"] == bert_sha256(stage1["bert"]) and ref["default"] is False
    assert ref["parameters"] == sum(t.numel() for t in bert_weights.values()) and ref["tensor_bytes"] == bert_bytes
    assert ref["file_bytes"] == stage1["bert"].stat().st_size
    # much smaller than with BERT: the same state with the encoder's tensors put back
    full = tmp_path / "full.pt"
    save_checkpoint(full, {k: v for k, v in load_checkpoint(stage1["last"]).items() if k != "bert_reference"})
    size = stage1["last"].stat().st_size
    assert size < bert_bytes / 2 and size < full.stat().st_size / 2
    # loading puts BERT's tensors back, bit-identical: stage 1 never changed them
    loaded = load_checkpoint(stage1["last"])["model"]
    assert all(torch.equal(loaded[k], v) for k, v in bert_weights.items())
    # the header readers and update_checkpoint keep the file as it is stored
    assert "encoder.embeddings.word.weight" not in load_checkpoint(stage1["last"], required=()).get("model", {})


def test_translates_with_the_recorded_bert_or_one_given(stage1, tmp_path):
    recorded = Translator.from_checkpoint(stage1["last"]).translate(SENTENCES, beam=2)
    moved = tmp_path / "elsewhere.pt"
    shutil.copy(stage1["bert"], moved)
    given = Translator.from_checkpoint(stage1["last"], bert=moved).translate(SENTENCES, beam=2)
    assert [r.text for r in recorded] == [r.text for r in given]
    assert [r.score for r in recorded] == pytest.approx([r.score for r in given])
    full = Translator.from_checkpoint(stage1["run"])           # the run directory: decoder/checkpoint_best.pt
    assert full.model.encoder is not None


def test_missing_or_changed_bert_is_one_line(work, stage1, tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "checkpoint_last.pt"
    shutil.copy(stage1["last"], ckpt)
    state = load_checkpoint(ckpt, with_bert=False)
    state["bert_reference"] = {**state["bert_reference"], "path": str(tmp_path / "gone.pt"),
                               "resolved": str(tmp_path / "gone.pt")}
    save_checkpoint(ckpt, state)
    with pytest.raises(CheckpointError, match="without its BERT weights.*gone.pt is missing; pass --bert PATH"):
        Translator.from_checkpoint(ckpt)
    monkeypatch.setattr(sys, "stdin", stdin())
    assert translate_cli.main(["--quiet", "--checkpoint", str(ckpt), "--beam", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--bert PATH" in err and str(ckpt) in err

    # translate.py --bert with the right file works
    monkeypatch.setattr(sys, "stdin", stdin())
    assert translate_cli.main(["--quiet", "--checkpoint", str(ckpt), "--beam", "2", "--bert", str(stage1["bert"])]) == 0
    assert capsys.readouterr().out.count("\n") == 1

    # tools/evaluate.py --checkpoint: the same, with and without --bert
    from tools.evaluate import main as evaluate_main
    assert evaluate_main(["--checkpoint", str(ckpt), "--data", str(work["data"])]) == 2
    assert "--bert PATH" in capsys.readouterr().err
    assert evaluate_main(["--checkpoint", str(ckpt), "--data", str(work["data"]), "--bert", str(stage1["bert"])]) == 0
    assert "valid: loss " in capsys.readouterr().out

    # a different BERT (one weight changed): the sha256 differs
    other = tmp_path / "other_bert.pt"
    bert = load_native(stage1["bert"])
    bert.state_dict["embeddings.word.weight"][0, 0] += 1.0
    save_native(bert, other)
    with pytest.raises(CheckpointError, match=r"other_bert.pt: not the BERT .* was trained with \(its sha256 is"):
        load_checkpoint(ckpt, bert=other)
    monkeypatch.setattr(sys, "stdin", stdin())
    assert translate_cli.main(["--quiet", "--checkpoint", str(ckpt), "--bert", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "sha256" in err and "--bert PATH" in err


def test_stage2_starts_from_the_original_bert_and_saves_everything(work, stage1, tmp_path):
    trainer = setup(make_cfg(work, tmp_path, stage1["bert"], stage="finetune", init=str(stage1["last"]),
                             max_steps=1), print_fn=lambda *_: None)
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in bert_encoder_weights(stage1["bert"]).items())
    decoder = load_checkpoint(stage1["last"], with_bert=False)["model"]
    assert all(torch.equal(state[k], v) for k, v in decoder.items())
    trainer.fit()
    saved = load_checkpoint(tmp_path / "finetune" / "checkpoint_last.pt", with_bert=False)
    assert "bert_reference" not in saved and "encoder.embeddings.word.weight" in saved["model"]


def test_resume_keeps_the_reference(stage1):
    before = load_checkpoint(stage1["step2"], with_bert=False)["bert_reference"]
    after = load_checkpoint(stage1["step4"], with_bert=False)["bert_reference"]
    assert before == after


def test_resume_with_the_bert_moved(work, stage1, tmp_path):
    run, moved = tmp_path / "run", tmp_path / "elsewhere" / "bert.pt"
    shutil.copytree(stage1["run"], run)
    moved.parent.mkdir()
    shutil.copy(stage1["bert"], moved)
    shutil.copy(stage1["step2"], run / "decoder" / "checkpoint_last.pt")
    # the same file at another path: resumed (the sha256 identifies it), recorded from now on
    setup(make_cfg(work, run, moved, max_steps=3, resume=True), print_fn=lambda *_: None).fit()
    reference = load_checkpoint(run / "decoder" / "checkpoint_last.pt", with_bert=False)["bert_reference"]
    assert reference["path"] == str(moved) and reference["sha256"] == bert_sha256(stage1["bert"])
    # another BERT under the new path: refused, naming the sha256
    bert = load_native(moved)
    bert.state_dict["embeddings.word.weight"][0, 0] += 1.0
    other = tmp_path / "other.pt"
    save_native(bert, other)
    with pytest.raises(CheckpointError, match=r"other.pt: not the BERT .* was trained with \(its sha256 is"):
        setup(make_cfg(work, run, other, max_steps=4, resume=True), print_fn=lambda *_: None)


def test_averaging_stage1_checkpoints(stage1, tmp_path):
    out = tmp_path / "avg.pt"
    assert average_cli.main(["--inputs", str(stage1["step2"]), str(stage1["step4"]), "--output", str(out)]) == 0
    avg = load_checkpoint(out, with_bert=False)
    assert avg["bert_reference"]["sha256"] == bert_sha256(stage1["bert"])
    assert not [k for k in avg["model"] if k.startswith("encoder.")]
    a, b = (load_checkpoint(p, with_bert=False)["model"] for p in (stage1["step2"], stage1["step4"]))
    for name, tensor in avg["model"].items():
        torch.testing.assert_close(tensor, ((a[name].double() + b[name].double()) / 2).float())
    assert Translator.from_checkpoint(out).translate(["Click OK."], beam=2)[0].text is not None
    # one input with BERT's weights (a checkpoint written before this format): the average holds them all
    full = tmp_path / "full.pt"
    save_checkpoint(full, {k: v for k, v in load_checkpoint(stage1["step2"]).items() if k != "bert_reference"})
    mixed = average_checkpoints([full, stage1["step4"]])
    assert "bert_reference" not in mixed and "encoder.embeddings.word.weight" in mixed["model"]
