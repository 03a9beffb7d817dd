"""Metrics on text: corpus BLEU and chrF through sacrebleu, and paired significance tests of a
system against a baseline. No torch: these work on lines of text (the model's loss and perplexity
are in nmt.train.evaluation).

The paper reports case-sensitive BLEU and marks a system (+)/(−) when it is significantly better/
worse than the baseline at p < 0.05. Two BLEU flavours are useful:

- detokenized BLEU, sacrebleu's default ``tokenize="13a"``: the comparable modern number;
- tokenized BLEU, ``tokenize="none"``: the number the paper's era reported, computed on the Stanford
  pre-tokenized IWSLT references (like ``multi-bleu.perl``) with hypotheses in the same tokenization.

Significance: three named tests (``SIGNIFICANCE_TESTS``; ``SignificanceTest`` holds one with its
settings, ``paired_significance`` runs it). Every one marks "(+)" when p < alpha and the system's
BLEU is higher than the baseline's, "(−)" when p < alpha and it is lower, and nothing on equal BLEU.

- ``ar``: approximate randomization, the paper's test (MultEval's, which the paper used). sacrebleu's
  own implementation (``sacrebleu --paired-ar``, ``significance._paired_ar_test``), called with an
  explicit seed: each of 10,000 trials swaps each sentence's system/baseline outputs with
  probability 1/2 (``default_rng(seed).integers(2, size=(B, N), dtype=bool)``), and two-sided

      p = (1 + #trials with |BLEU(shuffled A) - BLEU(shuffled B)| > |delta|) / (B + 1).

  The count is strict, as MultEval's: every trial of a pair that differs in one sentence only
  reproduces |delta| exactly, so such a pair gets p = 1 / (B + 1) (and equal systems too, which the
  mark rule leaves unmarked).
- ``bootstrap``: sacrebleu's paired bootstrap (``--paired-bs``, ``significance._paired_bs_test``,
  after Moses' bootstrap-hypothesis-difference-significance.pl): 1,000 resamples of the sentences
  with replacement, two-sided, ``p = (1 + #resamples with |d_b| - mean_b |d_b| > |delta|) / (B + 1)``.
- ``bootstrap-one-sided``: Koehn's (2004) test as written here (``paired_bootstrap``), the test
  the demo's tables were first marked with; sacrebleu has no one-sided test. Its p-value is the
  fraction of the same 1,000 resamples (sacrebleu's draws for the same seed) in which the system
  is not better than the baseline (delta >= 0) or not worse (delta < 0); a system compared with
  itself gets p = 1. Near delta = 0 it gives ~0.5 where sacrebleu's gives ~0.4; for a clear
  difference both are about Phi(-|delta| / sd(d)).

sacrebleu's functions are private, but the version is pinned (requirements.txt) and the tests
check that ``paired_significance`` gives ``sacrebleu.significance.PairedTest``'s p-values exactly.
They are fast enough for the study tables (docs/experiments.md, "Significance"), so no test is
re-implemented for speed.

For the one-sided bootstrap, BLEU is a corpus-level ratio, so we cannot average sentence scores;
instead each sentence contributes *sufficient statistics* — hypothesis length, closest reference
length, and clipped matched / total n-gram counts for n = 1..4 — and corpus BLEU is a function of
their sum. We extract them with sacrebleu's own tokenizer and n-gram extraction, so BLEU of the
summed statistics equals ``sacrebleu.BLEU().corpus_score`` (tested). A resample of the test set is
then a vector of counts per sentence, and a block of resamples is one matrix product
``counts [b, N] @ stats [N, 10] -> [b, 10]``.

Worked example (hand-checkable): a perfect hypothesis matches all of its n-grams. "the cat sat on
the mat" has 6 tokens, so 6/5/4/3 n-grams of order 1..4, all matched:

>>> stats = sentence_statistics(["the cat sat on the mat"], ["the cat sat on the mat"])
>>> stats.tolist()  # hyp_len, ref_len, matches n=1..4, totals n=1..4
[[6, 6, 6, 5, 4, 3, 6, 5, 4, 3]]
>>> round(float(bleu_from_statistics(stats.sum(0))), 10)   # sacrebleu says 100.00000000000004
100.0

Dropping "on" leaves 5 tokens: unigrams 5/5, bigrams 3/4, trigrams 1/3, 4-grams 0/2 (sacrebleu's
"exp" smoothing turns the first zero count into 1/2 of a match), brevity penalty exp(1 - 6/5):

>>> hyp = ["the cat sat the mat"]
>>> round(float(bleu_from_statistics(sentence_statistics(hyp, ["the cat sat on the mat"]).sum(0))), 4)
40.9365
>>> import math
>>> round(math.exp(1 - 6 / 5) * (1 * 3/4 * 1/3 * (0.5/2)) ** 0.25 * 100, 4)
40.9365
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import sacrebleu
from sacrebleu.metrics.helpers import extract_all_word_ngrams

from nmt.errors import EvaluationError

MAX_ORDER = 4                       # BLEU-4, as everywhere
STATS_WIDTH = 2 + 2 * MAX_ORDER     # [hyp_len, ref_len, matches 1..4, totals 1..4]: sacrebleu's layout
MARK_BETTER = "(+)"
MARK_WORSE = "(\u2212)"            # "(−)" with a real minus sign, as in the paper's tables


# ----------------------------------------------------------------------------- parallel files

def check_parallel(named: Sequence[tuple[str | Path, Sequence[str]]]) -> None:
    """Raise unless all (path, lines) pairs have the same, non-zero number of lines."""
    for path, lines in named:
        if not lines:
            raise EvaluationError(f"{path}: file is empty")
    counts = {len(lines) for _, lines in named}
    if len(counts) > 1:
        listing = ", ".join(f"{path} has {len(lines)} lines" for path, lines in named)
        raise EvaluationError(f"line counts differ: {listing}; every hypothesis file needs "
                              "exactly one line per reference line")


# ----------------------------------------------------------------------------- sacrebleu wrappers

def bleu_metric(tokenize: str = "13a") -> sacrebleu.BLEU:
    """sacrebleu's BLEU with its defaults (case-sensitive, exp smoothing) and the given tokenizer.

    With ``tokenize="none"`` the caller has said the text is tokenized, so sacrebleu's "looks
    tokenized" warning is switched off (``force``; it is not part of the signature).
    """
    return sacrebleu.BLEU(tokenize=tokenize, force=tokenize == "none")


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str],
                tokenize: str = "13a") -> tuple[sacrebleu.metrics.bleu.BLEUScore, str]:
    """Corpus BLEU and its sacrebleu signature, e.g. 'nrefs:1|case:mixed|eff:no|tok:13a|...'."""
    metric = bleu_metric(tokenize)
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return score, metric.get_signature().format()


def corpus_chrf(hypotheses: Sequence[str],
                references: Sequence[str]) -> tuple[sacrebleu.metrics.chrf.CHRFScore, str]:
    """Corpus chrF (sacrebleu defaults: chrF2, character 6-grams) and its signature."""
    metric = sacrebleu.CHRF()
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return score, metric.get_signature().format()


# ----------------------------------------------------------------------------- BLEU statistics

def sentence_statistics(hypotheses: Sequence[str], references: Sequence[str],
                        tokenize: str = "13a") -> np.ndarray:
    """Per-sentence BLEU sufficient statistics, int64 [N, 10]: hyp_len, ref_len, matches, totals.

    Uses sacrebleu's tokenizer (on the right-stripped line, as sacrebleu does) and its n-gram
    extraction; a hypothesis n-gram's matches are clipped at its count in the reference.
    """
    if len(hypotheses) != len(references):
        raise EvaluationError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    tokenizer = bleu_metric(tokenize).tokenizer
    stats = np.zeros((len(hypotheses), STATS_WIDTH), dtype=np.int64)
    for i, (hyp, ref) in enumerate(zip(hypotheses, references)):
        hyp_ngrams, hyp_len = extract_all_word_ngrams(tokenizer(hyp.rstrip()), 1, MAX_ORDER)
        ref_ngrams, ref_len = extract_all_word_ngrams(tokenizer(ref.rstrip()), 1, MAX_ORDER)
        row = stats[i]
        row[0], row[1] = hyp_len, ref_len
        for ngram, count in hyp_ngrams.items():
            order = len(ngram)                                   # 1..4
            row[1 + order] += min(count, ref_ngrams.get(ngram, 0))
            row[1 + MAX_ORDER + order] += count
    return stats


def bleu_from_statistics(stats: np.ndarray) -> np.ndarray:
    """BLEU (0..100) from summed statistics [..., 10] -> [...], exactly sacrebleu's formula.

    Precision p_n = matches_n / totals_n; the k-th order (k = 1, 2, ...) with zero matches gets
    1 / (2^k * totals_n) instead ("exp" smoothing, as mteval-v13a). No match at all, or an order
    with no n-grams in the hypothesis, gives 0. Brevity penalty exp(1 - r/c) when c < r.
    """
    stats = np.asarray(stats, dtype=np.float64)
    hyp_len, ref_len = stats[..., 0], stats[..., 1]                   # [...]
    matches = stats[..., 2:2 + MAX_ORDER]                             # [..., 4]
    totals = stats[..., 2 + MAX_ORDER:]                               # [..., 4]
    zero = matches == 0
    halvings = np.cumsum(zero, axis=-1)                               # k for the k-th zero order
    safe_totals = np.where(totals > 0, totals, 1.0)
    # percentages, summed logs and the operation order as in sacrebleu, so scores agree to an ulp or two
    precision = np.where(zero, 100.0 / (2.0 ** halvings * safe_totals), 100.0 * matches / safe_totals)
    log_precision = np.log(precision)
    log_sum = log_precision[..., 0]
    for order in range(1, MAX_ORDER):
        log_sum = log_sum + log_precision[..., order]
    with np.errstate(divide="ignore"):
        brevity = np.where(hyp_len >= ref_len, 1.0,
                           np.exp(1.0 - ref_len / np.where(hyp_len > 0, hyp_len, 1.0)))
    brevity = np.where(hyp_len > 0, brevity, 0.0)
    score = brevity * np.exp(log_sum / MAX_ORDER)
    degenerate = zero.all(axis=-1) | (totals == 0).any(axis=-1)
    return np.where(degenerate, 0.0, score)


# ----------------------------------------------------------------------------- paired bootstrap

@dataclass(frozen=True)
class BootstrapResult:
    bleu: float            # system's corpus BLEU on the full test set
    baseline_bleu: float   # baseline's corpus BLEU on the full test set
    delta: float           # bleu - baseline_bleu
    p_value: float         # fraction of resamples contradicting the sign of delta (see module doc)
    significant: bool      # p_value < alpha
    mark: str              # "(+)" significantly better, "(−)" significantly worse, "" otherwise
    num_samples: int       # bootstrap resamples drawn
    seed: int              # numpy default_rng seed of the resampling
    alpha: float           # significance level

    def describe(self) -> str:
        contradicting = round(self.p_value * self.num_samples)
        verdict = (f"significant at p < {self.alpha:g} {self.mark}" if self.significant
                   else f"not significant at p < {self.alpha:g}")
        return (f"paired bootstrap ({self.num_samples} samples, seed {self.seed}): "
                f"BLEU {self.bleu:.2f} vs baseline {self.baseline_bleu:.2f}, "
                f"delta {self.delta:+.2f}, p = {self.p_value:.4f} ({contradicting}/{self.num_samples} "
                f"resamples {'not better' if self.delta >= 0 else 'not worse'}), {verdict}")


def resample_counts(num_sentences: int, num_samples: int, seed: int,
                    max_entries: int = 2_000_000) -> Iterator[np.ndarray]:
    """How often each sentence is drawn in each resample: int64 blocks [b, num_sentences] whose
    rows, concatenated, are the num_samples resamples (blocks keep memory to ~max_entries).

    The draws are ``default_rng(seed).integers(0, N, (B, N))`` (drawn block by block, which gives
    the same stream), i.e. the indices sacrebleu's ``--paired-bs`` draws for the same seed.
    """
    if num_sentences < 1 or num_samples < 1:
        raise EvaluationError("bootstrap needs at least one sentence and one sample")
    rng = np.random.default_rng(seed)
    block = max(1, max_entries // num_sentences)
    for start in range(0, num_samples, block):
        rows = min(block, num_samples - start)
        draws = rng.integers(0, num_sentences, size=(rows, num_sentences))    # [b, N]
        flat = draws + num_sentences * np.arange(rows)[:, None]              # [b, N]
        yield np.bincount(flat.ravel(), minlength=rows * num_sentences).reshape(
            rows, num_sentences)


def paired_bootstrap_from_statistics(system_stats: np.ndarray, baseline_stats: np.ndarray, *,
                                     num_samples: int = 1000, seed: int = 12345,
                                     alpha: float = 0.05) -> BootstrapResult:
    """Paired bootstrap test on per-sentence statistics [N, 10] of system and baseline."""
    if system_stats.shape != baseline_stats.shape:
        raise EvaluationError(f"system has {len(system_stats)} sentences, "
                              f"baseline {len(baseline_stats)}")
    bleu = float(bleu_from_statistics(system_stats.sum(0)))
    baseline_bleu = float(bleu_from_statistics(baseline_stats.sum(0)))
    delta = bleu - baseline_bleu
    system_stats = np.asarray(system_stats, dtype=np.float64)          # [N, 10], exact integers
    baseline_stats = np.asarray(baseline_stats, dtype=np.float64)
    sample_system, sample_baseline = [], []                            # BLEU per resample
    for counts in resample_counts(len(system_stats), num_samples, seed):   # [b, N]
        sample_system.append(bleu_from_statistics(counts @ system_stats))      # [b]
        sample_baseline.append(bleu_from_statistics(counts @ baseline_stats))  # [b]
    sample_system, sample_baseline = np.concatenate(sample_system), np.concatenate(sample_baseline)
    direction = 1.0 if delta >= 0 else -1.0
    p_value = float(np.mean(direction * (sample_system - sample_baseline) <= 0))
    significant = p_value < alpha
    mark = (MARK_BETTER if delta > 0 else MARK_WORSE) if significant else ""
    return BootstrapResult(bleu=bleu, baseline_bleu=baseline_bleu, delta=delta, p_value=p_value,
                           significant=significant, mark=mark, num_samples=num_samples,
                           seed=seed, alpha=alpha)


def paired_bootstrap(hypotheses: Sequence[str], baseline: Sequence[str],
                     references: Sequence[str], *, tokenize: str = "13a",
                     num_samples: int = 1000, seed: int = 12345,
                     alpha: float = 0.05) -> BootstrapResult:
    """Is the system's BLEU significantly different from the baseline's? (see module doc)

    >>> refs = ["a b c d e", "f g h i j"]
    >>> paired_bootstrap(refs, refs, refs).p_value      # a system against itself: never better
    1.0
    """
    if not math.isfinite(alpha) or not 0 < alpha < 1:
        raise EvaluationError(f"alpha must be in (0, 1), got {alpha}")
    return paired_bootstrap_from_statistics(
        sentence_statistics(hypotheses, references, tokenize),
        sentence_statistics(baseline, references, tokenize),
        num_samples=num_samples, seed=seed, alpha=alpha)


# ----------------------------------------------------------------------------- named tests

# kind -> (name, what a sample is, default samples (sacrebleu's and MultEval's), where it comes from)
_TESTS = {
    "ar": ("approximate randomization", "trials", 10_000,
           "the paper's MultEval test, as sacrebleu --paired-ar"),
    "bootstrap": ("paired bootstrap", "resamples", 1_000, "two-sided, as sacrebleu --paired-bs"),
    "bootstrap-one-sided": ("one-sided paired bootstrap", "resamples", 1_000,
                            "Koehn 2004, nmt.metrics.paired_bootstrap"),
}
SIGNIFICANCE_TESTS = tuple(_TESTS)        # the choices of --significance; the first is the default


def significance_mark(delta: float, p_value: float, alpha: float) -> str:
    """"(+)" significantly better, "(−)" significantly worse, "" otherwise (and on equal BLEU)."""
    if not p_value < alpha or delta == 0:
        return ""
    return MARK_BETTER if delta > 0 else MARK_WORSE


@dataclass(frozen=True)
class SignificanceTest:
    """One of SIGNIFICANCE_TESTS with its settings; ``describe()`` is the line a table caption or a
    report names it by, so that every mark says which test made it."""
    kind: str = "ar"
    samples: int = 10_000   # AR trials or bootstrap resamples
    seed: int = 12345       # numpy default_rng seed (sacrebleu's default, SACREBLEU_SEED)
    alpha: float = 0.05     # significance level

    def __post_init__(self):
        if self.kind not in _TESTS:
            raise EvaluationError(f"unknown significance test {self.kind!r}; expected one of "
                                  f"{', '.join(SIGNIFICANCE_TESTS)}")
        if self.samples < 1:
            raise EvaluationError(f"a significance test needs at least 1 sample, got {self.samples}")
        if self.seed < 0:
            raise EvaluationError(f"the seed of a significance test must be >= 0, got {self.seed}")
        if not math.isfinite(self.alpha) or not 0 < self.alpha < 1:
            raise EvaluationError(f"alpha must be between 0 and 1, got {self.alpha}")

    @classmethod
    def named(cls, kind: str = "ar", samples: int | None = None, seed: int = 12345,
              alpha: float = 0.05) -> "SignificanceTest":
        """The test ``kind`` with its usual number of samples unless ``samples`` is given (an unknown
        ``kind`` is refused by the constructor)."""
        usual = _TESTS[kind][2] if kind in _TESTS else 1
        return cls(kind, usual if samples is None else samples, seed, alpha)

    def describe(self) -> str:
        """e.g. "approximate randomization, 10,000 trials, seed 12345, p < 0.05; the paper's
        MultEval test, as sacrebleu --paired-ar"."""
        name, unit, _, origin = _TESTS[self.kind]
        return f"{name}, {self.samples:,} {unit}, seed {self.seed}, p < {self.alpha:g}; {origin}"


