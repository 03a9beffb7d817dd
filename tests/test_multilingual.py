"""A multilingual BERT end to end: the mBERT-shaped Hugging Face directory of tests/multilingual_bert.py
(cased WordPiece, CJK ideographs split, accents kept; Arabic, Vietnamese, German entries) as --bert.

1. nmt's source tokenization -- the way prepare_data tokenizes: SourcePipeline over the WordPiece
   tokenizer and casing of nmt.data.prepare.load_source_tokenizer -- gives the same pieces and ids
   as Hugging Face's BertTokenizer loaded from the same directory, cased and uncased, on Chinese,
   Vietnamese, German, Arabic, emoji and mixed-script text;
2. the casing comes from the directory's tokenizer files as Hugging Face reads them, and tokenizer
   options nmt's WordPiece does not have are refused instead of tokenizing differently;
3. prepare_data, stage 1, stage 2 and translate.py run on it with a Vietnamese -> English corpus.
"""
import io
import json
import sys

import numpy as np
import pytest
from conftest import SHARED_IWSLT
from multilingual_bert import build_multilingual_bert

import train as train_cli
import translate as translate_cli
from nmt.data.binarized import ParallelData
from nmt.data.prepare import load_source_tokenizer
from nmt.errors import CheckpointError
from nmt.text.pipeline import SourcePipeline
from nmt.weights.pretrained import decide_lower_case, directory_casing, load_bert

pytestmark = pytest.mark.usefixtures("one_thread")

MULTILINGUAL = [
    # Chinese (ideographs are words of their own), Japanese kana (not split)
    "我是学生。我在北京上海大学。", "中文字：你好！東京タワー", "他是日本人，我是中国人",
    # Vietnamese, composed and decomposed, upper case
    "Tôi là người Việt Nam, không có nước.", "Khi tôi còn nhỏ, tôi nghĩ rằng Bắc Triều Tiên là đất nước tốt nhất.",
    "NGƯỜI VIỆT ờ ưu ĐƯỢC những một", "Vie\u0323\u0302t Nam ca\u0301i nho\u0309",
    # German
    "Grüße aus Zürich! Das Mädchen geht über die Straße.", "ÜBER STRASSE straße Über Haus-es",
    # Arabic
    "السلام عليكم، مرحبا كتاب عربي؟", "الكتابات العربية ١٢٣",
    # emoji and symbols
    "Hello 😀 world 🎉!", "👨‍👩‍👧‍👦 family hi🎉", "Prices rose 3.5% in Zürich (see https://example.com/a?b=1).",
    # mixed scripts, accents, whitespace and control characters
    "Nguyễn visited 東京 and Zürich (café, CAFÉ, Café) – مرحبا 😀", "unaffable un-affable UNAFFABLE",
    "a\u00a0b\u3000c\tç\u200bd\x00e\ufffdf", "café cafe\u0301 Ångström İstanbul ñandú ǅ ﬁ",
    "&quot;Tôi&quot; &amp; t&apos;es",
]


def corpus_lines() -> list[str]:
    """The test sentences, and the first 200 lines of IWSLT15 tst2013.vi when ../shared has it."""
    lines = list(MULTILINGUAL)
    path = SHARED_IWSLT / "tst2013.vi"
    if path.exists():
        lines += path.read_text(encoding="utf-8").splitlines()[:200]
    return lines


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def mbert(tmp_path_factory):
    """The cased mBERT-shaped directory; its words come from half the test text (the rest is left
    to characters and ## pieces, as a real vocabulary leaves rare words)."""
    return build_multilingual_bert(tmp_path_factory.mktemp("bert") / "bert-base-multilingual-cased",
                                   words=MULTILINGUAL[::2])


def nmt_source(directory) -> SourcePipeline:
    """The source side exactly as prepare_data builds it for --bert DIRECTORY."""
    tokenizer, max_positions = load_source_tokenizer(directory)
    return SourcePipeline.wordpiece(tokenizer, max_positions=max_positions)


def assert_same_as_hf(source: SourcePipeline, hf, lines) -> int:
    """Pieces and ids ([CLS] ... [SEP]) equal for every line; nmt unescapes HTML entities first
    (pipeline.clean), so HF reads the cleaned line."""
    for number, line in enumerate(lines, start=1):
        text = source.clean(line)
        assert source.tokens(line) == hf.tokenize(text), f"line {number}: {line!r}"
        assert source.encode(line) == hf(text)["input_ids"], f"line {number}: {line!r}"
    return len(lines)


# ---- 1. the same tokens as Hugging Face's tokenizer -------------------------------------------

