"""Serving through CTranslate2 (nmt/decode/ctranslate2_export.py, nmt/decode/ctranslate2_engine.py,
tools/export_ctranslate2.py, translate.py --engine ctranslate2): an exported model translates real
sentences token for token as nmt does in float32, with the same beam, length penalty and n-best,
for the BERT system in the demo's shape (a stage-1 checkpoint that refers to its BERT file) and for
a baseline; and the export refuses what it cannot carry over with one clear error.

The models are random networks whose output projection is fitted (ridge regression, no training
loop) to translate 32 demo pairs, so they end their sentences and put little mass on PAD and BOS,
as a trained model does."""
import itertools
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

from nmt.errors import ExportError, TranslateError
from nmt.text.lines import open_text_lines
from nmt.text.vocab import Vocab
from tests.conftest import REPO, save_tiny_bert

pytestmark = pytest.mark.usefixtures("one_thread")
needs_ctranslate2 = pytest.mark.skipif(find_spec("ctranslate2") is None,
                                       reason="ctranslate2 is not installed (pip install -e .[ctranslate2])")
DEMO = REPO / "data" / "demo" / "en-de"


def head(path: Path, count: int) -> list[str]:
    return [line for _, line in itertools.islice(open_text_lines(path), count)]


def demo_pairs(count: int = 32) -> tuple[list[str], list[str]]:
    """Short real En-De pairs of the demo training set."""
    src, tgt = head(DEMO / "train.en.gz", 2000), head(DEMO / "train.de.gz", 2000)
    pairs = [(s, t) for s, t in zip(src, tgt) if 3 <= len(s.split()) <= 12][:count]
    return [s for s, _ in pairs], [t for _, t in pairs]


def bpe_pipeline_parts(lines: list[str], merges: int = 300):
    from nmt.text.bpe import BPE, learn_bpe
    from nmt.text.pipeline import pre_bpe_tokens
    return BPE(learn_bpe((" ".join(pre_bpe_tokens(line, "raw")) for line in lines), merges))