@dataclass(frozen=True)
class SignificanceResult:
    test: SignificanceTest
    bleu: float            # system's corpus BLEU on the full test set
    baseline_bleu: float   # baseline's corpus BLEU on the full test set
    delta: float           # bleu - baseline_bleu
    p_value: float         # the test's p-value (module doc)
    mark: str              # "(+)", "(−)" or "": significance_mark

    @property
    def significant(self) -> bool:
        return bool(self.mark)

    def describe(self) -> str:
        verdict = (f"significant {self.mark}" if self.mark else
                   "equal BLEU, not marked" if self.delta == 0 else "not significant")
        return (f"{self.test.describe()}: BLEU {self.bleu:.2f} vs baseline {self.baseline_bleu:.2f}, "
                f"delta {self.delta:+.2f}, p = {self.p_value:.4f}, {verdict}")


def _sacrebleu_paired(kind: str, hypotheses: list[str], baseline: list[str], references: list[str],
                      tokenize: str, samples: int, seed: int) -> tuple[float, float, float]:
    """(system BLEU, baseline BLEU, p) from sacrebleu's own test function, as PairedTest calls it
    but with ``seed`` passed in (PairedTest reads it from the environment, SACREBLEU_SEED)."""
    from sacrebleu import significance
    test_fn = {"ar": significance._paired_ar_test, "bootstrap": significance._paired_bs_test}[kind]
    metric = bleu_metric(tokenize)
    baseline_stats = metric._extract_corpus_statistics(baseline, [references])
    baseline_bleu = metric._aggregate_and_compute(baseline_stats).score
    _, results = test_fn({"BLEU": (baseline_stats, significance.Result(baseline_bleu))}, "system",
                         hypotheses, [references], {"BLEU": metric}, samples, -1, seed)
    return results["BLEU"].score, baseline_bleu, float(results["BLEU"].p_value)


