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

Training uses :func:`projected_label_smoothed_nll_loss`, the same loss fused with the output
projection: it never builds the [tokens, V] logits (the biggest tensor of a training step) but
walks over row chunks that stay in cache, and it computes the gradient in the same pass, since
``d loss / d z = softmax(z) - eps_i - (1 - eps - eps_i) * onehot(target)``.

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

from nmt.cpu.gemm import matmul_nt
from nmt.model.logit_chunks import logit_chunk_rows
from nmt.text.vocab import Vocab


def _smoothing_weights(epsilon: float, vocab_size: int) -> tuple[float, float]:
    """(1 - epsilon - eps_i, eps_i): fairseq's weights of nll and smooth, eps_i = epsilon / (V - 1)."""
    eps_i = epsilon / (vocab_size - 1) if vocab_size > 1 else 0.0
    return 1.0 - epsilon - eps_i, eps_i


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
    on_target, eps_i = _smoothing_weights(epsilon, V)
    loss_sum = on_target * nll_sum + eps_i * smooth_sum
    return loss_sum, nll_sum


def _fused_pass(hidden: Tensor, weight: Tensor, target: Tensor, epsilon: float, rows: int,
                with_grad: bool) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Loss and NLL sums of ``hidden @ weight.T`` against ``target``, chunk by chunk; with_grad: also
    d loss_sum / d hidden [N,H] and / d weight [V,H]. hidden [N,H], target [N] (no PAD). Matmuls in
    the autocast dtype when autocast is on; softmax and sums in float32 (float64 for float64 inputs)."""
    N, V = hidden.size(0), weight.size(0)
    on_target, eps_i = _smoothing_weights(epsilon, V)
    autocast = torch.is_autocast_enabled(hidden.device.type)
    dtype = torch.get_autocast_dtype(hidden.device.type) if autocast else weight.dtype
    h_all, w = hidden.to(dtype), weight.to(dtype)
    acc = torch.promote_types(dtype, torch.float32)                            # softmax in float32 at least
    loss = torch.zeros((), dtype=acc, device=hidden.device)
    nll_sum = torch.zeros_like(loss)
    grad_h = torch.empty(hidden.shape, dtype=acc, device=hidden.device) if with_grad else None
    grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if with_grad else None
    with torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, N, rows):
            h, t = h_all[start:start + rows], target[start:start + rows]
            z = matmul_nt(h, w).to(acc)                                        # [c,V] logits (oneDNN on CPU)
            z_target = z.gather(1, t[:, None]).squeeze(1)                      # [c]
            z_sum = z.sum(1)                                                   # [c]
            z_max = z.amax(1, keepdim=True)                                    # [c,1]
            e = z.sub_(z_max).exp_()                                           # [c,V] exp(z - max), in place
            e_sum = e.sum(1)                                                   # [c]
            lse = z_max.squeeze(1) + e_sum.log()                               # [c] logsumexp(z)
            nll = (lse - z_target).sum()                                       # sum of -log p(target)
            loss += on_target * nll + eps_i * (V * lse - z_sum).sum()
            nll_sum += nll
            if with_grad:
                g = e.div_(e_sum[:, None]).sub_(eps_i)                         # softmax - eps_i
                g[torch.arange(g.size(0), device=g.device), t] -= on_target    # [c,V] d loss / d z
                if dtype == acc:                                               # oneDNN on CPU (nmt/cpu/gemm.py)
                    grad_h[start:start + rows] = matmul_nt(g, w.t())
                    grad_w += matmul_nt(g.t(), h.t())
                else:                                                          # autocast: bf16/fp16 matmuls
                    grad_h[start:start + rows] = g.to(dtype) @ w
                    grad_w += g.t().to(dtype) @ h
    return loss, nll_sum, grad_h, grad_w


class _ProjectedLoss(torch.autograd.Function):
    """The loss sums with the gradients computed in forward; backward only scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, target, epsilon, rows):
        loss, nll_sum, grad_h, grad_w = _fused_pass(hidden, weight, target, epsilon, rows, with_grad=True)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = hidden.dtype, weight.dtype
        ctx.mark_non_differentiable(nll_sum)
        return loss, nll_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        grad_h, grad_w = ctx.saved_tensors
        return ((grad_h * grad_loss).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None,
                (grad_w * grad_loss).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None,
                None, None, None)


def projected_label_smoothed_nll_loss(hidden: Tensor, weight: Tensor, target: Tensor, epsilon: float = 0.1,
                                      ignore_index: int | None = Vocab.PAD,
                                      chunk_bytes: int | None = None) -> tuple[Tensor, Tensor]:
    """``label_smoothed_nll_loss(hidden @ weight.T, target)`` without materialising the logits.

    hidden [..., H] (decoder output), weight [V, H] (the bias-free output projection), target [...]
    -> (loss_sum, nll_sum) as label_smoothed_nll_loss; differentiable in hidden and weight (the
    gradients are computed in the forward pass when grad mode is on and an input requires grad).
    Ignored positions are dropped before the projection, so padding costs nothing.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> hidden, weight = torch.randn(2, 3, 4, generator=g), torch.randn(6, 4, generator=g)
    >>> target = torch.tensor([[4, 5, 2], [3, 2, 0]])                # one PAD (0)
    >>> fused = projected_label_smoothed_nll_loss(hidden, weight, target, chunk_bytes=8)
    >>> plain = label_smoothed_nll_loss(hidden @ weight.T, target)
    >>> all(torch.allclose(a, b) for a, b in zip(fused, plain))
    True
    """
    if hidden.shape[:-1] != target.shape or hidden.size(-1) != weight.size(1):
        raise ValueError(f"hidden {tuple(hidden.shape)}, output projection {tuple(weight.shape)} and target "
                         f"{tuple(target.shape)} do not match")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"label smoothing epsilon must be in [0, 1), got {epsilon}")
    hidden, target = hidden.reshape(-1, hidden.size(-1)), target.reshape(-1)
    if ignore_index is not None:
        keep = target.ne(ignore_index)
        hidden, target = hidden[keep], target[keep]                             # [N,H], [N] real positions
    rows = logit_chunk_rows(weight.size(0), hidden.device, chunk_bytes)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _ProjectedLoss.apply(hidden, weight, target, epsilon, rows)
    loss, nll_sum, _, _ = _fused_pass(hidden, weight, target, epsilon, rows, with_grad=False)
    return loss, nll_sum


def perplexity(nll_sum: float, num_tokens: int) -> float:
    """exp(mean NLL in nats); inf when it overflows (a barely trained model)."""
    if num_tokens <= 0:
        return float("nan")
    mean = nll_sum / num_tokens
    return math.exp(mean) if mean < 700 else float("inf")
