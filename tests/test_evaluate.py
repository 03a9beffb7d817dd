"""nmt/metrics.py and tools/evaluate.py: BLEU statistics against sacrebleu (the oracle) on real
IWSLT15 text, the significance tests (approximate randomization and the bootstraps: known answers,
sacrebleu's own p-values), and the CLI's options and handling of bad input."""
import logging
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
from sacrebleu.significance import PairedTest

from nmt.errors import DataError
from nmt.errors import EvaluationError
from nmt.metrics import (
    MARK_BETTER,
    MARK_WORSE,
    SIGNIFICANCE_TESTS,
    SignificanceTest,
    bleu_from_statistics,
    paired_bootstrap,
    paired_bootstrap_from_statistics,
    paired_significance,
    resample_counts,
    sentence_statistics,
)
from nmt.text.lines import read_lines
from tools.evaluate import main


@pytest.fixture(autouse=True)
def quiet_sacrebleu():
    """sacrebleu warns that the (tokenized) IWSLT text looks tokenized; that is expected here."""
    logger = logging.getLogger("sacrebleu")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def degrade(lines, drop, seed):
    """A deterministic 'system': the reference with each word dropped with probability `drop`."""
    rng = np.random.default_rng(seed)
    out = []
    for line in lines:
        words = line.split()
        keep = rng.random(len(words)) >= drop
        out.append(" ".join(w for w, k in zip(words, keep) if k))
    return out


def shuffle_some(lines, every, seed):
    """Another deterministic degradation: reverse the word order of every `every`-th line."""
    return [" ".join(reversed(line.split())) if i % every == 0 else line
            for i, line in enumerate(lines)]


@pytest.fixture
def refs_2013(iwslt_dir):
    return read_lines(iwslt_dir / "tst2013.vi")


# ----------------------------------------------------------------------------- reading

def test_read_lines_real_file_bom_and_last_line(iwslt_dir):
    lines = read_lines(iwslt_dir / "tst2013.vi")
    assert len(lines) == 1268                      # 1267 newlines + a last line without one
    assert lines[0].startswith("Khi tôi còn nhỏ")  # BOM dropped
    assert not any("\ufeff" in line for line in lines)


def test_read_lines_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nalso fine\nbroken \xff here\n")
    with pytest.raises(DataError, match=r"bad\.txt:3: invalid UTF-8"):
        read_lines(bad)
    with pytest.raises(DataError, match="missing.txt: file not found"):
        read_lines(tmp_path / "missing.txt")
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"\xef\xbb\xbfa b\r\nc\r\n")
    assert read_lines(crlf) == ["a b", "c"]


# ----------------------------------------------------------------------------- BLEU statistics

def test_identical_is_100_and_hand_checked_statistics():
    refs = ["the cat sat on the mat", "a dog ."]
    stats = sentence_statistics(refs, refs)
    # "a dog ." has 3 tokens: 3/2/1/0 n-grams of order 1..4
    assert stats.tolist() == [[6, 6, 6, 5, 4, 3, 6, 5, 4, 3], [3, 3, 3, 2, 1, 0, 3, 2, 1, 0]]
    assert bleu_from_statistics(stats.sum(0)) == pytest.approx(100.0)
    result = paired_bootstrap(refs, refs, refs)
    assert result.p_value == 1.0 and not result.significant and result.mark == ""


