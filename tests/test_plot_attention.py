"""tools/plot_attention.py on a tiny checkpoint built here (BERT-arch model + WordPiece source + BPE
target): the attention it reads, the PNG for one layer and for all, one error line for bad input."""
import sys

import pytest
import torch

from nmt.decode.translator import Translator
from tests import test_translate as translate_tests
from tools.plot_attention import attention_map, main

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py: tiny models run faster on one thread

SENTENCE = "the cat sat on the mat ."
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_checkpoint(path):
    """tests/test_translate.py's tiny checkpoint (a 2-layer decoder over a 1-layer BERT), at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return translate_tests.make_checkpoint(path)


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
