"""nmt.text.pretokenize: exact rules, round trips on every real line, robustness to model output."""
import gzip
import random
from pathlib import Path

import pytest

from nmt.text.bpe import BPE, learn_bpe, remove_bpe
from nmt.text.pretokenize import (
    ESCAPED_JOINER,
    JOINER,
    detokenize,
    split_tokens,
    tokenize,
)

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


def normalized(text):
    """What survives the round trip: whitespace runs become one space, ends are stripped."""
    return " ".join(text.split())


@pytest.mark.parametrize("text,tokens", [
    ("Hello, world!", "Hello ￭, world ￭!"),
    ("don't", "don ￭'￭ t"),
    ("geht's über'n Berg", "geht ￭'￭ s über ￭'￭ n Berg"),
    ("Tiếng Việt: \"xin chào\"", "Tiếng Việt ￭: \"￭ xin chào ￭\""),
    ("four-year-old", "four ￭-￭ year ￭-￭ old"),
    ("3.14 1,000 2019", "3 ￭.￭ 14 1 ￭,￭ 000 2019"),
    ("https://x.org/a?b=1", "https ￭: ￭/ ￭/￭ x ￭.￭ org ￭/￭ a ￭?￭ b ￭=￭ 1"),
    ("„Anführung“ «guillemets» ‚x‘", "„￭ Anführung ￭“ «￭ guillemets ￭» ‚￭ x ￭‘"),
    ("...", ". ￭. ￭."),
    ("(a)", "(￭ a ￭)"),
    ("e\u0301te\u0301", "e\u0301te\u0301"),  # combining marks stay in the word
    ("a\ufe0fb", "a\ufe0fb"),  # a variation selector is a mark (Mn): part of the word
    ("a￭b", f"a ￭{ESCAPED_JOINER}￭ b"),  # a literal joiner is escaped
    ("  \t ", ""),
])
def test_exact_rules(text, tokens):
    assert tokenize(text) == tokens
    assert split_tokens(text) == tokens.split()
    assert detokenize(tokens) == normalized(text)


@pytest.mark.parametrize("text", [
    "  leading and trailing  ", "multiple   spaces\tand\ttabs\u00a0and nbsp", "a ￭ b ￭￭ c %FFED ￭%FFED",
    "it's \"quoted\" 'single' — dash – en-dash", "email: john.doe@example.com, url: http://a.b/c?d=e&f",
    "$5.00 + 10% = ~5.50€", "C++ and C# and .NET", "\ufeffBOM at start", "@@ looks @@like@@ bpe @@",
])
def test_round_trip_edge_cases(text):
    assert detokenize(tokenize(text)) == normalized(text)


def read_lines(path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read().split("\n")


def test_round_trip_every_iwslt_line(iwslt_dir):
    count = 0
    for path in sorted(iwslt_dir.glob("tst*")):
        for n, line in enumerate(read_lines(path)):
            assert detokenize(tokenize(line)) == normalized(line), f"{path}:{n + 1}"
            count += 1
    assert count > 5000


def test_round_trip_every_demo_line():
    paths = sorted(DEMO.glob("**/*.gz"))
    if not paths:
        pytest.skip("data/demo/*.gz is absent (built by tools/maintainers/build_demo_corpus.py)")
    for path in paths:
        for n, line in enumerate(read_lines(path)):
            assert detokenize(tokenize(line)) == normalized(line), f"{path}:{n + 1}"


def test_round_trip_through_bpe():
    """raw text -> tokenize -> BPE -> remove_bpe -> detokenize gives the (normalized) text back."""
    paths = sorted(DEMO.glob("**/dev.*.gz"))
    if not paths:
        pytest.skip("data/demo/*.gz is absent (built by tools/maintainers/build_demo_corpus.py)")
    lines = [line for path in paths for line in read_lines(path)]
    tokenized = [tokenize(line) for line in lines]
    bpe = BPE(learn_bpe(tokenized, 2000))
    for line, tokens in zip(lines, tokenized):
        segmented = bpe.segment(tokens)
        assert detokenize(remove_bpe(segmented)) == normalized(line)


@pytest.mark.parametrize("output,text", [
    ("￭ a", "a"), ("a ￭", "a"), ("￭", ""), ("￭ ￭ ￭", ""), ("a ￭ b", "ab"), ("a￭ ￭b", "ab"),
    ("a ￭￭ b", "ab"), ("a ￭￭￭ b", "ab"), ("a￭￭b c", "ab c"), ("", ""), (ESCAPED_JOINER, JOINER),
])
def test_detokenize_odd_model_output(output, text):
    assert detokenize(output) == text


def test_detokenize_never_raises_on_garbage():
    rng = random.Random(0)
    alphabet = ["a", "b", " ", "  ", JOINER, ",", "%FFED", "\t", "'"]
    for _ in range(2000):
        garbage = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        result = detokenize(garbage)
        assert JOINER not in result.replace(JOINER, "") and isinstance(result, str)
        assert result == result.strip()


def test_tokenized_mode_keeps_tokens():
    line = "  It &apos;s  a test , isn &apos;t it ?  "
    assert tokenize(line, mode="tokenized") == "It &apos;s a test , isn &apos;t it ?"
    assert detokenize("It &apos;s a test", mode="tokenized") == "It &apos;s a test"
    with pytest.raises(ValueError, match="mode"):
        tokenize("x", mode="moses")
