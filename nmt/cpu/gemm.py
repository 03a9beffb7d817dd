"""fp32 matrix products on the CPU through oneDNN instead of MKL, for training and decoding.

PyTorch runs fp32 ``F.linear`` / ``@`` on the CPU with Intel MKL. oneDNN, the other GEMM library
inside every x86 PyTorch build, is much faster on some CPUs, AVX-512 ones among them (CTranslate2
picks it on such CPUs too; measurements in docs/speed.md). Same math, another summation order:
results agree to ~1e-6 relative.

- :func:`matmul_nt` is ``a @ b.T`` (+ bias) on that path, used by the fused loss (nmt/model/loss.py);
- :class:`OneDNNLinear` is an ``nn.Linear`` (same parameters, same ``state_dict``) whose forward
  and backward products go through :func:`matmul_nt`; :func:`use_onednn` swaps a model's layers
  for it. The trainer does that (torchrun workers included); on GPUs and other dtypes (where
  ``_use_onednn`` says no) the layers compute exactly what ``nn.Linear`` does.

The oneDNN ops are private PyTorch API, so none is trusted blindly: :func:`kernel_passes` runs each
fast kernel once per process on a small product and compares it with ``F.linear`` in float64; a
kernel that raises or disagrees is not used (one ``warning:`` line on stderr) and the public op
computes instead. ``NMT_FAST_KERNELS=0`` in the environment turns every fast kernel off.

>>> a, b = torch.randn(5, 4), torch.randn(3, 4)
>>> torch.allclose(matmul_nt(a, b), a @ b.T, atol=1e-5)
True
"""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


FAST_KERNELS_ENV = "NMT_FAST_KERNELS"        # "0", "off", "false" or "no": public PyTorch ops only


def fast_kernels_enabled() -> bool:
    """False when the environment turns the private fast kernels off (``NMT_FAST_KERNELS=0``)."""
    return os.environ.get(FAST_KERNELS_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


@dataclass(frozen=True)
class FastKernel:
    """A private kernel computing ``x @ w.T + b``, and how closely it must match ``F.linear``."""
    name: str                                   # for the warning line, e.g. "oneDNN fp32 linear"
    linear: Callable[[Tensor, Tensor, Tensor], Tensor]      # (x [..., K], w [N, K], b [N]) -> [..., N]
    tolerance: float                            # max |error| / max |exact| allowed (rounding of its dtype)
    instead: str = "PyTorch's public F.linear"  # what computes when it fails (for the warning line)


def kernel_passes(kernel: FastKernel) -> bool:
    """True if ``kernel`` may be used: fast kernels are on and it passed its self-check (run at its
    first use in this process; a failure prints one ``warning:`` line and the caller takes the
    public path)."""
    return fast_kernels_enabled() and _self_check(kernel)


@functools.cache
def _self_check(kernel: FastKernel) -> bool:
    """Once per process and kernel: a [2, 3, 48] x [40, 48] product with bias, strided input."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 48, 3, generator=g).transpose(1, 2)                    # [2, 3, 48], not contiguous
    w, b = torch.randn(40, 48, generator=g), torch.randn(40, generator=g)
    exact = F.linear(x.double(), w.double(), b.double())
    try:
        got = kernel.linear(x, w, b)
        error = (got.double() - exact).abs().max().item() / exact.abs().max().item()
        ok = tuple(got.shape) == tuple(exact.shape) and error <= kernel.tolerance
        why = f"relative error {error:.1e} > {kernel.tolerance:.0e}" if not ok else ""
    except Exception as e:                       # noqa: BLE001 -- any failure means: do not use it
        ok, why = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]
    if not ok:
        print(f"warning: {kernel.name} failed its self-check ({why}); using {kernel.instead} instead "
              f"(set {FAST_KERNELS_ENV}=0 to skip the fast kernels)", file=sys.stderr, flush=True)
    return ok


def onednn_linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """oneDNN's linear (private op): ``x @ w.T + b``; ``w`` plain [N, K] or pre-packed for oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


ONEDNN_FP32 = FastKernel("oneDNN fp32 linear", lambda x, w, b: onednn_linear(x, w, b), 1e-5)


@functools.cache
def onednn_available() -> bool:
    """True when this PyTorch build has oneDNN's fp32 linear kernel on the CPU (before any self-check)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _use_onednn(*tensors: Tensor) -> bool:
    # torch.distributed processes too: the abort once blamed on these kernels is a gloo shutdown race
    # that happens without them (docs/notes/distributed-investigation.md)
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and onednn_available() \
        and not torch.is_autocast_enabled("cpu") and kernel_passes(ONEDNN_FP32)


def matmul_nt(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a @ b.T + bias``: a [..., K], b [N, K] (any strides), bias [N] or None -> [..., N]."""
    if not _use_onednn(a, b):
        return F.linear(a, b, bias)
    return onednn_linear(a, b, bias)


class _OneDNNLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return matmul_nt(x, weight, bias)                                         # [..., out]

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.size(-1))                               # [M, out]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = matmul_nt(grad_out, weight.t())                              # [..., in] = g @ W
        if ctx.needs_input_grad[1]:
            grad_w = matmul_nt(g.t(), x.reshape(-1, x.size(-1)).t())             # [out, in] = g.T @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` with oneDNN products for fp32 on the CPU (forward and backward); elsewhere
    exactly ``nn.Linear``. Same parameters and state_dict keys."""

    def forward(self, x: Tensor) -> Tensor:
        if not _use_onednn(x, self.weight):
            return F.linear(x, self.weight, self.bias)
        return _OneDNNLinearFunction.apply(x, self.weight, self.bias)


def use_onednn(model: nn.Module) -> nn.Module:
    """Turn every plain ``nn.Linear`` of ``model`` into an :class:`OneDNNLinear`, in place, keeping
    the Parameter objects (call before building the optimizer, or after: the parameters are the same).

    >>> m = nn.Sequential(nn.Linear(4, 3))
    >>> w = m[0].weight
    >>> use_onednn(m)[0].weight is w, type(m[0]).__name__
    (True, 'OneDNNLinear')
    """
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = OneDNNLinear          # same object, parameters, hooks and attributes
    return model
