"""Faster ``nn.Linear`` layers for translation: fp32 weights pre-packed for oneDNN, or int8 weights.

Decoding is matrix multiplications by the same weights, step after step, so its speed on a CPU
depends mostly on the GEMM library: PyTorch's ``nn.Linear`` calls Intel MKL, and oneDNN (also inside
PyTorch, and CTranslate2's choice on such CPUs) is faster on some CPUs, AVX-512 ones among them,
more so with the weight pre-packed once (measurements in docs/speed.md). :func:`prepare_for_inference` swaps every ``nn.Linear`` of a
model, in place, for the fastest kernel the device has:

- :class:`PackedLinear` (CPU with oneDNN, the default): the fp32 weight re-laid-out once for
  oneDNN (``torch.ops.mkldnn._reorder_linear_weight``, the path ``torch.compile`` uses on CPU),
  multiplied by ``torch.ops.mkldnn._linear_pointwise``. Same math as ``F.linear``, another
  summation order (differences ~1e-6 relative);
- :class:`TransposedLinear` (CPU without oneDNN): the weight stored [in, out], faster than MKL's
  [out, in] for the few rows of a decoding step;
- :class:`Int8Linear` (``int8=True``, CPU): weights quantized to int8 per output channel
  (symmetric, scale = max |w| / 127 of the row); activations quantized per call (dynamic
  quantization) and multiplied in int8 by fbgemm (``torch.ops.quantized.linear_dynamic``);
  about 4x less weight memory. translate.py --int8 quantizes the decoder only: BERT's int8
  activations (per-tensor; BERT has outlier features) cost BLEU, the decoder's barely do, and the
  encoder runs once per sentence anyway. Weight-only int8 (``torch._weight_int8pack_mm``, fp32
  activations) is not used: it is slower than fp32 on the CPU (docs/speed.md);
- on GPUs ``nn.Linear`` stays (cuBLAS is already the fast path).

Inference only: the swapped layers have no gradients and are not meant to be saved.

>>> import torch, torch.nn as nn
>>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
>>> x = torch.randn(5, 4)
>>> reference = model(x)
>>> prepare_for_inference(model) is model
True
>>> type(model[0]).__name__ in ("PackedLinear", "TransposedLinear")
True
>>> torch.allclose(model(x), reference, atol=1e-5)
True
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
from torch import Tensor

from nmt.cpu.gemm import onednn_available


def packing_available() -> bool:
    """True when this PyTorch build can pre-pack fp32 weights for oneDNN on the CPU."""
    return onednn_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def int8_engine() -> str | None:
    """PyTorch's quantized engine if :class:`Int8Linear` can use it (x86/fbgemm on x86, qnnpack on
    ARM: the defaults), else None."""
    engine = torch.backends.quantized.engine
    return engine if engine in ("x86", "fbgemm", "qnnpack") else None


class TransposedLinear(nn.Module):
    """An inference-only copy of an ``nn.Linear`` that keeps its weight transposed, [in, out] contiguous.

    With MKL, a few rows (sentences x beam) times a weight streamed from memory is faster in this
    layout than in ``nn.Linear``'s [out, in] (docs/speed.md).

    >>> lin = nn.Linear(4, 3)
    >>> x = torch.randn(2, 5, 4)
    >>> torch.allclose(TransposedLinear(lin)(x), lin(x), atol=1e-6)
    True
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_t", linear.weight.detach().t().contiguous())        # [in, out]
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)                                        # [M, in]
        y = rows @ self.weight_t if self.bias is None else torch.addmm(self.bias, rows, self.weight_t)
        return y.view(*x.shape[:-1], self.out_features)


class PackedLinear(nn.Module):
    """An inference-only ``nn.Linear`` whose fp32 weight is pre-packed for oneDNN (CPU).

    The packed weight is an opaque oneDNN tensor: it is kept as a plain attribute (``.to()`` and
    ``state_dict()`` do not see it), so prepare the model after moving it to its device.

    >>> lin = nn.Linear(4, 3)
    >>> x = torch.randn(2, 5, 4)
    >>> not packing_available() or torch.allclose(PackedLinear(lin)(x), lin(x), atol=1e-6)
    True
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float().contiguous()                              # [out, in]
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight)
        self.bias = None if linear.bias is None else linear.bias.detach().float().clone()

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


def quantize_per_channel(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per output channel: weight [out, in] -> (int8 [out, in], scale [out]).

    >>> q, scale = quantize_per_channel(torch.tensor([[0.5, -1.0], [0.02, -0.005]]))
    >>> q.tolist(), [round(s * 127, 4) for s in scale.tolist()]
    ([[64, -127], [127, -32]], [1.0, 0.02])
    """
    scale = weight.detach().abs().amax(dim=1).clamp(min=1e-12) / 127                    # [out]
    q = torch.round(weight.detach() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def cpu_has_vnni() -> bool:
    """True if the CPU flags (Linux /proc/cpuinfo) list AVX512-VNNI or AVX-VNNI; False when unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


class Int8Linear(nn.Module):
    """An inference-only ``nn.Linear`` with int8 weights (per output channel) and dynamically
    quantized int8 activations: fbgemm's ``quantized::linear_dynamic`` (CPU). Output in fp32."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        engine = int8_engine()
        if engine is None:
            raise RuntimeError(f"int8 decoding needs PyTorch's quantized CPU kernels (fbgemm or qnnpack); the "
                               f"quantized engine is {torch.backends.quantized.engine!r}; decode without --int8")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_per_channel(linear.weight.float())
        with warnings.catch_warnings():        # quantized-tensor constructors warn of a future removal
            warnings.filterwarnings("ignore", message=".*quantize.*deprecated", category=UserWarning)
            qweight = torch._make_per_channel_quantized_tensor(q, scale.double(),
                                                               torch.zeros_like(scale, dtype=torch.long), 0)
            bias = None if linear.bias is None else linear.bias.detach().float()
            self.packed = torch.ops.quantized.linear_prepack(qweight, bias)
        # 8-bit activations need VNNI (int8 dot products summed in int32); without it fbgemm's int16
        # pair sums can saturate, so activations get 7 bits there (less accurate: docs/speed.md)
        self.reduce_range = engine != "qnnpack" and not cpu_has_vnni()

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.quantized.linear_dynamic(x.float().contiguous(), self.packed, self.reduce_range)


def prepare_for_inference(model: nn.Module, int8: bool = False) -> nn.Module:
    """Swap every ``nn.Linear`` of ``model`` (in place) for the fastest inference kernel on the
    device its weights are on; returns ``model`` in eval mode. No training afterwards."""
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    if int8 and device.type != "cpu":
        raise ValueError(f"int8 decoding runs on the CPU only (the model is on {device})")
    if device.type != "cpu":
        return model.eval()
    make = Int8Linear if int8 else (PackedLinear if packing_available() else TransposedLinear)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Linear):
                setattr(module, name, make(child))
    return model.eval()


def prepare_for_translation(model: nn.Module, int8: bool = False) -> nn.Module:
    """A Seq2Seq (encoder + decoder) for translate.py: with ``int8`` the decoder's layers in int8
    (its steps are the decoding time; int8 BERT activations cost BLEU, docs/speed.md), every other
    Linear fp32 as :func:`prepare_for_inference` gives it."""
    if int8:
        prepare_for_inference(model.decoder, int8=True)
    return prepare_for_inference(model)                  # every Linear still left

