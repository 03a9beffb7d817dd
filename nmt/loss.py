"""Label-smoothed cross entropy, exactly as fairseq's current ``label_smoothed_nll_loss``.

fairseq (``fairseq/criterions/label_smoothed_cross_entropy.py``, the dataclass-config version, 2021
onwards) spreads ``epsilon`` over the V - 1 WRONG classes and gives the right one 1 - epsilon::

    eps_i = epsilon / (V - 1)
    loss  = (1 - epsilon - eps_i) * nll + eps_i * smooth,   smooth = -sum_v log p(v)

(``smooth`` sums over ALL V classes, the right one included, hence the ``- eps_i``; the PAD column
is part of V as in fairseq.) Older fairseq used ``eps_i = epsilon / V`` and ``(1 - epsilon) * nll``,
which is what ``F.cross_entropy(label_smoothing=epsilon)`` computes; we follow the current one.
Positions whose target is ``ignore_index`` (PAD) contribute nothing. Both returned values are SUMS
in nats (natural log); divide by the number of real target tokens for per-token values.
Perplexity is ``exp(nll_sum / tokens)`` -- from the NLL, never from the smoothed loss.

Instead of materialising log-softmax [B,T,V] we use ``log p(v) = z_v - logsumexp(z)``:
``nll = lse - z_target`` and ``smooth = V * lse - sum_v z_v``.

A worked example: V = 3, one position with logits (0, 0, ln 2), so p = (1/4, 1/4, 1/2), target 2::

    nll    = -ln(1/2)                       = 0.693147
    smooth = -(ln 1/4 + ln 1/4 + ln 1/2)    = 3.465736
    eps_i  = 0.1 / 2 = 0.05
    loss   = 0.85 * 0.693147 + 0.05 * 3.465736 = 0.762462

>>> import math, torch
>>> logits = torch.tensor([[[0.0, 0.0, math.log(2)], [5.0, 1.0, 2.0]]])   # [B=1, T=2, V=3]
>>> target = torch.tensor([[2, 0]])                                          # the second is PAD
>>> loss, nll = label_smoothed_nll_loss(logits, target, epsilon=0.1, ignore_index=0)
>>> round(loss.item(), 6), round(nll.item(), 6)
(0.762462, 0.693147)
>>> round(perplexity(nll.item(), 1), 6)                                      # exp(0.693147) = 2
2.0
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from nmt.vocab import Vocab


def label_smoothed_nll_loss(logits: Tensor, target: Tensor, epsilon: float = 0.1,
                            ignore_index: int | None = Vocab.PAD) -> tuple[Tensor, Tensor]:
    """logits [..., V] (any float dtype; computed in float32), target [...] long -> (loss_sum, nll_sum).

    Both are 0-dim float32 tensors in nats, summed over the non-ignored positions.
    """
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"label smoothing epsilon must be in [0, 1), got {epsilon}")
    V = logits.size(-1)
    z = logits.float()
    lse = torch.logsumexp(z, dim=-1)                                   # [...]
    nll = lse - z.gather(-1, target.unsqueeze(-1)).squeeze(-1)         # [...]  -log p(target)
    smooth = V * lse - z.sum(dim=-1)                                    # [...]  -sum_v log p(v)
    if ignore_index is not None:
        keep = target.ne(ignore_index)
        nll = nll.masked_fill(~keep, 0.0)
        smooth = smooth.masked_fill(~keep, 0.0)
    nll_sum, smooth_sum = nll.sum(), smooth.sum()
    eps_i = epsilon / (V - 1) if V > 1 else 0.0
    loss_sum = (1.0 - epsilon - eps_i) * nll_sum + eps_i * smooth_sum
    return loss_sum, nll_sum


def perplexity(nll_sum: float, num_tokens: int) -> float:
    """exp(mean NLL in nats); inf when it overflows (a barely trained model)."""
    if num_tokens <= 0:
        return float("nan")
    mean = nll_sum / num_tokens
    return math.exp(mean) if mean < 700 else float("inf")