@pytest.mark.parametrize("tokenize", ["13a", "none"])
@pytest.mark.parametrize("make_system", [
    lambda refs: degrade(refs, 0.0, 0),
    lambda refs: degrade(refs, 0.15, 1),
    lambda refs: degrade(refs, 0.6, 2),
    lambda refs: shuffle_some(degrade(refs, 0.1, 3), every=3, seed=4),
])
def test_corpus_bleu_from_statistics_equals_sacrebleu(refs_2013, tokenize, make_system):
    hyps = make_system(refs_2013)
    stats = sentence_statistics(hyps, refs_2013, tokenize).sum(0)
    oracle = sacrebleu.BLEU(tokenize=tokenize).corpus_score(hyps, [refs_2013])
    assert stats[0] == oracle.sys_len and stats[1] == oracle.ref_len
    assert stats[2:6].tolist() == oracle.counts and stats[6:].tolist() == oracle.totals
    # numpy's vectorised log/exp may differ from libm's by an ulp: equal to ~1e-13, not to the bit
    assert float(bleu_from_statistics(stats)) == pytest.approx(oracle.score, rel=1e-13, abs=1e-13)


def test_vectorized_bleu_equals_sacrebleu_formula_on_edge_cases():
    cases = [
        [5, 6, 5, 3, 1, 0, 5, 4, 3, 2],      # a zero 4-gram count: exp smoothing
        [5, 6, 5, 0, 0, 0, 5, 4, 3, 2],      # three zero orders: 1/2, 1/4, 1/8
        [0, 6, 0, 0, 0, 0, 0, 0, 0, 0],      # empty hypothesis
        [3, 3, 3, 2, 1, 0, 3, 2, 1, 0],      # no 4-grams at all
        [9, 6, 7, 4, 2, 1, 9, 8, 7, 6],      # longer than the reference: no brevity penalty
    ]
    ours = bleu_from_statistics(np.array(cases))
    for row, score in zip(cases, ours):
        oracle = sacrebleu.BLEU.compute_bleu(row[2:6], row[6:], row[0], row[1], smooth_method="exp")
        assert score == pytest.approx(oracle.score, rel=1e-12, abs=1e-12), row


# ----------------------------------------------------------------------------- bootstrap

def test_resample_counts_are_sacrebleus_draws():
    counts = np.concatenate(list(resample_counts(50, 20, seed=12345, max_entries=200)))
    assert counts.shape == (20, 50) and (counts.sum(1) == 50).all()
    draws = np.random.default_rng(12345).choice(50, size=(20, 50), replace=True)
    assert (counts == np.stack([np.bincount(row, minlength=50) for row in draws])).all()


def test_bootstrap_is_deterministic_given_seed(refs_2013):
    system, baseline = degrade(refs_2013, 0.30, 5), degrade(refs_2013, 0.30, 6)
    sys_stats = sentence_statistics(system, refs_2013)
    base_stats = sentence_statistics(baseline, refs_2013)
    first = paired_bootstrap_from_statistics(sys_stats, base_stats, seed=7)
    assert paired_bootstrap_from_statistics(sys_stats, base_stats, seed=7) == first
    assert 0.0 < first.p_value < 1.0                      # close systems: resamples disagree
    others = {paired_bootstrap_from_statistics(sys_stats, base_stats, seed=s).p_value
              for s in (8, 9, 10)}
    assert others != {first.p_value}                      # the seed matters


def test_clearly_better_and_clearly_worse(refs_2013):
    good, bad = degrade(refs_2013, 0.15, 1), degrade(refs_2013, 0.35, 2)
    good_stats, bad_stats = (sentence_statistics(x, refs_2013) for x in (good, bad))
    better = paired_bootstrap_from_statistics(good_stats, bad_stats)
    assert better.delta > 5 and better.p_value < 0.05 and better.significant
    assert better.mark == MARK_BETTER == "(+)"
    worse = paired_bootstrap_from_statistics(bad_stats, good_stats)
    assert worse.delta == pytest.approx(-better.delta)
    assert worse.p_value < 0.05 and worse.mark == MARK_WORSE == "(\u2212)"
    assert worse.bleu == pytest.approx(sacrebleu.BLEU().corpus_score(bad, [refs_2013]).score)


@pytest.mark.parametrize("system_drop, system_seed", [
    (0.295, 3), (0.30, 2), pytest.param(0.285, 5, marks=pytest.mark.slow)])
