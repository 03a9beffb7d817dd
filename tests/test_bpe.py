"""nmt.text.bpe against subword-nmt 0.3.8 (the oracle): identical codes and identical segmentations."""
import contextlib
import gzip
import io
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from nmt.errors import BPEError
from nmt.text.bpe import (
    BPE,
    learn_bpe,
    learn_bpe_from_counts,
    plain_learn_bpe,
    read_codes,
    remove_bpe,
    write_codes,
)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
DEMO = REPO / "data" / "demo"

subword_learn = pytest.importorskip("subword_nmt.learn_bpe")
subword_apply = pytest.importorskip("subword_nmt.apply_bpe")


def reference_learn(lines, num_merges, min_frequency=2):
    """subword-nmt's learn_bpe on the same lines (progress bar and stderr silenced)."""
    out = io.StringIO()
    tqdm = subword_learn.tqdm
    subword_learn.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            subword_learn.learn_bpe(io.StringIO("\n".join(lines) + "\n"), out, num_merges, min_frequency)
    finally:
        subword_learn.tqdm = tqdm
    text = out.getvalue()
    assert text.startswith("#version: 0.2\n")
    return [tuple(line.split(" ")) for line in text.splitlines()[1:]]


def reference_bpe(codes_path):
    with open(codes_path, encoding="utf-8") as f:
        return subword_apply.BPE(f)


@pytest.fixture(scope="module")
def iwslt_lines():
    from conftest import SHARED_IWSLT, require_path
    directory = require_path(SHARED_IWSLT)
    lines = []
    for name in ("tst2012.en", "tst2012.vi", "tst2013.en", "tst2013.vi"):
        lines += (directory / name).read_text(encoding="utf-8").split("\n")
    return lines


def demo_lines(pattern="**/*.gz"):
    paths = sorted(DEMO.glob(pattern))
    if not paths:
        pytest.skip("data/demo/*.gz is absent (built by tools/maintainers/build_demo_corpus.py)")
    lines = []
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines += f.read().split("\n")
    return lines


@pytest.fixture(scope="module")
def iwslt_codes(iwslt_lines, tmp_path_factory):
    """Merge counts -> (our merges, codes path): 500 merges and up to exhaustion (min_frequency stops)."""
    result = {}
    for num_merges in (500, 100_000):
        merges = learn_bpe(iwslt_lines, num_merges)
        path = tmp_path_factory.mktemp("codes") / f"codes.{num_merges}"
        write_codes(merges, path)
        result[num_merges] = (merges, path)
    return result


# ---------------------------------------------------------------------------------------------
# learning


@pytest.mark.parametrize("num_merges", [500, 100_000])
def test_learn_identical_to_subword_nmt_on_iwslt(iwslt_lines, iwslt_codes, num_merges):
    ours, _ = iwslt_codes[num_merges]
    reference = reference_learn(iwslt_lines, num_merges)
    assert len(ours) == len(reference)
    assert ours == reference
    if num_merges == 100_000:  # min_frequency stopped both long before 100k merges
        assert 5000 < len(ours) < num_merges


def test_codes_file_identical_to_subword_nmt(iwslt_lines, tmp_path):
    (tmp_path / "in.txt").write_text("\n".join(iwslt_lines[:800]) + "\n", encoding="utf-8")
    ours = tmp_path / "ours.codes"
    write_codes(learn_bpe(iwslt_lines[:800], 300), ours)
    out = io.StringIO()
    with contextlib.redirect_stderr(io.StringIO()):
        subword_learn.learn_bpe(io.StringIO("\n".join(iwslt_lines[:800]) + "\n"), out, 300)
    assert ours.read_bytes() == out.getvalue().encode("utf-8")


def test_golden_codes_and_segmentation():
    """Small golden files made by subword-nmt 0.3.8 (tie-breaks, 'aaaa' overlaps, tabs and
    no-break spaces inside words, empty and whitespace-only lines)."""
    lines = (DATA / "bpe_golden_input.txt").read_text(encoding="utf-8").split("\n")
    assert learn_bpe(lines, 60) == read_codes(DATA / "bpe_golden.codes")
    bpe = BPE.from_codes_file(DATA / "bpe_golden.codes")
    expected = (DATA / "bpe_golden.bpe").read_text(encoding="utf-8").split("\n")
    from tools.apply_bpe import segment_line
    text = (DATA / "bpe_golden_input.txt").read_text(encoding="utf-8")
    assert "".join(segment_line(bpe, line) for line in text.splitlines(keepends=True)) == "\n".join(expected)


