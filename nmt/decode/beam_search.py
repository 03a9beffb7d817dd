"""Batched beam search with fairseq's semantics, and a greedy fast path.

All sentences of a batch and all their beams are decoded together. The encoder runs once; the
decoder runs one position at a time with a key/value cache (cross-attention K/V computed once per
sentence, see nmt/model/decoder.py). At every step, for each sentence:

1. every open hypothesis is extended by every token: ``score + log p(token)`` -> the best
   ``2 * beam`` candidates (so that hypotheses ending in EOS never empty the beam); the output
   projection, log-softmax and top-k run over chunks of whole sentences, so the [N, V] logits are
   never built at once; step 0 runs one row per sentence (all beams would share the BOS prefix);
2. EOS candidates among the best ``beam`` are FINISHED with the score
   ``sum(log p) / len ** lenpen`` where ``len`` counts the generated tokens INCLUDING the EOS
   (fairseq: ``eos_scores /= (step + 1) ** len_penalty``; nmt/decode/length_penalty.py:
   :func:`length_normalized`, the one place the formula is written);
3. the best ``beam`` non-EOS candidates stay open.

A sentence stops (and leaves the batch, so the batch shrinks) when it has ``beam`` finished
hypotheses (fairseq's rule, ``early_stop=True``) -- or, with ``early_stop=False``, only once no open
hypothesis can still beat the ``beam``-th best finished one. Since log-probs are <= 0, an open
hypothesis with score ``s`` can at best reach ``s / L ** lenpen`` with ``L`` the largest (lenpen >= 0)
or smallest (lenpen < 0) length it can still end at, which makes that rule exact. A sentence of
``n`` source tokens (``src_mask`` counts, specials included) is cut at ``int(max_len_a * n +
max_len_b)`` generated tokens (EOS is then forced) and may end no earlier than ``min_len`` tokens.
PAD and BOS are never generated. Unlike fairseq, all EOS candidates of a step are kept even if
they take a sentence past ``beam`` finished hypotheses (they can only improve the n-best list).
With ``no_repeat_ngram_size=n`` (fairseq's ``--no-repeat-ngram-size``) a hypothesis never produces
an n-gram of target ids that already occurs in it: such tokens get -inf (:func:`ban_repeated_ngrams`).
Greedy search and sampling (nmt/decode/sampling.py) share :func:`decode_rows`.

Worked example, a model whose next-token probabilities are a fixed table (unlisted prefixes end
with EOS): after BOS, 4 (.6) or 5 (.4); after 4, 6 (.55) or 7 (.45); after 5, 6 (.9). Greedy search
commits to the likelier first token and returns "4 6" (p = .6 * .55 = .33); beam search with
``beam_size=2`` keeps both and finds "5 6" (p = .4 * .9 = .36), whose score over 3 tokens (EOS
counted) is ln(.36) / 3 = -0.3406 against ln(.33) / 3 = -0.3696 for "4 6". tests/test_beam_search.py
runs this example (``test_the_module_docstrings_worked_example``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.decode.length_penalty import DEFAULT_LENPEN, length_normalized
from nmt.model.logit_chunks import logit_chunk_rows
from nmt.text.vocab import Vocab


@dataclass
class Hypothesis:
    tokens: list[int]      # generated target ids, without BOS and EOS
    score: float           # sum(log p) over tokens + EOS, length_normalized over len(tokens) + 1


def max_lengths(src_mask: Tensor, max_len_a: float, max_len_b: int, limit: int) -> Tensor:
    """Per sentence: int(a * src_len + b), capped at ``limit``. [B] long on CPU.

    >>> max_lengths(torch.tensor([[True, True, False], [True, True, True]]), 1.2, 10, 100).tolist()
    [12, 13]
    """
    src_len = src_mask.sum(1).cpu().double()
    return (max_len_a * src_len + max_len_b).floor().long().clamp(min=1, max=limit)


def _prepare_lprobs(logits: Tensor, step: int, max_len: Tensor, min_len: Tensor, temperature: float = 1.0) -> Tensor:
    """log-softmax over the vocabulary with the step's constraints. logits [N,V]; max/min_len [N] (CPU).
    ``temperature`` divides the logits first (sampling)."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    lprobs = F.log_softmax(logits, dim=-1)                                 # [N,V]
    lprobs[:, Vocab.PAD] = -math.inf
    lprobs[:, Vocab.BOS] = -math.inf
    too_short = (step < min_len)
    if too_short.any():
        lprobs[too_short.to(lprobs.device), Vocab.EOS] = -math.inf
    at_limit = (step >= max_len)
    if at_limit.any():                                                     # only EOS is allowed
        rows = at_limit.to(lprobs.device)
        eos = lprobs[rows, Vocab.EOS].clone()
        lprobs[rows] = -math.inf
        lprobs[rows, Vocab.EOS] = eos
    return lprobs