def test_p_value_agrees_with_sacrebleu_paired_bs(iwslt_dir, system_drop, system_seed):
    """Same resamples (seed 12345), different test statistic (see nmt/metrics.py): on these
    pairs (delta +1.1, +1.9 and -0.05 BLEU) the two p-values are measured 0.039/0.045,
    0.002/0.001 and 0.482/0.394; near delta = 0 the definitions differ by design."""
    refs = read_lines(iwslt_dir / "tst2012.vi")
    baseline, system = degrade(refs, 0.30, 1), degrade(refs, system_drop, system_seed)
    ours = paired_bootstrap(system, baseline, refs, seed=12345)
    _, scores = PairedTest([("baseline", baseline), ("system", system)],
                           {"BLEU": sacrebleu.BLEU()}, [refs], test_type="bs", n_samples=1000)()
    theirs = scores["BLEU"][1]
    assert ours.bleu == pytest.approx(theirs.score)
    tolerance = 0.02 if abs(ours.delta) > 0.5 else 0.15
    assert abs(ours.p_value - theirs.p_value) < tolerance
    assert ours.significant == (theirs.p_value < 0.05)


# ----------------------------------------------------------------------------- named tests

TRIALS = {"ar": 2000, "bootstrap": 1000, "bootstrap-one-sided": 1000}


@pytest.mark.parametrize("tokenize", ["13a", "none"])
@pytest.mark.parametrize("kind", SIGNIFICANCE_TESTS)
def test_known_answers(refs_2013, kind, tokenize):
    """Identical systems: not significant, no mark. The reference against a copy missing every
    sentence's last two words (better on every sentence): (+), and the reverse (−), in both BLEU
    columns and by every test."""
    refs = refs_2013[:300]
    test = SignificanceTest.named(kind, TRIALS[kind])
    same = paired_significance(refs, refs, refs, test, tokenize=tokenize)
    assert same.delta == 0 and same.mark == "" and not same.significant
    assert same.describe().endswith("equal BLEU, not marked")
    # what each test's p-value is for identical systems: MultEval's strict count (and sacrebleu's)
    # finds no trial *beyond* a zero difference, p = 1 / (B + 1); Koehn's: never better, p = 1
    assert same.p_value == (1.0 if kind == "bootstrap-one-sided" else 1 / (test.samples + 1))
    cut = [" ".join(line.split()[:-2]) for line in refs]
    better = paired_significance(refs, cut, refs, test, tokenize=tokenize)
    assert better.delta > 5 and better.p_value < 0.01 and better.mark == MARK_BETTER and better.significant
    worse = paired_significance(cut, refs, refs, test, tokenize=tokenize)
    assert worse.delta == pytest.approx(-better.delta) and worse.p_value < 0.01 and worse.mark == MARK_WORSE
    assert worse.bleu == pytest.approx(sacrebleu.BLEU(tokenize=tokenize).corpus_score(cut, [refs]).score)


def test_close_systems_are_not_marked(refs_2013):
    """Two systems of the same quality (the same word-drop rate, other words dropped): no test marks
    either; AR's and the bootstraps' p-values are far from 0.05."""
    refs = refs_2013[:400]
    a, b = degrade(refs, 0.30, 5), degrade(refs, 0.30, 6)
    for kind in SIGNIFICANCE_TESTS:
        result = paired_significance(a, b, refs, SignificanceTest.named(kind, TRIALS[kind]))
        assert 0 < abs(result.delta) < 1 and result.p_value > 0.2 and result.mark == "", (kind, result)