@pytest.mark.parametrize("seed_block", range(4))
def test_learn_identical_on_random_corpora(seed_block):
    """Tiny alphabets re-create symbols (ab+c, a+bc) and tie a lot: this exercises subword-nmt's
    pruning/threshold bookkeeping, which our learner copies (without it most of these differ)."""
    for seed in range(seed_block * 25, seed_block * 25 + 25):
        rng = random.Random(seed)
        alphabet = rng.choice(["ab", "abc", "abcd", "ab\t", "aab", "xy\u00a0z"])
        words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
                 for _ in range(rng.randint(5, 200))]
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 30)))
                 for _ in range(rng.randint(5, 300))]
        num_merges = rng.choice([10, 100, 1000])
        min_frequency = rng.choice([1, 2, 3])
        assert learn_bpe(lines, num_merges, min_frequency) == \
            reference_learn(lines, num_merges, min_frequency), f"seed {seed}"


def test_learn_small_cases():
    assert learn_bpe([], 10) == []
    assert learn_bpe(["a b c"], 10) == []  # no pairs at all
    assert learn_bpe(["ab ab"], 0) == []
    assert learn_bpe(["ab ab"], 10) == [("a", "b</w>")]
    assert learn_bpe(["ab"], 10) == []  # frequency 1 < min_frequency 2
    assert learn_bpe(["ab"], 10, min_frequency=1) == [("a", "b</w>")]
    assert learn_bpe_from_counts({"ab": 2}, 10) == learn_bpe(["ab ab"], 10)
    with pytest.raises(BPEError, match="min_frequency"):
        learn_bpe(["ab ab"], 10, min_frequency=0)
    with pytest.raises(BPEError, match="merges"):
        learn_bpe(["ab ab"], -1)


@pytest.mark.parametrize("pattern,num_lines,num_merges", [("en-vi/train.vi.gz", 2000, 300),
                                                          ("en-de/train.en.gz", 600, 150)])
def test_plain_twin_learns_the_same_merges(pattern, num_lines, num_merges):
    """plain_learn_bpe (a full recount per merge) equals the fast learner on real text: the first
    lines of a demo corpus side (a few seconds: the plain twin is slow by design)."""
    lines = demo_lines(pattern)[:num_lines]
    fast = learn_bpe(lines, num_merges)
    assert len(fast) == num_merges
    assert plain_learn_bpe(lines, num_merges) == fast


def test_plain_twin_small_cases_and_golden_input():
    """Stops like the fast learner (no pairs, min_frequency); the golden input's tie-breaks and
    'aaaa' overlaps give the same 60 merges."""
    for lines, num_merges, min_frequency in [([], 10, 2), (["a b c"], 10, 2), (["ab ab"], 0, 2),
                                             (["ab ab"], 10, 2), (["ab"], 10, 2), (["ab"], 10, 1),
                                             (["aaaa aaaa aaa", "aa a aaaaa"], 10, 1)]:
        assert plain_learn_bpe(lines, num_merges, min_frequency) == learn_bpe(lines, num_merges, min_frequency)
    lines = (DATA / "bpe_golden_input.txt").read_text(encoding="utf-8").split("\n")
    assert plain_learn_bpe(lines, 60) == learn_bpe(lines, 60) == read_codes(DATA / "bpe_golden.codes")


# ---------------------------------------------------------------------------------------------
# applying


@pytest.mark.parametrize("num_merges", [500, 100_000])
def test_apply_identical_to_subword_nmt_on_iwslt(iwslt_lines, iwslt_codes, num_merges):
    _, codes = iwslt_codes[num_merges]
    ours, reference = BPE.from_codes_file(codes), reference_bpe(codes)
    for n, line in enumerate(iwslt_lines):
        segmented = ours.segment(line)
        assert segmented == reference.segment(line), f"line {n + 1}: {line!r}"
        assert ours.segment_tokens(line.split()) == reference.segment_tokens(line.split())
        assert remove_bpe(segmented) == " ".join(line.split(" ")).strip() or \
            remove_bpe(segmented) == " ".join(line.split())


def test_apply_identical_to_subword_nmt_on_demo(iwslt_codes):
    lines = demo_lines()
    _, codes = iwslt_codes[100_000]
    ours, reference = BPE.from_codes_file(codes), reference_bpe(codes)
    for n, line in enumerate(lines):
        assert ours.segment(line) == reference.segment(line), f"line {n + 1}: {line!r}"


@pytest.mark.slow
@pytest.mark.parametrize("pattern,num_merges", [("en-vi/train.vi.gz", 5000), ("en-de/train.de.gz", 100_000)])
def test_learn_and_apply_identical_on_demo(pattern, num_merges, tmp_path):
    lines = demo_lines(pattern)
    ours = learn_bpe(lines, num_merges)
    assert ours == reference_learn(lines, num_merges)
    write_codes(ours, tmp_path / "codes")
    bpe, reference = BPE.from_codes_file(tmp_path / "codes"), reference_bpe(tmp_path / "codes")
    assert [bpe.segment(line) for line in lines] == [reference.segment(line) for line in lines]


