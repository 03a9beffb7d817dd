"""Source/target pipelines and the line reader, against the real Stanford IWSLT15 files."""
import gzip

import pytest

from nmt.errors import DataError
from nmt.text.bpe import BPE, learn_bpe
from nmt.text.lines import open_text_lines
from nmt.text.pipeline import SourcePipeline, TargetPipeline
from nmt.text.vocab import Vocab
from nmt.text.wordpiece import WordPieceTokenizer

# ----------------------------------------------------------------------------- reading lines

def test_reader_bom_crlf_no_final_newline_and_unicode_separators(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffone &quot;x&quot;\r\ntwo\u2028still two\nthree".encode("utf-8"))
    assert list(open_text_lines(path)) == [(1, "one &quot;x&quot;"), (2, "two\u2028still two"), (3, "three")]


def test_reader_gzip_is_transparent(tmp_path):
    raw = "\ufeffxin chào\nthế giới\n".encode("utf-8")
    (tmp_path / "a.txt").write_bytes(raw)
    with gzip.open(tmp_path / "a.txt.gz", "wb") as f:
        f.write(raw)
    assert list(open_text_lines(tmp_path / "a.txt.gz")) == list(open_text_lines(tmp_path / "a.txt"))


def test_reader_names_file_and_line_of_invalid_utf8(tmp_path):
    path = tmp_path / "bad.vi"
    path.write_bytes("ok\nalso ok\nca\xe9 latin1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"bad\.vi:3: invalid UTF-8"):
        list(open_text_lines(path))
    with pytest.raises(DataError, match=r"missing\.en: file not found"):
        list(open_text_lines(tmp_path / "missing.en"))


def test_reader_counts_like_the_shared_files(iwslt_dir):
    lines = list(open_text_lines(iwslt_dir / "tst2013.en"))
    assert len(lines) == 1268                       # README: 1,268 pairs, the last without newline
    assert not lines[0][1].startswith("\ufeff")     # the BOM is gone
    assert lines[-1][1].strip()


# ----------------------------------------------------------------------------- source

@pytest.fixture(scope="module")
def wordpiece_source():
    from tests.conftest import SHARED_BERT_TF, require_path
    tok = WordPieceTokenizer.from_file(require_path(SHARED_BERT_TF / "vocab.txt"))
    return SourcePipeline.wordpiece(tok, max_positions=512)


def test_wordpiece_source_unescapes_html_and_wraps_cls_sep(wordpiece_source):
    tok = wordpiece_source.tokenizer
    ids = wordpiece_source.encode("\ufeffIt &apos;s &quot; good &quot; &amp; fine")
    assert ids == tok.encode("It 's \" good \" & fine")
    assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id
    assert "apos" not in wordpiece_source.tokens("It &apos;s")
    assert wordpiece_source.pad_id == tok.pad_id and wordpiece_source.do_lower_case
    assert len(wordpiece_source.encode("a b c d e f", max_length=4)) == 4


def test_wordpiece_source_dict_round_trip(wordpiece_source, iwslt_dir):
    d = wordpiece_source.to_dict()
    assert d["kind"] == "wordpiece" and d["do_lower_case"] is True and d["max_positions"] == 512
    rebuilt = SourcePipeline.from_dict(d)
    lines = [line for _, line in open_text_lines(iwslt_dir / "tst2013.en")][:200]
    assert [rebuilt.encode(x) for x in lines] == [wordpiece_source.encode(x) for x in lines]
    assert rebuilt.vocab_tokens == wordpiece_source.vocab_tokens


def test_bpe_source_appends_eos_and_round_trips():
    lines = ["the cat sat", "the cat ran", "a hat"]
    bpe = BPE(learn_bpe(lines, 20, min_frequency=1))
    vocab = Vocab.build(bpe.segment_tokens(x.split()) for x in lines)
    source = SourcePipeline.with_bpe(bpe, vocab, mode="tokenized")
    ids = source.encode("the cat sat")
    assert ids[-1] == Vocab.EOS and Vocab.UNK not in ids and source.pad_id == Vocab.PAD
    assert source.vocab.decode(ids) == bpe.segment_tokens("the cat sat".split())
    assert SourcePipeline.from_dict(source.to_dict()).encode("a cat sat") == source.encode("a cat sat")


def test_from_dict_rejects_foreign_dicts():
    with pytest.raises(DataError, match="format None"):
        SourcePipeline.from_dict({"kind": "wordpiece"})
    with pytest.raises(DataError, match="missing keys"):
        TargetPipeline.from_dict({"format": "nmt-target/1", "mode": "raw"})


# ----------------------------------------------------------------------------- target

@pytest.fixture(scope="module")
def vi_lines():
    from tests.conftest import SHARED_IWSLT, require_path
    return [line for _, line in open_text_lines(require_path(SHARED_IWSLT / "tst2012.vi"))]


def test_tokenized_target_round_trips_stanford_text_exactly(vi_lines):
    bpe = BPE(learn_bpe(vi_lines, 500))
    target = TargetPipeline.build("tokenized", bpe, vi_lines)
    assert target.vocab == Vocab.build(bpe.segment_tokens(x.split()) for x in vi_lines)
    n_entities = 0
    for line in vi_lines:
        ids = target.encode(line)
        assert Vocab.UNK not in ids
        assert target.decode(ids + [Vocab.EOS, 7]) == " ".join(line.split())
        n_entities += "&quot;" in line
    assert n_entities > 100                           # entities are kept, not unescaped
    assert "&quot;" in target.vocab.index or any("&quot" in s for s in target.vocab.symbols)
    again = TargetPipeline.from_dict(target.to_dict())
    assert again.vocab == target.vocab and again.encode(vi_lines[3]) == target.encode(vi_lines[3])


def test_raw_target_round_trips_untokenized_text():
    tokenize = pytest.importorskip("nmt.text.pretokenize").tokenize
    lines = ["Hello, world! It's 3.5% (really).", "Xin chào, thế giới!", "\"Quoted\" text -- and more..."]
    bpe = BPE(learn_bpe([tokenize(x) for x in lines], 50, min_frequency=1))
    target = TargetPipeline.build("raw", bpe, lines)
    for line in lines:
        ids = target.encode(line)
        assert Vocab.UNK not in ids
        assert target.decode(ids) == line