def test_ar_counts_strictly_as_multeval(refs_2013):
    """A system that differs from the baseline in one sentence only: every AR trial swaps that
    sentence or not, reproducing |delta| exactly, and MultEval's strict count finds none beyond it:
    p = 1 / (B + 1). The one-sided bootstrap sees the sentence in ~2/3 of the resamples only."""
    refs = refs_2013[:50]
    baseline = degrade(refs, 0.30, 5)
    system = [refs[0]] + baseline[1:]
    ar = paired_significance(system, baseline, refs, SignificanceTest.named("ar", 500))
    assert ar.delta > 0 and ar.p_value == 1 / 501 and ar.mark == MARK_BETTER
    one_sided = paired_significance(system, baseline, refs, SignificanceTest.named("bootstrap-one-sided"))
    assert 0.2 < one_sided.p_value < 0.5 and one_sided.mark == ""


@pytest.mark.parametrize("kind, tokenize", [("ar", "13a"), ("ar", "none"), ("bootstrap", "13a")])
def test_p_values_are_sacrebleus_own(iwslt_dir, monkeypatch, kind, tokenize):
    """paired_significance's ar / bootstrap are sacrebleu's tests: the very p-values of
    sacrebleu.significance.PairedTest (the API behind sacrebleu --paired-ar / --paired-bs, seed
    12345 from SACREBLEU_SEED's default), with its default 10,000 trials / 1,000 resamples."""
    monkeypatch.delenv("SACREBLEU_SEED", raising=False)
    refs = read_lines(iwslt_dir / "tst2012.vi")[:400]
    baseline, system = degrade(refs, 0.30, 1), degrade(refs, 0.28, 2)
    ours = paired_significance(system, baseline, refs, SignificanceTest.named(kind), tokenize=tokenize)
    _, scores = PairedTest([("baseline", baseline), ("system", system)], {"BLEU": sacrebleu.BLEU(tokenize=tokenize)},
                           [refs], test_type={"ar": "ar", "bootstrap": "bs"}[kind])()
    theirs = scores["BLEU"][1]
    assert ours.test.samples == {"ar": 10_000, "bootstrap": 1_000}[kind]
    assert (ours.bleu, ours.baseline_bleu, ours.p_value) == (theirs.score, scores["BLEU"][0].score, theirs.p_value)
    assert 0.001 < ours.p_value < 0.5                   # a pair whose p-value depends on the draws
    other = paired_significance(system, baseline, refs, SignificanceTest.named(kind, seed=7), tokenize=tokenize)
    assert other.p_value != ours.p_value                 # the seed is ours to set


