"""Scaled dot-product attention for training under CPU autocast: the product in float32.

``torch.autocast("cpu", dtype=torch.bfloat16)`` hands ``F.scaled_dot_product_attention`` bf16
queries, keys and values. At this model's shapes (head size 32, tens of positions) PyTorch's CPU
kernel then takes about 3x longer for forward + backward than in fp32 (docs/speed.md, "bfloat16
training on the CPU"), which ate most of what bf16 saves in the linear layers. Attention is a small
share of the FLOPs, so :func:`scaled_dot_product_attention` computes it in fp32 there and returns
the dtype it was given; everywhere else (fp32, CUDA) it is ``F.scaled_dot_product_attention``.

>>> q = k = v = torch.randn(2, 4, 5, 8)
>>> torch.equal(scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
True
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOW_PRECISION = (torch.bfloat16, torch.float16)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None,
                                 dropout_p: float = 0.0, is_causal: bool = False) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, ...)``; bf16/fp16 CPU inputs computed in fp32.

    q [..., Tq, d], k and v [..., Tk, d], attn_mask broadcastable to [..., Tq, Tk] (bool: True =
    attend) -> [..., Tq, d] in q's dtype."""
    if q.device.type != "cpu" or q.dtype not in LOW_PRECISION:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal)
    with torch.autocast("cpu", enabled=False):            # autocast would cast the fp32 inputs back
        y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask,
                                           dropout_p=dropout_p, is_causal=is_causal)
    return y.to(q.dtype)