def paired_significance(hypotheses: Sequence[str], baseline: Sequence[str],
                        references: Sequence[str], test: SignificanceTest | None = None, *,
                        tokenize: str = "13a") -> SignificanceResult:
    """Is the system's BLEU significantly different from the baseline's, by ``test`` (default:
    approximate randomization, 10,000 trials)? See the module doc for each test's p-value.

    >>> refs = ["a b c d e", "f g h i j"]
    >>> paired_significance(refs, refs, refs).mark      # a system against itself: equal, unmarked
    ''
    """
    test = test or SignificanceTest()
    if len(hypotheses) != len(references) or len(baseline) != len(references) or not references:
        raise EvaluationError(f"{len(hypotheses)} hypotheses and {len(baseline)} baseline lines for "
                              f"{len(references)} references: need one line per reference, at least one")
    if test.kind == "bootstrap-one-sided":
        one_sided = paired_bootstrap(hypotheses, baseline, references, tokenize=tokenize,
                                     num_samples=test.samples, seed=test.seed, alpha=test.alpha)
        bleu, baseline_bleu, p_value = one_sided.bleu, one_sided.baseline_bleu, one_sided.p_value
    else:
        bleu, baseline_bleu, p_value = _sacrebleu_paired(
            test.kind, list(hypotheses), list(baseline), list(references), tokenize, test.samples, test.seed)
    delta = bleu - baseline_bleu
    return SignificanceResult(test=test, bleu=bleu, baseline_bleu=baseline_bleu, delta=delta,
                              p_value=p_value, mark=significance_mark(delta, p_value, test.alpha))