def test_docs_give_each_tests_caption_as_the_tables_print_it():
    """docs/experiments.md's table of tests gives each --significance choice with the caption that
    the tables print for it (SignificanceTest.describe)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "experiments.md").read_text(encoding="utf-8")
    section = doc.split("### Significance", 1)[1].split("\n#", 1)[0]
    table = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
             if line.startswith("| `") and not line.startswith("| `--")]          # the body rows
    rows = {cells[0].strip("`").split("`")[0]: cells[2] for cells in table}
    assert rows == {kind: SignificanceTest.named(kind).describe() for kind in SIGNIFICANCE_TESTS}


def test_significance_test_settings_are_checked():
    assert SignificanceTest() == SignificanceTest.named("ar") == SignificanceTest("ar", 10_000, 12345, 0.05)
    assert SignificanceTest.named("bootstrap").samples == 1000
    for bad, message in ((dict(kind="t-test"), "unknown significance test 't-test'"),
                         (dict(samples=0), "at least 1 sample"), (dict(seed=-1), "seed"),
                         (dict(alpha=1.0), "alpha must be between 0 and 1")):
        with pytest.raises(EvaluationError, match=message):
            SignificanceTest(**bad)
    with pytest.raises(EvaluationError, match="one line per reference"):
        paired_significance(["a"], ["a", "b"], ["a", "b"])


# ----------------------------------------------------------------------------- CLI

def write(path, lines, bom=False):
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cli_scores_and_tests(tmp_path, refs_2013, capsys):
    refs = refs_2013[:300]
    ref = write(tmp_path / "ref.vi", refs, bom=True)
    hyp = write(tmp_path / "hyp.vi", degrade(refs, 0.15, 1))
    base = write(tmp_path / "base.vi", degrade(refs, 0.35, 2))
    assert main(["--hyp", str(hyp), "--ref", str(ref), "--baseline", str(base), "--chrf",
                 "--tokenized", "--bootstrap-samples", "200"]) == 0
    out = capsys.readouterr().out
    assert "BLEU = " in out and "tok:none" in out and "chrF2 = " in out
    # the default test, approximate randomization, with --bootstrap-samples (an alias of --samples) trials
    assert "approximate randomization, 200 trials, seed 12345, p < 0.05; the paper's MultEval test" in out
    assert out.rstrip().endswith("significant (+)")


@pytest.mark.parametrize("kind, named", [
    ("ar", "approximate randomization, 10,000 trials, seed 12345"),
    ("bootstrap", "paired bootstrap, 1,000 resamples, seed 12345, p < 0.05; two-sided"),
    ("bootstrap-one-sided", "one-sided paired bootstrap, 1,000 resamples, seed 12345")])
def test_cli_significance_option_names_the_test(tmp_path, refs_2013, capsys, kind, named):
    """--significance picks the test (default ar, the paper's); its report line names the test and
    gives that test's p-value for the BLEU column asked for."""
    refs = refs_2013[:200]
    ref, hyp = write(tmp_path / "ref.vi", refs), write(tmp_path / "hyp.vi", degrade(refs, 0.35, 2))
    base = write(tmp_path / "base.vi", degrade(refs, 0.15, 1))
    argv = ["--hyp", str(hyp), "--ref", str(ref), "--baseline", str(base), "--tokenized"]
    assert main(argv + ["--significance", kind]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    want = paired_significance(degrade(refs, 0.35, 2), degrade(refs, 0.15, 1), refs,
                               SignificanceTest.named(kind), tokenize="none")
    assert line == want.describe() and line.startswith(named) and line.endswith("significant (\u2212)")
    if kind == "ar":                                    # the default
        assert main(argv) == 0 and capsys.readouterr().out.splitlines()[-1] == line


def test_cli_help_offers_the_tests(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--significance {ar,bootstrap,bootstrap-one-sided}" in text
    assert "approximate randomization (the paper's, MultEval's; the default)" in text


def test_cli_bom_is_ignored(tmp_path, capsys):
    lines = ["Xin chào thế giới này .", "Tôi là một con mèo nhỏ ."]
    ref = write(tmp_path / "ref.vi", lines, bom=True)
    hyp = write(tmp_path / "hyp.vi", lines)
    assert main(["--hyp", str(hyp), "--ref", str(ref)]) == 0
    assert "BLEU = 100.00" in capsys.readouterr().out


@pytest.mark.parametrize("case, expected", [
    ("line_count", r"line counts differ: .*hyp\.vi has 2 lines, .*ref\.vi has 3 lines"),
    ("utf8", r"hyp\.vi:2: invalid UTF-8"),
    ("missing", r"nothere\.vi: no such file"),
    ("empty", r"hyp\.vi: file is empty"),
    ("samples", r"--samples must be at least 1"),
])
def test_cli_errors(tmp_path, capsys, case, expected):
    ref = write(tmp_path / "ref.vi", ["a b c", "d e f", "g h i"])
    hyp = tmp_path / "hyp.vi"
    argv = ["--hyp", str(hyp), "--ref", str(ref)]
    if case == "line_count":
        write(hyp, ["a b c", "d e f"])
    elif case == "utf8":
        hyp.write_bytes(b"a b c\nd \xc3\x28 f\ng h i\n")
    elif case == "missing":
        argv[1] = str(tmp_path / "nothere.vi")
    elif case == "empty":
        hyp.write_bytes(b"")
    elif case == "samples":
        write(hyp, ["a b c", "d e f", "g h i"])
        argv += ["--baseline", str(ref), "--bootstrap-samples", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert __import__("re").search(expected, err), err
