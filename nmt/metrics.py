"""Metrics on text: corpus BLEU and chrF through sacrebleu, and paired bootstrap significance. No torch:
these work on lines of text (the model's loss and perplexity are in nmt.train.evaluation).

The paper reports case-sensitive BLEU and marks a system (+)/(−) when it is significantly better/
worse than the baseline at p < 0.05. Two BLEU flavours are useful:

- detokenized BLEU, sacrebleu's default ``tokenize="13a"``: the comparable modern number;
- tokenized BLEU, ``tokenize="none"``: the number the paper's era reported, computed on the Stanford
  pre-tokenized IWSLT references (like ``multi-bleu.perl``) with hypotheses in the same tokenization.

Paired bootstrap resampling (Koehn, 2004). BLEU is a corpus-level ratio, so we cannot average
sentence scores; instead each sentence contributes *sufficient statistics* — hypothesis length,
closest reference length, and clipped matched / total n-gram counts for n = 1..4 — and corpus BLEU
is a function of their sum. We extract them with sacrebleu's own tokenizer and n-gram extraction,
so BLEU of the summed statistics equals ``sacrebleu.BLEU().corpus_score`` (tested). A resample of
the test set is then a vector of counts per sentence, and a block of resamples is one matrix product
``counts [b, N] @ stats [N, 10] -> [b, 10]``.

The p-value (our definition, Koehn's): draw ``num_samples`` resamples of the N sentence indices with
replacement (``numpy.random.default_rng(seed)``), score system and baseline on each, and let
``delta = BLEU(system) - BLEU(baseline)`` on the full set. Then

    p = fraction of resamples in which the system is NOT better than the baseline   (delta >= 0)
    p = fraction of resamples in which the system is NOT worse than the baseline    (delta <  0)

and the result is significant when p < alpha (0.05): mark "(+)" for a better, "(−)" for a worse
system. A system compared with itself ties on every resample, so p = 1.

How this relates to the other tools:

- ``sacrebleu --paired-bs`` (``sacrebleu.significance._paired_bs_test``) draws the same resamples
  for the same seed (``default_rng(seed).choice`` == ``.integers``) but tests the two-sided
  statistic ``|d_b| - mean_b |d_b| > |delta|`` with ``p = (count + 1) / (B + 1)``. For a clear
  difference both are about Phi(-|delta| / sd(d)) and agree within sampling noise; near delta = 0
  ours is ~0.5 and sacrebleu's ~0.4 (both not significant). A copy of the baseline gets
  sacrebleu p = 1 / (B + 1) = 0.0010, marked significant, but p = 1 here.
- MultEval (used by the paper) computes p-values by stratified approximate randomization
  (10,000 shuffles, two-sided, ``(count + 1) / (B + 1)``) and uses bootstrap resampling only for
  standard deviations; sacrebleu's ``--paired-ar`` is that test.

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