@torch.no_grad()
def fit_projection(model, source, target, src_lines: list[str], tgt_lines: list[str], scale: float = 30.0) -> None:
    """Output projection by ridge regression on the teacher-forced decoder states: logit ``scale`` at the
    reference token, -``scale`` at PAD and BOS (and at EOS first), 0 elsewhere."""
    model.eval()
    ids, ys = [source.encode(s) for s in src_lines], [target.encode(t) for t in tgt_lines]
    B, S, T = len(ids), max(map(len, ids)), max(map(len, ys)) + 1
    src, mask = torch.full((B, S), source.pad_id), torch.zeros(B, S, dtype=torch.bool)
    prev, gold = torch.full((B, T), Vocab.PAD), torch.full((B, T), Vocab.PAD)
    for b, (i, y) in enumerate(zip(ids, ys)):
        src[b, :len(i)], mask[b, :len(i)] = torch.tensor(i), True
        prev[b, :len(y) + 1], gold[b, :len(y) + 1] = torch.tensor([Vocab.BOS] + y), torch.tensor(y + [Vocab.EOS])
    real = gold != Vocab.PAD
    states = model.decoder.features(prev, model.encode(src, mask), mask)[real].double()   # [N,H]
    labels = gold[real]
    wanted = torch.zeros(len(labels), model.decoder.vocab_size, dtype=torch.double)
    wanted[torch.arange(len(labels)), labels] = scale
    wanted[:, [Vocab.PAD, Vocab.BOS]] = -scale
    wanted[torch.arange(T).expand(B, T)[real] == 0, Vocab.EOS] = -scale          # no empty translations
    gram = states.T @ states + 1e-2 * torch.eye(states.size(1), dtype=torch.double)
    model.decoder.output_projection.weight.copy_(torch.linalg.solve(gram, states.T @ wanted).T.float())


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """A stage-1 checkpoint of the BERT system in the demo's shape (a 6-layer, 384-wide, 12-head BERT
    with the MiniLM vocabulary, saved apart and then moved, so it loads with --bert; a 2-layer decoder)
    and a transformer-small baseline."""
    from nmt.model.seq2seq import ModelSpec, build_model
    from nmt.text.pipeline import SourcePipeline, TargetPipeline
    from nmt.weights.checkpoint import FORMAT, bert_reference, save_checkpoint, without_bert
    from nmt.weights.pretrained import load_bert
    base = tmp_path_factory.mktemp("ct2")
    src_lines, tgt_lines = demo_pairs()
    tgt_all, src_all = head(DEMO / "train.de.gz", 600), head(DEMO / "train.en.gz", 600)
    target = TargetPipeline.build("raw", bpe_pipeline_parts(tgt_all), tgt_all)

    bert = save_tiny_bert(base / "minilm-shaped.pt", layers=6, positions=512, hidden=384, heads=12,
                          intermediate=1536)
    encoder, tokenizer = load_bert(bert)
    source = SourcePipeline.wordpiece(tokenizer, max_positions=512)
    torch.manual_seed(1)
    spec = ModelSpec.bert(encoder.config, len(target.vocab), tokenizer.pad_id, num_layers=2)
    model = build_model(spec)
    model.encoder.load_state_dict({k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")})
    fit_projection(model, source, target, src_lines, tgt_lines)
    state, reference = without_bert(model.state_dict(), bert_reference(bert))
    save_checkpoint(base / "bert.pt", {"format": FORMAT, "stage": "decoder", "model_spec": spec.to_dict(),
                                       "model": state, "bert_reference": reference, "source": source.to_dict(),
                                       "target": target.to_dict(), "decoding": {"lenpen": 0.8}})
    (base / "moved").mkdir()
    bert = bert.rename(base / "moved" / bert.name)

    from nmt.text.pipeline import pre_bpe_tokens
    src_bpe = bpe_pipeline_parts(src_all)
    src_vocab = Vocab.build(src_bpe.segment_tokens(pre_bpe_tokens(line, "raw")) for line in src_all)
    baseline_source = SourcePipeline.with_bpe(src_bpe, src_vocab, mode="raw")
    torch.manual_seed(2)
    spec = ModelSpec.transformer("transformer-small", len(src_vocab), len(target.vocab))
    model = build_model(spec)
    fit_projection(model, baseline_source, target, src_lines, tgt_lines)
    save_checkpoint(base / "baseline.pt", {"format": FORMAT, "stage": "scratch", "model_spec": spec.to_dict(),
                                           "model": model.state_dict(), "source": baseline_source.to_dict(),
                                           "target": target.to_dict()})
    lines = src_lines[:24] + head(DEMO / "test.en.gz", 8)      # fitted sentences and unseen ones
    return {"base": base, "bert_file": bert, "bert": base / "bert.pt", "baseline": base / "baseline.pt",
            "lines": lines}


def both_engines(models, name: str):
    """nmt's Translator over the checkpoint and CTranslate2 over its export by the tool (float32, one
    thread), made once."""
    from nmt.decode.ctranslate2_engine import CTranslate2Translator
    from nmt.decode.translator import Translator
    from tools import export_ctranslate2 as tool
    if (name, "engines") not in models:
        out, bert = models["base"] / f"{name}-ct2", models["bert_file"] if name == "bert" else None
        assert tool.main(["--checkpoint", str(models[name]), "--output", str(out)]
                         + (["--bert", str(bert)] if bert else [])) == 0
        models[name, "engines"] = (Translator.from_checkpoint(models[name], bert=bert),
                                   CTranslate2Translator.from_dir(out, compute_type="float32", threads=1))
    return models[name, "engines"]


def assert_same(ours, theirs, lines, **options) -> None:
    """The same n-best texts for every line, scores within float noise."""
    a, b = ours.translate(lines, **options), theirs.translate(lines, **options)
    for line, x, y in zip(lines, a, b):
        assert [h.text for h in x.hypotheses] == [h.text for h in y.hypotheses], (line, options)
        assert [h.score for h in x.hypotheses] == pytest.approx([h.score for h in y.hypotheses], abs=2e-3), line


@needs_ctranslate2
@pytest.mark.parametrize("name", ["bert", "baseline"])
def test_ctranslate2_translates_as_nmt_does(models, name):
    ours, theirs = both_engines(models, name)
    assert theirs.lenpen == ours.lenpen == (0.8 if name == "bert" else 1.0)     # the stored default travels
    lines = models["lines"]
    assert_same(ours, theirs, lines, beam=5)                                      # the checkpoint's length penalty
    assert_same(ours, theirs, lines, beam=1)                                      # greedy
    # n-best, and other length penalties: with room to end (at the length limit the engines differ, serving.md)
    assert_same(ours, theirs, lines[:16], beam=4, nbest=3, lenpen=1.3, max_len_b=200)
    assert_same(ours, theirs, lines[:16], beam=4, lenpen=0.0, max_len_b=200)
    assert theirs.translate(["", "   "]) == ours.translate(["", "   "])          # empty lines stay empty


@needs_ctranslate2
def test_the_tool_and_translate_py_serve_a_stage1_checkpoint_whose_bert_moved(models, tmp_path, capsys):
    from tools import export_ctranslate2 as tool
    import translate
    out = tmp_path / "ct2"
    assert tool.main(["--checkpoint", str(models["bert"]), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--bert" in err and not out.exists()
    ours, _ = both_engines(models, "bert")                   # exported to base/bert-ct2 with --bert
    out = models["base"] / "bert-ct2"
    assert tool.main(["--checkpoint", str(models["bert"]), "--output", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    source = tmp_path / "in.en"
    lines = models["lines"][:6]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert translate.main(["--engine", "ctranslate2", "--checkpoint", str(out), "--input", str(source),
                           "--beam", "3", "--compute-type", "float32", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines() == [r.text for r in ours.translate(lines, beam=3)]


def test_the_export_refuses_a_tensor_it_does_not_know():
    from nmt.decode.ctranslate2_export import ctranslate2_variables
    from nmt.model.seq2seq import ModelSpec, build_model
    spec = ModelSpec.transformer("transformer-small", 40, 30, embed_dim=16, num_heads=2, ffn_dim=32, num_layers=1)
    state = build_model(spec).state_dict()
    assert "decoder/projection/weight" in ctranslate2_variables(state, spec)
    with pytest.raises(ExportError, match=r"does not know \['decoder.extra.weight'\]"):
        ctranslate2_variables({**state, "decoder.extra.weight": torch.zeros(2)}, spec, "x.pt")
    del state["decoder.output_projection.weight"]
    with pytest.raises(ExportError, match=r"lacks \['decoder.output_projection.weight'\]"):
        ctranslate2_variables(state, spec, "x.pt")


@needs_ctranslate2
def test_a_corrupt_checkpoint_or_a_foreign_directory_is_one_error_line(tmp_path, capsys):
    from tools import export_ctranslate2 as tool
    import translate
    bad = tmp_path / "checkpoint_best.pt"
    bad.write_bytes(b"PK\x03\x04 not a checkpoint")
    assert tool.main(["--checkpoint", str(bad), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: truncated or corrupt checkpoint") and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp*"))
    assert translate.main(["--engine", "ctranslate2", "--checkpoint", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not a CTranslate2 model directory" in err and "tools/export_ctranslate2.py" in err


def test_without_ctranslate2_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    import sys
    from nmt.decode.ctranslate2_engine import CTranslate2Translator
    from nmt.decode.ctranslate2_export import export_ctranslate2
    monkeypatch.setitem(sys.modules, "ctranslate2", None)          # import ctranslate2 -> ImportError
    with pytest.raises(ExportError, match=r"pip install -e \.\[ctranslate2\]"):
        export_ctranslate2(tmp_path / "x.pt", tmp_path / "out")
    with pytest.raises(TranslateError, match=r"pip install -e \.\[ctranslate2\]"):
        CTranslate2Translator.from_dir(tmp_path)