@pytest.mark.parametrize("fast", [False, True])
def test_cased_multilingual_tokens_equal_hf(mbert, transformers, fast):
    cls = transformers.BertTokenizerFast if fast else transformers.BertTokenizer
    hf = cls.from_pretrained(str(mbert), local_files_only=True)
    source = nmt_source(mbert)
    assert source.do_lower_case is False and hf.do_lower_case is False
    assert assert_same_as_hf(source, hf, corpus_lines()) >= len(MULTILINGUAL)
    # what cased means on this text: case and accents kept, ideographs split, Arabic read as words
    assert source.tokens("Tôi ở Zürich 東京 مرحبا") == ["Tôi", "ở", "Zürich", "東", "京", "مرحبا"]
    assert source.tokens("GRÜF über") == ["G", "##R", "##Ü", "##F", "über"]
    assert source.tokens("Grüße Schöf 🎉") == ["Grüße", "S", "##c", "##h", "##ö", "##f", "🎉"]


def test_uncased_multilingual_tokens_equal_hf(tmp_path, transformers):
    """do_lower_case true (as bert-base-multilingual-uncased): lower-cased and accents stripped, by both."""
    bert = build_multilingual_bert(tmp_path / "bert-base-multilingual-uncased", lower_case=True,
                                   words=[line.lower() for line in MULTILINGUAL])
    hf = transformers.BertTokenizer.from_pretrained(str(bert), local_files_only=True)
    source = nmt_source(bert)
    assert source.do_lower_case is True
    assert_same_as_hf(source, hf, corpus_lines())
    assert source.tokens("Tôi ÜBER Café") == ["toi", "uber", "cafe"]


def test_real_vietnamese_goes_through_the_vocabulary(mbert):
    """Few [UNK]s on Vietnamese the vocabulary's words never saw: characters and ## pieces cover it."""
    source = nmt_source(mbert)
    lines = corpus_lines()[1::2]
    pieces = [p for line in lines for p in source.tokens(line)]
    assert pieces.count("[UNK]") / len(pieces) < 0.02


# ---- 2. casing as the directory's tokenizer files say ------------------------------------------

def test_casing_follows_tokenizer_config(mbert, tmp_path):
    casing = directory_casing(mbert)
    assert casing.lower is False and "tokenizer_config.json" in casing.how
    assert load_bert(mbert)[1].do_lower_case is False                  # training reads it the same way
    # without do_lower_case, HF's BertTokenizer lower-cases (its default); nmt does too ...
    plain = build_multilingual_bert(tmp_path / "mybert", tokenizer_config={"do_lower_case": None})
    assert directory_casing(plain).lower is True and "default" in directory_casing(plain).how
    # ... unless the name says cased: a contradiction only --cased / --uncased settles
    named = build_multilingual_bert(tmp_path / "multi_cased_L-2_H-32_A-2", tokenizer_config={"do_lower_case": None})
    assert directory_casing(named).lower is None
    with pytest.raises(CheckpointError, match=r"lower-cases \(its default\).*says cased.*pass --uncased or --cased"):
        decide_lower_case(named)
    assert decide_lower_case(named, override=False) is False


def test_casing_without_do_lower_case_matches_hf(tmp_path, transformers):
    plain = build_multilingual_bert(tmp_path / "mybert", tokenizer_config={"do_lower_case": None},
                                    words=MULTILINGUAL)
    hf = transformers.BertTokenizer.from_pretrained(str(plain), local_files_only=True)
    assert_same_as_hf(nmt_source(plain), hf, MULTILINGUAL)


def test_tokenizer_json_that_contradicts_hf_default_is_refused(mbert, tmp_path, transformers):
    """A directory with only tokenizer.json (normalizer lowercase false): HF still lower-cases, the
    normalizer says cased, so nmt asks for the flag instead of guessing."""
    hf = transformers.BertTokenizer.from_pretrained(str(mbert), local_files_only=True)
    saved = tmp_path / "saved"
    hf.save_pretrained(str(saved))
    for name in ("config.json", "vocab.txt", "model.safetensors"):
        (saved / name).write_bytes((mbert / name).read_bytes())
    (saved / "tokenizer_config.json").unlink()
    normalizer = json.loads((saved / "tokenizer.json").read_text(encoding="utf-8"))["normalizer"]
    assert normalizer["lowercase"] is False
    casing = directory_casing(saved)
    assert casing.lower is None and "tokenizer.json" in casing.how
    with pytest.raises(CheckpointError, match="pass --uncased or --cased"):
        load_source_tokenizer(saved)


