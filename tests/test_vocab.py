import pytest

from nmt.errors import VocabError
from nmt.text.vocab import Vocab


def test_build_orders_by_count_then_alphabetically():
    v = Vocab.build([["b", "a", "c"], ["c", "b"], ["c"]])
    assert v.symbols[4:] == ["c", "b", "a"]
    assert v.encode(["a", "zz"]) == [6, Vocab.UNK]


def test_decode_stops_at_eos_and_drops_pad_bos():
    v = Vocab.build([["x", "y"]])
    assert v.decode([Vocab.BOS, 4, Vocab.PAD, 5, Vocab.EOS, 4]) == ["x", "y"]


def test_save_load_roundtrip(tmp_path):
    v = Vocab.build([["über", "straße"]])
    v.save(tmp_path / "dict.txt")
    assert Vocab.load(tmp_path / "dict.txt") == v


def test_bad_files_name_file_and_line(tmp_path):
    p = tmp_path / "dict.txt"
    with pytest.raises(VocabError, match="not found"):
        Vocab.load(p)
    p.write_text("<pad>\n<s>\n</s>\n<unk>\nok\n\nx\n", encoding="utf-8")
    with pytest.raises(VocabError, match=r"dict.txt:6"):
        Vocab.load(p)
    p.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(VocabError, match="must start with"):
        Vocab.load(p)