def ban_repeated_ngrams(lprobs: Tensor, prefix: Tensor, n: int) -> Tensor:
    """In place: -inf for every token that would complete an ``n``-gram already in its row's prefix
    (fairseq's ``--no-repeat-ngram-size``). lprobs [N,V]; prefix [N,t] (the tokens so far). A row
    that this would leave without any finite token keeps its options (only with ``min_len``).

    >>> lp = torch.zeros(1, 6)
    >>> ban_repeated_ngrams(lp, torch.tensor([[4, 5, 3, 4]]), 2)[0].tolist()    # "4 5" occurred: no 5
    [0.0, 0.0, 0.0, 0.0, 0.0, -inf]
    """
    t = prefix.size(1)
    if n < 1 or t < n:
        return lprobs
    windows = prefix.unfold(1, n, 1)                                          # [N,W,n], W = t - n + 1
    tail = prefix[:, t - n + 1:]                                              # [N,n-1]: the last n-1 tokens
    hit = (windows[:, :, :-1] == tail[:, None, :]).all(2)                     # [N,W]: windows that start alike
    rows, w = hit.nonzero(as_tuple=True)
    if rows.numel():
        tokens = windows[rows, w, -1]
        kept = lprobs[rows, tokens]
        lprobs[rows, tokens] = -math.inf
        stuck = ~torch.isfinite(lprobs).any(1)                                # [N]
        if stuck.any():
            undo = stuck[rows]
            lprobs[rows[undo], tokens[undo]] = kept[undo]
    return lprobs


def _decoder_limit(model) -> int:
    return int(getattr(model.decoder, "max_positions", 1 << 30)) - 1