@pytest.mark.parametrize("options, what", [
    ({"do_lower_case": True, "strip_accents": False}, "strip_accents false with do_lower_case true"),
    ({"do_lower_case": False, "strip_accents": True}, "strip_accents true with do_lower_case false"),
    ({"do_lower_case": False, "tokenize_chinese_chars": False}, "tokenize_chinese_chars false"),
])
def test_tokenizer_options_nmt_lacks_are_refused(tmp_path, transformers, options, what):
    """HF would tokenize these differently from Google's rule that nmt follows: refused, naming the file."""
    bert = build_multilingual_bert(tmp_path / "bert", tokenizer_config=options, words=MULTILINGUAL)
    hf = transformers.BertTokenizer.from_pretrained(str(bert), local_files_only=True)
    with pytest.raises(CheckpointError, match=what) as error:
        load_source_tokenizer(bert)
    assert str(bert / "tokenizer_config.json") in str(error.value)
    # the difference is real: the same vocabulary with Google's rule gives other pieces
    from nmt.text.wordpiece import WordPieceTokenizer
    google_rule = WordPieceTokenizer.from_file(bert / "vocab.txt", do_lower_case=options["do_lower_case"])
    assert any(google_rule.tokenize(line) != hf.tokenize(line) for line in MULTILINGUAL)


# ---- 3. end to end: prepare, stage 1, stage 2, translate ---------------------------------------

VI_EN = [
    ("Tôi là người Việt Nam.", "I am Vietnamese."),
    ("Tôi không có nhà.", "I do not have a house."),
    ("Khi tôi còn nhỏ, tôi nghĩ rằng đất nước tôi là tốt nhất.", "When I was little, I thought my country was the best."),
    ("Chúng tôi có một con mèo.", "We have a cat."),
    ("Anh ấy là giáo viên.", "He is a teacher."),
    ("Cô ấy đọc sách mỗi ngày.", "She reads books every day."),
    ("Những người bạn của tôi sống ở Hà Nội.", "My friends live in Hanoi."),
    ("Trời hôm nay đẹp quá!", "The weather is so nice today!"),
    ("Tôi thích uống cà phê.", "I like drinking coffee."),
    ("Bạn có khỏe không?", "How are you?"),
    ("Nước này rất lớn.", "This country is very big."),
    ("Mẹ tôi nấu ăn rất ngon.", "My mother cooks very well."),
]


def test_vietnamese_to_english_end_to_end(tmp_path, capsys, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    splits = {"train": VI_EN, "dev": VI_EN[::3], "test": VI_EN[1::3]}
    for name, pairs in splits.items():
        (raw / f"{name}.vi").write_text("".join(vi + "\n" for vi, _ in pairs), encoding="utf-8")
        (raw / f"{name}.en").write_text("".join(en + "\n" for _, en in pairs), encoding="utf-8")
    # the vocabulary knows the training words; dev/test words it lacks are pieces of characters
    bert = build_multilingual_bert(tmp_path / "bert-base-multilingual-cased", words=[vi for vi, _ in VI_EN[:8]])
    from tools.prepare_data import main as prepare_main
    data = tmp_path / "data"
    assert prepare_main(["--train-prefix", str(raw / "train"), "--valid-prefix", str(raw / "dev"),
                         "--test-prefix", str(raw / "test"), "--src", "vi", "--tgt", "en", "--target-mode", "raw",
                         "--bpe-merges", "50", "--bert", str(bert), "--out", str(data)]) == 0
    capsys.readouterr()
    source = SourcePipeline.from_dict(ParallelData(data, "train").source_config)
    assert source.kind == "wordpiece" and source.do_lower_case is False
    assert source.vocab_tokens == (bert / "vocab.txt").read_text(encoding="utf-8").splitlines()
    unk = source.tokenizer.unk_id
    ids = np.concatenate([ParallelData(data, split).pair(i)[0] for split in ("train", "valid", "test")
                          for i in range(len(ParallelData(data, split)))])
    assert (ids == unk).mean() < 0.01                                     # the source really is read
    train = ParallelData(data, "train")
    first = source.tokenizer.decode(train.pair(0)[0].tolist())
    assert first == "Tôi là người Việt Nam ."                               # cased, accents kept

    run = tmp_path / "run"
    common = ["--data", str(data), "--bert", str(bert), "--run-dir", str(run), "--max-steps", "2",
              "--decoder-layers", "1", "--no-progress", "--encoder-cache", "off", "--max-sentences", "4"]
    assert train_cli.main(["--stage", "decoder", *common]) == 0
    out = capsys.readouterr().out
    assert f"encoder: BERT from {bert}" in out
    init = run / "decoder" / "checkpoint_last.pt"
    assert train_cli.main(["--stage", "finetune", "--init", str(init), *common]) == 0
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("Tôi thích Hà Nội.\n中文 😀\n".encode("utf-8"))))
    code = translate_cli.main(["--quiet", "--beam", "2", "--checkpoint", str(run / "finetune" / "checkpoint_last.pt")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.count("\n") == 2
