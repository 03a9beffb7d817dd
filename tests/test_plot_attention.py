"""tools/plot_attention.py on a tiny checkpoint built here (BERT-arch model + WordPiece source + BPE
target): the attention it reads, the PNG for one layer and for all, one error line for bad input."""
import sys

import pytest
import torch

from nmt.decode.translator import Translator
from nmt.model import bert
from nmt.model.seq2seq import ModelSpec, build_model
from nmt.text.bpe import BPE
from nmt.text.pipeline import SourcePipeline, TargetPipeline
from nmt.text.wordpiece import WordPieceTokenizer
from tools.plot_attention import attention_map, main

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py: tiny models run faster on one thread

WORDS = "the a cat dog sat on mat house is small big red".split()
TARGET_LINES = ["das ist ein Haus .", "die Katze sitzt auf der Matte .", "der Hund ist groß !"]
SENTENCE = "the cat sat on the mat ."
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_checkpoint(path, max_positions=16):
    """A 2-layer decoder over a 1-layer BERT (as tests/test_translate.py builds its checkpoint)."""
    tok = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "!"] + WORDS + ["##s"])
    source = SourcePipeline.wordpiece(tok, max_positions=max_positions)
    target = TargetPipeline.build("raw", BPE([("a", "s"), ("d", "e"), ("i", "e")]), TARGET_LINES)
    cfg = bert.BertConfig(vocab_size=len(tok.vocab_tokens), hidden_size=16, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=32, max_position_embeddings=max_positions)
    spec = ModelSpec.bert(cfg, tgt_vocab_size=len(target.vocab), src_pad_id=tok.pad_id, num_layers=2)
    torch.manual_seed(0)
    model = build_model(spec)
    with torch.no_grad():
        model.decoder.output_projection.weight.mul_(4.0)   # peaky: short, input-dependent outputs
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "nmt-checkpoint/1", "model_spec": spec.to_dict(), "model": model.state_dict(),
                "source": source.to_dict(), "target": target.to_dict()}, path)
    return path


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "tiny.pt")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_attention_map_is_the_translation_and_its_head_averaged_cross_attention(ckpt):
    tr = Translator.from_checkpoint(ckpt)
    amap = attention_map(tr, SENTENCE, beam=4)
    assert amap.source == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", ".", "[SEP]"]
    assert amap.target[-1] == "</s>" and len(amap.target) >= 1
    assert amap.translation == tr.translate([SENTENCE], beam=4)[0].text      # what translate.py prints
    assert len(amap.layers) == 2
    for w in amap.layers:
        assert w.shape == (len(amap.target), len(amap.source))
        torch.testing.assert_close(w.sum(-1), torch.ones(len(amap.target)), atol=1e-5, rtol=0)
    # the average over heads of the decoder's own weights for BOS + translation
    ids = torch.tensor([tr.source.encode(SENTENCE)])
    mask = torch.ones_like(ids, dtype=torch.bool)
    prev = torch.tensor([[1, *tr.target.vocab.encode(amap.target[:-1])]])
    with torch.no_grad():
        weights = tr.model.decoder.cross_attention_weights(prev, tr.model.encode(ids, mask), mask)
    torch.testing.assert_close(amap.layers[1], weights[1][0].mean(0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("layer", ["1", "all"])
def test_writes_a_png(tmp_path, ckpt, capsys, layer):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots" / f"attention-{layer}.png"
    code, stdout, err = run(capsys, "--checkpoint", ckpt, "--source", SENTENCE, "--out", out,
                            "--layer", layer, "--beam", 2)
    assert code == 0, err
    assert out.read_bytes()[:8] == PNG_MAGIC and f"wrote {out}" in stdout
    assert "[CLS] the cat sat on the mat . [SEP]" in stdout
    assert [p.name for p in out.parent.iterdir()] == [out.name]              # no temporary file left


def test_run_directory_and_default_layer(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    make_checkpoint(tmp_path / "run" / "decoder" / "checkpoint_best.pt")
    out = tmp_path / "a.png"
    code, _, err = run(capsys, "--checkpoint", tmp_path / "run", "--source", SENTENCE, "--out", out, "--beam", 1)
    assert code == 0, err
    assert out.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("argv, message", [
    (["--layer", "3"], "the decoder has 2 layers (1 to 2)"),
    (["--layer", "0"], "layers are numbered from 1"),
    (["--layer", "top"], "give a layer number"),
    (["--source", "   "], "--source is empty"),
    (["--checkpoint", "missing.pt"], "checkpoint not found"),
])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, ckpt, capsys, monkeypatch, argv, message):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "a.png"
    args = {"--checkpoint": ckpt, "--source": SENTENCE, "--out": out, **dict(zip(argv[::2], argv[1::2]))}
    code, _, err = run(capsys, *[x for kv in args.items() for x in kv])
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_missing_matplotlib_says_what_to_install(tmp_path, ckpt, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)                     # import matplotlib fails
    code, _, err = run(capsys, "--checkpoint", ckpt, "--source", SENTENCE, "--out", tmp_path / "a.png")
    assert code == 2 and err.count("\n") == 1
    assert "pip install -r requirements-dev.txt" in err