def _top_candidates(project, hidden: Tensor, scores: Tensor, beams: int, n: int, step: int,
                    max_len: Tensor, min_len: Tensor, rows_per_chunk: int, prefix: Tensor | None = None,
                    ngram: int = 0) -> tuple[Tensor, Tensor]:
    """The ``n`` best ``score + log p(token)`` over each sentence's ``beams`` x V continuations.

    hidden [N,H] (N = B' * beams), scores [N]; max_len, min_len [B'] (CPU) -> values, indices [B',n]
    (index = beam * V + token). Runs over chunks of whole sentences, so the [N,V] logits are never
    materialised at once. ``prefix`` [N,t]: the rows' tokens, for ``ngram`` blocking.
    """
    num_sentences = hidden.size(0) // beams
    per_chunk = max(1, rows_per_chunk // beams)
    values, indices = [], []
    for s0 in range(0, num_sentences, per_chunk):
        s1 = min(num_sentences, s0 + per_chunk)
        rows = slice(s0 * beams, s1 * beams)
        lprobs = _prepare_lprobs(project(hidden[rows]), step,
                                 max_len[s0:s1].repeat_interleave(beams), min_len[s0:s1].repeat_interleave(beams))
        if ngram:
            ban_repeated_ngrams(lprobs, prefix[rows], ngram)
        cand = lprobs.add_(scores[rows, None]).view(s1 - s0, -1)                  # [c, beams*V]
        v, i = cand.topk(min(n, cand.size(1)), dim=1)
        values.append(v)
        indices.append(i)
    return torch.cat(values), torch.cat(indices)


@torch.no_grad()
def beam_search(model, src_ids: Tensor, src_mask: Tensor, beam_size: int = 10, lenpen: float = DEFAULT_LENPEN,
                max_len_a: float = 1.2, max_len_b: int = 10, min_len: int = 1, nbest: int = 1,
                early_stop: bool = True, chunk_bytes: int | None = None,
                no_repeat_ngram_size: int = 0) -> list[list[Hypothesis]]:
    """Translate a batch. src_ids, src_mask [B,S] -> per sentence, the ``nbest`` best hypotheses.

    ``model`` needs ``encode(src_ids, src_mask)`` and a ``decoder`` with ``init_state``,
    ``step_features``, ``output_projection`` and ``reorder_state`` (nmt.model.seq2seq.Seq2Seq). Call
    ``model.eval()`` first. ``chunk_bytes`` bounds the logits block of one projection call.
    """
    if beam_size < 1 or not 1 <= nbest <= beam_size:
        raise ValueError(f"need beam_size >= 1 and 1 <= nbest <= beam_size, got beam {beam_size}, nbest {nbest}")
    B, K = src_ids.size(0), beam_size
    device = src_ids.device
    decoder = model.decoder
    max_len = max_lengths(src_mask, max_len_a, max_len_b, _decoder_limit(model))    # [B] CPU
    min_len_t = torch.minimum(torch.full_like(max_len, min_len), max_len)           # [B] CPU
    rows_per_chunk = logit_chunk_rows(decoder.vocab_size, device, chunk_bytes)

    encoder_out = model.encode(src_ids, src_mask)                                    # [B,S,H]
    state = decoder.init_state(encoder_out, src_mask)                               # K/V once per sentence

    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    kth_best = torch.full((B,), -math.inf, dtype=torch.double)      # beam-th best finished score
    sent_ids = torch.arange(B)                                       # [B'] original index of each active sentence
    # N = B' * beams rows; all K beams of step 0 would be the same prefix (BOS), so step 0 runs ONE
    # row per sentence and the beam only widens to K with the first candidates
    tokens = torch.full((B, 1), Vocab.BOS, dtype=torch.long, device=device)       # [N, t+1]
    scores = torch.zeros(B, device=device)                                         # [N] cumulative log p

    step = 0
    while sent_ids.numel():
        Bp = sent_ids.numel()
        beams = tokens.size(0) // Bp                                               # 1 at step 0, then K
        hidden = decoder.step_features(tokens[:, -1], state)                       # [N,H]
        cand_scores, cand_idx = _top_candidates(decoder.output_projection, hidden, scores, beams, 2 * K, step,
                                                max_len[sent_ids], min_len_t[sent_ids], rows_per_chunk,
                                                tokens, no_repeat_ngram_size)                       # [B',2K]
        V = decoder.vocab_size
        cand_beams, cand_tokens = cand_idx // V, cand_idx % V                     # [B',2K]
        is_eos = cand_tokens.eq(Vocab.EOS) & torch.isfinite(cand_scores)          # [B',2K]

        # 2. finish EOS candidates among the best K (one transfer to the CPU for all of them)
        eos_top = is_eos[:, :K]
        b_idx, c_idx = eos_top.nonzero(as_tuple=True)
        if b_idx.numel():
            rows = b_idx * beams + cand_beams[b_idx, c_idx]
            hyp_tokens = tokens[rows, 1:].tolist()
            hyp_scores = length_normalized(cand_scores[b_idx, c_idx].double(), step + 1, lenpen).tolist()
            touched = set()
            for b, toks, sc in zip(b_idx.tolist(), hyp_tokens, hyp_scores):
                s = int(sent_ids[b])
                finished[s].append(Hypothesis(toks, sc))
                touched.add(s)
            for s in touched:
                if len(finished[s]) >= K:
                    kth_best[s] = sorted((h.score for h in finished[s]), reverse=True)[K - 1]

        # 3. the best K non-EOS candidates stay open
        num_cand = is_eos.size(1)
        order_key = is_eos.long() * num_cand + torch.arange(num_cand, device=device)   # EOS sorted last
        active = order_key.topk(min(K, num_cand), dim=1, largest=False).indices   # [B',K]
        new_beams = cand_beams.gather(1, active)
        new_tokens = cand_tokens.gather(1, active)
        new_scores = cand_scores.gather(1, active)                                 # [B',K]
        # with fewer than K non-EOS candidates (a vocabulary smaller than the beam), the EOS ones
        # that fill the beam are dead ends
        new_scores = new_scores.masked_fill(is_eos.gather(1, active), -math.inf)

        # which sentences are done
        n_done = torch.tensor([len(finished[int(s)]) for s in sent_ids])
        best_open = new_scores.max(dim=1).values.double().cpu()                    # [B']
        done = ~torch.isfinite(best_open) | (n_done >= K)
        if not early_stop:
            final_len = (max_len[sent_ids] + 1).double() if lenpen >= 0 else torch.full((Bp,), step + 2.0)
            bound = length_normalized(best_open, final_len, lenpen)                # best reachable score
            done = ~torch.isfinite(best_open) | ((n_done >= K) & (kth_best[sent_ids] >= bound))

        rows = (torch.arange(Bp, device=device)[:, None] * beams + new_beams)      # [B',K] rows into N
        if done.any():
            keep = (~done).nonzero(as_tuple=True)[0]                               # [B''] CPU
            keep_dev = keep.to(device)
            rows, new_tokens, new_scores = rows[keep_dev], new_tokens[keep_dev], new_scores[keep_dev]
            sent_ids = sent_ids[keep]
            rows = rows.view(-1)
            state = decoder.reorder_state(state, rows, source_order=keep_dev)
        else:
            rows = rows.view(-1)
            state = decoder.reorder_state(state, rows)
        tokens = torch.cat([tokens[rows], new_tokens.reshape(-1, 1)], dim=1)
        scores = new_scores.reshape(-1)
        step += 1

    return [sorted(hyps, key=lambda h: -h.score)[:nbest] for hyps in finished]


def greedy_search(model, src_ids: Tensor, src_mask: Tensor, lenpen: float = DEFAULT_LENPEN, max_len_a: float = 1.2,
                  max_len_b: int = 10, min_len: int = 1, no_repeat_ngram_size: int = 0) -> list[list[Hypothesis]]:
    """The beam-1 case without candidate bookkeeping: argmax at every step. Same output format
    (and the same result) as ``beam_search(..., beam_size=1)``."""
    return decode_rows(model, src_ids, src_mask, lambda lprobs, rows: lprobs.argmax(dim=1), lenpen=lenpen,
                       max_len_a=max_len_a, max_len_b=max_len_b, min_len=min_len,
                       no_repeat_ngram_size=no_repeat_ngram_size)


@torch.no_grad()
def decode_rows(model, src_ids: Tensor, src_mask: Tensor, choose, *, copies: int = 1, lenpen: float = DEFAULT_LENPEN,
                max_len_a: float = 1.2, max_len_b: int = 10, min_len: int = 1, no_repeat_ngram_size: int = 0,
                temperature: float = 1.0) -> list[list[Hypothesis]]:
    """One token per row and step, each row ending at its own EOS: greedy search and sampling.

    Each sentence gets ``copies`` rows (row ``b * copies + j``); ``choose(lprobs [N,V], rows [N])``
    picks every row's next token ([N] long; ``rows`` [N] CPU: the rows' ids). ``temperature``
    divides the logits. Returns, per sentence, its ``copies`` hypotheses, best first.
    """
    B, device = src_ids.size(0), src_ids.device
    decoder = model.decoder
    max_len = max_lengths(src_mask, max_len_a, max_len_b, _decoder_limit(model))
    min_len_t = torch.minimum(torch.full_like(max_len, min_len), max_len)
    encoder_out = model.encode(src_ids, src_mask)
    if copies > 1:                        # the encoder ran once; every copy gets its cross-attention rows
        encoder_out, src_mask = encoder_out.repeat_interleave(copies, 0), src_mask.repeat_interleave(copies, 0)
        max_len, min_len_t = max_len.repeat_interleave(copies), min_len_t.repeat_interleave(copies)
    state = decoder.init_state(encoder_out, src_mask)
    results: list[list[Hypothesis]] = [[] for _ in range(B)]
    row_ids = torch.arange(B * copies)                                             # [N'] CPU
    prev = torch.full((B * copies,), Vocab.BOS, dtype=torch.long, device=device)   # [N']
    out = torch.empty(B * copies, 0, dtype=torch.long, device=device)              # [N', t]
    scores = torch.zeros(B * copies, device=device)
    step = 0
    while row_ids.numel():
        lprobs = _prepare_lprobs(decoder.step(prev, state), step, max_len[row_ids], min_len_t[row_ids], temperature)
        if no_repeat_ngram_size:
            ban_repeated_ngrams(lprobs, out, no_repeat_ngram_size)
        prev = choose(lprobs, row_ids)                                             # [N']
        scores = scores + lprobs.gather(1, prev[:, None])[:, 0]
        ended = prev.eq(Vocab.EOS).cpu()
        if ended.any():
            idx = ended.nonzero(as_tuple=True)[0]
            for r, toks, sc in zip(row_ids[idx].tolist(), out[idx.to(device)].tolist(),
                                   length_normalized(scores[idx.to(device)].double(), step + 1, lenpen).tolist()):
                results[r // copies].append(Hypothesis(toks, sc))
            keep = (~ended).nonzero(as_tuple=True)[0]
            keep_dev = keep.to(device)
            row_ids, prev, out, scores = row_ids[keep], prev[keep_dev], out[keep_dev], scores[keep_dev]
            state = decoder.reorder_state(state, keep_dev, source_order=keep_dev)
        out = torch.cat([out, prev[:, None]], dim=1)
        step += 1
    return [sorted(hyps, key=lambda h: -h.score) for hyps in results] if copies > 1 else results

