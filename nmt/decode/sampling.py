"""Sampling with fairseq's semantics (``--sampling``, ``--sampling-topk``, ``--sampling-topp``, ``--temperature``).

Every hypothesis draws its next token from the model's distribution until it draws EOS (the
length limits, PAD/BOS and ``no_repeat_ngram_size`` apply as in beam search,
nmt/decode/beam_search.py). The temperature divides the logits before the softmax; top-k keeps
the ``k`` most probable tokens; top-p keeps the smallest set of most probable tokens whose
cumulative probability reaches ``p`` (fairseq: the tokens whose cumulative probability before
them is below ``p``). What is kept is drawn from in proportion to its probability, and a
hypothesis's score is ``sum(log p) / len ** lenpen`` with the unfiltered (temperature-scaled)
log-probabilities, as in fairseq. ``num_samples`` rows per sentence are drawn independently
(fairseq's ``--sampling --beam N``); they come back best score first.

Randomness comes only from the ``torch.Generator`` objects given: one for all rows, or one per
row, which makes a row's sample independent of the rows beside it (:class:`Translator` seeds one
per line and sample from ``seed`` and the line's number, so the output does not depend on batching).

Example: a model that after BOS gives 4 (.6) or 5 (.4), then 6 (.9), then EOS. With
``sampling_topk=1`` every sample keeps only the most probable token, so ``num_samples=3`` gives
"4 6" three times; unfiltered, about four samples in ten would start with 5. :func:`filter_probs`
shows the filtering on one row; tests/test_beam_search.py runs this example
(``test_the_sampling_modules_example``) and checks sampled frequencies against the tables.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch
from torch import Tensor

from nmt.decode.beam_search import Hypothesis, decode_rows
from nmt.errors import TranslateError


def check_sampling_options(sampling_topk: int | None, sampling_topp: float | None, temperature: float) -> None:
    """TranslateError for values that sampling cannot use."""
    if sampling_topk is not None and (isinstance(sampling_topk, bool) or not isinstance(sampling_topk, int)
                                      or sampling_topk < 1):
        raise TranslateError(f"--sampling-topk {sampling_topk}: must be a whole number >= 1")
    if sampling_topp is not None and not 0 < sampling_topp <= 1:
        raise TranslateError(f"--sampling-topp {sampling_topp}: must be > 0 and <= 1")
    if sampling_topk is not None and sampling_topp is not None:
        raise TranslateError("--sampling-topk and --sampling-topp: give one of them (fairseq would silently "
                             "use top-p alone)")
    if not (math.isfinite(temperature) and temperature > 0):
        raise TranslateError(f"--temperature {temperature}: must be a finite number > 0")


def filter_probs(lprobs: Tensor, sampling_topk: int | None = None, sampling_topp: float | None = None) -> Tensor:
    """Sampling weights [N,V] of log-probabilities [N,V]: proportional to the probabilities, the most
    probable token's 1 (so a row never underflows to all zeros), zero outside the row's top-k or
    top-p set (``torch.multinomial`` normalizes).

    >>> lp = torch.tensor([[0.5, 0.3, 0.2]]).log()
    >>> [round(p, 4) for p in filter_probs(lp, sampling_topp=0.7)[0].tolist()]   # .5 < .7, .3 takes it past
    [1.0, 0.6, 0.0]
    """
    weights = (lprobs - lprobs.max(dim=1, keepdim=True).values).exp()          # [N,V]
    if sampling_topk is not None:
        values, indices = weights.topk(min(sampling_topk, weights.size(1)), dim=1)
        return torch.zeros_like(weights).scatter_(1, indices, values)
    if sampling_topp is not None:
        ordered, indices = lprobs.exp().sort(dim=1, descending=True)
        cumulative = ordered.cumsum(1)
        before = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], 1)   # mass ahead of each
        keep = before < sampling_topp                                      # the first token always stays
        return torch.zeros_like(weights).scatter_(1, indices, weights.gather(1, indices) * keep)
    return weights


def row_seed(seed: int, line: int, sample: int) -> int:
    """A generator seed for one line's one sample, from the user's seed (stable across runs and Pythons)."""
    digest = hashlib.blake2b(f"{seed}/{line}/{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def sample_search(model, src_ids: Tensor, src_mask: Tensor, *, num_samples: int = 1,
                  sampling_topk: int | None = None, sampling_topp: float | None = None, temperature: float = 1.0,
                  generator: torch.Generator | Sequence[torch.Generator] | None = None, lenpen: float = 1.0,
                  max_len_a: float = 1.2, max_len_b: int = 10, min_len: int = 1,
                  no_repeat_ngram_size: int = 0) -> list[list[Hypothesis]]:
    """Per sentence of src_ids, src_mask [B,S], ``num_samples`` sampled hypotheses, best score first.

    ``generator``: one for every draw, or a sequence of ``B * num_samples`` (row ``b * num_samples + j``:
    sentence b's sample j), each on the device of ``src_ids``; None: a fresh, randomly seeded one.
    """
    check_sampling_options(sampling_topk, sampling_topp, temperature)
    if num_samples < 1:
        raise ValueError(f"need num_samples >= 1, got {num_samples}")
    if generator is None:
        generator = torch.Generator(device=src_ids.device)
        generator.seed()
    per_row = not isinstance(generator, torch.Generator)
    if per_row and len(generator) != src_ids.size(0) * num_samples:
        raise ValueError(f"{len(generator)} generators for {src_ids.size(0)} x {num_samples} rows")

    def choose(lprobs: Tensor, rows: Tensor) -> Tensor:
        probs = filter_probs(lprobs, sampling_topk, sampling_topp)                # [N,V]
        if per_row:
            return torch.cat([torch.multinomial(probs[i], 1, generator=generator[r])
                              for i, r in enumerate(rows.tolist())])
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    return decode_rows(model, src_ids, src_mask, choose, copies=num_samples, lenpen=lenpen, max_len_a=max_len_a,
                       max_len_b=max_len_b, min_len=min_len, no_repeat_ngram_size=no_repeat_ngram_size,
                       temperature=temperature)