def test_segment_whitespace_and_cache():
    bpe = BPE([("a", "b"), ("ab", "c</w>")])
    assert bpe.segment("  abc   abd\r\n") == "abc ab@@ d"
    assert bpe.segment("") == bpe.segment("  \n") == ""
    assert bpe.segment("abc abc") == "abc abc"  # second time from the cache
    assert bpe.segment_tokens(["abd", "", "x"]) == ["ab@@", "d", "x"]
    assert BPE([("a", "b")], separator="+").segment("abd") == "ab+ d"
    with pytest.raises(BPEError):
        BPE([("a",)])


def test_remove_bpe():
    assert remove_bpe("un@@ believ@@ able") == "unbelievable"
    assert remove_bpe("dangling@@") == "dangling"
    assert remove_bpe("dangling@@ ") == "dangling"
    assert remove_bpe("a+ b", separator="+") == "ab"
    assert remove_bpe("e@mail") == "e@mail"


# ---------------------------------------------------------------------------------------------
# codes files and bad input


def test_codes_round_trip(tmp_path):
    merges = [("a", "b"), ("ab", "c</w>"), ("ế", "t</w>")]
    write_codes(merges, tmp_path / "codes")
    assert (tmp_path / "codes").read_text(encoding="utf-8").splitlines()[0] == "#version: 0.2"
    assert read_codes(tmp_path / "codes") == merges
    with pytest.raises(BPEError, match="cannot be written"):
        write_codes([("a b", "c")], tmp_path / "bad")


@pytest.mark.parametrize("content,match", [
    (b"", r"codes:1: expected the header"),
    (b"a b\n", r"codes:1: expected the header '#version: 0.2'"),
    (b"#version: 0.2\na b\nabc\n", r"codes:3: malformed merge 'abc'"),
    (b"#version: 0.2\na b\n\nc d\n", r"codes:3: malformed merge ''"),
    (b"#version: 0.2\na b c\n", r"codes:2: malformed"),
    (b"#version: 0.2\na b\n\xff\xfe x\n", r"codes:3: not valid UTF-8"),
])
def test_bad_codes_files(tmp_path, content, match):
    (tmp_path / "codes").write_bytes(content)
    with pytest.raises(BPEError, match=match):
        read_codes(tmp_path / "codes")


def test_codes_trailing_blank_lines_are_fine(tmp_path):
    (tmp_path / "codes").write_bytes(b"#version: 0.2\na b\n\n\n")
    assert read_codes(tmp_path / "codes") == [("a", "b")]
    with pytest.raises(BPEError, match="cannot read"):
        read_codes(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------
# command-line tools


def run_tool(name, *args, stdin=b""):
    return subprocess.run([sys.executable, str(REPO / "tools" / name), *map(str, args)], input=stdin,
                          capture_output=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_tools_match_subword_nmt(tmp_path):
    text = (DATA / "bpe_golden_input.txt").read_bytes()
    learned = run_tool("learn_bpe.py", "-s", 60, stdin=text)
    assert learned.returncode == 0, learned.stderr
    assert learned.stdout == (DATA / "bpe_golden.codes").read_bytes()
    (tmp_path / "in.txt").write_bytes(text)
    assert run_tool("learn_bpe.py", "-i", tmp_path / "in.txt", "-o", tmp_path / "codes", "-s", 60).returncode == 0
    assert (tmp_path / "codes").read_bytes() == (DATA / "bpe_golden.codes").read_bytes()
    applied = run_tool("apply_bpe.py", "-c", tmp_path / "codes", "-i", tmp_path / "in.txt")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout == (DATA / "bpe_golden.bpe").read_bytes()
    piped = run_tool("apply_bpe.py", "--codes", tmp_path / "codes", "-o", tmp_path / "out", stdin=text)
    assert piped.returncode == 0 and (tmp_path / "out").read_bytes() == applied.stdout
    plus = run_tool("apply_bpe.py", "-c", tmp_path / "codes", "--separator", "+", stdin=b"inside\n")
    assert plus.returncode == 0 and b"+ " in plus.stdout and b"@@" not in plus.stdout
    assert remove_bpe(plus.stdout.decode(), separator="+") == "inside\n"


def test_tools_report_bad_input(tmp_path):
    bad = run_tool("learn_bpe.py", stdin=b"fine\nbro\xffken\n")
    assert bad.returncode == 2 and bad.stderr.startswith(b"error: <stdin>:2: not valid UTF-8")
    (tmp_path / "codes").write_bytes(b"l o\n")
    no_header = run_tool("apply_bpe.py", "-c", tmp_path / "codes", stdin=b"low\n")
    assert no_header.returncode == 2 and b"error: " in no_header.stderr and b"codes:1" in no_header.stderr
    missing = run_tool("apply_bpe.py", "-c", tmp_path / "codes", "-i", tmp_path / "nope")
    assert missing.returncode == 2 and b"error: " in missing.stderr
    assert b"Traceback" not in bad.stderr + no_header.stderr + missing.stderr
