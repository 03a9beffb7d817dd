"""Faster ``nn.Linear`` layers for translation, by compute type: fp32 weights pre-packed for oneDNN,
bfloat16 weights, or int8 weights (the names are CTranslate2's ``compute_type``: :data:`COMPUTE_TYPES`).

Decoding is matrix multiplications by the same weights, step after step, so its speed on a CPU
depends mostly on the GEMM library: PyTorch's ``nn.Linear`` calls Intel MKL, and oneDNN (also inside
PyTorch, and CTranslate2's choice on such CPUs) is faster on some CPUs, AVX-512 ones among them,
more so with the weight pre-packed once (measurements in docs/speed.md). :func:`prepare_for_inference` swaps every ``nn.Linear`` of a
model, in place, for the fastest kernel the device has:

- :class:`PackedLinear` (CPU with oneDNN, the default): the fp32 weight re-laid-out once for
  oneDNN (``torch.ops.mkldnn._reorder_linear_weight``, the path ``torch.compile`` uses on CPU),
  multiplied by ``torch.ops.mkldnn._linear_pointwise``. Same math as ``F.linear``, another
  summation order (differences ~1e-6 relative). In the decoder (:func:`prepare_for_translation`)
  it also keeps the weight [in, out] for inputs of ONE row (a greedy step of one sentence), which
  MKL multiplies faster than oneDNN's packed kernel (docs/speed.md), at the cost of a second copy;
- :class:`TransposedLinear` (CPU without oneDNN): the weight stored [in, out], faster than MKL's
  [out, in] for the few rows of a decoding step;
- :class:`Int8Linear` (``compute_type="int8"``, CPU): weights quantized to int8 per output channel
  (symmetric, scale = max |w| / 127 of the row); activations quantized per call (dynamic
  quantization) and multiplied in int8 by fbgemm (``torch.ops.quantized.linear_dynamic``);
  about 4x less weight memory. translate.py --int8 quantizes the decoder only: BERT's int8
  activations (per-tensor; BERT has outlier features) cost BLEU, the decoder's barely do, and the
  encoder runs once per sentence anyway. Weight-only int8 (``torch._weight_int8pack_mm``, fp32
  activations) is not used: it is slower than fp32 on the CPU (docs/speed.md);
- :class:`BFloat16Linear` (``compute_type="bfloat16"``): bf16 weights, the product in bf16 (oneDNN,
  pre-packed, where that kernel passes its check; else ``F.linear``), fp32 in and out so that layer
  norms, softmax and the beam scores stay fp32. Worth it only on hardware with bf16 instructions
  (AVX512-BF16 or AMX on x86, any recent GPU): elsewhere PyTorch emulates bf16 products, several
  times slower than fp32, so :func:`check_compute_type` refuses it there;
- on GPUs ``nn.Linear`` stays for float32 (cuBLAS is already the fast path).

Every private kernel here passes a self-check at first use (nmt/cpu/gemm.py: ``kernel_passes``) or
is replaced by the public path with one warning line: PackedLinear by TransposedLinear, Int8Linear by
the float32 layers.

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
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from nmt.cpu.gemm import FastKernel, kernel_passes, onednn_available, onednn_linear

COMPUTE_TYPES = ("float32", "bfloat16", "int8")     # translate.py --compute-type, as CTranslate2 names them


def pack_weight(weight: Tensor) -> Tensor:
    """``weight`` [out, in] (fp32 or bf16) re-laid-out once for oneDNN (private op; an opaque tensor)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight)


def packing_available() -> bool:
    """True when this PyTorch build can pre-pack fp32 weights for oneDNN on the CPU (before any self-check)."""
    return onednn_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


ONEDNN_PACKED_FP32 = FastKernel("oneDNN packed fp32 linear", lambda x, w, b: onednn_linear(x, pack_weight(w), b),
                                1e-5, instead="an MKL linear (TransposedLinear)")
ONEDNN_PACKED_BF16 = FastKernel(
    "oneDNN packed bf16 linear",
    lambda x, w, b: onednn_linear(x.bfloat16(), pack_weight(w.bfloat16()), b.bfloat16()).float(), 3e-2,
    instead="PyTorch's public F.linear in bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty when unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            line = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def cpu_has_bf16() -> bool:
    """True if the CPU multiplies bfloat16 natively: AVX512-BF16 or AMX-BF16 (x86), BF16 (ARM)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def check_compute_type(compute_type: str, device: torch.device) -> None:
    """ValueError, saying what to use instead, for a compute type this device cannot run (well)."""
    if compute_type not in COMPUTE_TYPES:
        raise ValueError(f"unknown compute type {compute_type!r}; expected one of {', '.join(COMPUTE_TYPES)}")
    if compute_type == "int8" and device.type != "cpu":
        raise ValueError(f"int8 decoding runs on the CPU only (the model is on {device}); use bfloat16 or float32")
    if compute_type == "bfloat16" and device.type == "cpu" and not cpu_has_bf16():
        raise ValueError("this CPU has no bfloat16 instructions (no avx512_bf16/amx_bf16 in /proc/cpuinfo): "
                         "PyTorch would emulate bf16, several times slower than float32; use float32 or int8")


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
    ``one_row_mkl``: an input of one row goes through a :class:`TransposedLinear` copy instead (MKL
    is faster than oneDNN's packed kernel at one row; docs/speed.md), other inputs as before.

    >>> lin = nn.Linear(4, 3)
    >>> x = torch.randn(2, 5, 4)
    >>> not packing_available() or torch.allclose(PackedLinear(lin)(x), lin(x), atol=1e-6)
    True
    """

    def __init__(self, linear: nn.Linear, one_row_mkl: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed_weight = pack_weight(linear.weight.detach().float().contiguous())     # [out, in], packed
        self.bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.one_row = TransposedLinear(linear) if one_row_mkl else None

    def forward(self, x: Tensor) -> Tensor:
        if self.one_row is not None and x.numel() == self.in_features:                 # [.., 1, in]
            return self.one_row(x)
        return onednn_linear(x, self.packed_weight, self.bias)


class BFloat16Linear(nn.Module):
    """An inference-only ``nn.Linear`` computing in bfloat16: bf16 weight (oneDNN-packed on the CPU
    when ``packed``), the input rounded to bf16, the output returned in fp32.

    >>> lin = nn.Linear(64, 8)
    >>> x = torch.randn(3, 64)
    >>> error = (BFloat16Linear(lin, packed=False)(x) - lin(x)).abs().max() / lin(x).abs().max()
    >>> bool(error < 0.02)
    True
    """

    def __init__(self, linear: nn.Linear, packed: bool):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().bfloat16().contiguous()                           # [out, in]
        self.weight = pack_weight(weight) if packed else weight
        self.bias = None if linear.bias is None else linear.bias.detach().bfloat16().clone()
        self.packed = packed

    def forward(self, x: Tensor) -> Tensor:
        if self.packed:
            return onednn_linear(x.bfloat16(), self.weight, self.bias).float()
        return F.linear(x.bfloat16(), self.weight, self.bias).float()


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
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})


def int8_pack(weight: Tensor, bias: Tensor | None) -> object:
    """fbgemm's packed int8 weight (per output channel) for ``quantized::linear_dynamic`` (private ops)."""
    q, scale = quantize_per_channel(weight.float())
    with warnings.catch_warnings():        # quantized-tensor constructors warn of a future removal
        warnings.filterwarnings("ignore", message=".*quantize.*deprecated", category=UserWarning)
        qweight = torch._make_per_channel_quantized_tensor(q, scale.double(),
                                                           torch.zeros_like(scale, dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float())


def int8_linear(x: Tensor, packed: object, reduce_range: bool) -> Tensor:
    """``x`` quantized per call (dynamic, per tensor), multiplied in int8, returned in fp32."""
    return torch.ops.quantized.linear_dynamic(x.float().contiguous(), packed, reduce_range)


def int8_reduce_range() -> bool:
    # 8-bit activations need VNNI (int8 dot products summed in int32); without it fbgemm's int16
    # pair sums can saturate, so activations get 7 bits there (less accurate: docs/speed.md)
    return int8_engine() != "qnnpack" and not cpu_has_vnni()


INT8_DYNAMIC = FastKernel("int8 dynamic linear", lambda x, w, b: int8_linear(x, int8_pack(w, b), int8_reduce_range()),
                          5e-2, instead="the float32 layers")


class Int8Linear(nn.Module):
    """An inference-only ``nn.Linear`` with int8 weights (per output channel) and dynamically
    quantized int8 activations: fbgemm's ``quantized::linear_dynamic`` (CPU). Output in fp32."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if int8_engine() is None:
            raise RuntimeError(f"int8 decoding needs PyTorch's quantized CPU kernels (fbgemm or qnnpack); the "
                               f"quantized engine is {torch.backends.quantized.engine!r}; decode in float32")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = int8_pack(linear.weight, linear.bias)
        self.reduce_range = int8_reduce_range()

    def forward(self, x: Tensor) -> Tensor:
        return int8_linear(x, self.packed, self.reduce_range)


def inference_layer(compute_type: str, device: torch.device,
                    one_row_mkl: bool = False) -> Callable[[nn.Linear], nn.Module] | None:
    """What each ``nn.Linear`` becomes for ``compute_type`` on ``device`` (None: it stays), after the
    private kernels' self-checks (a failing one falls back, with its warning line). ``one_row_mkl``:
    packed fp32 layers keep an MKL copy for one-row inputs (:class:`PackedLinear`)."""
    check_compute_type(compute_type, device)
    if compute_type == "bfloat16":
        packed = device.type == "cpu" and packing_available() and kernel_passes(ONEDNN_PACKED_BF16)
        return lambda linear: BFloat16Linear(linear, packed)
    if device.type != "cpu":
        return None
    if compute_type == "int8" and int8_engine() is None:
        raise ValueError(f"int8 decoding needs PyTorch's quantized CPU kernels (fbgemm or qnnpack); the "
                         f"quantized engine is {torch.backends.quantized.engine!r}; use float32")
    if compute_type == "int8" and kernel_passes(INT8_DYNAMIC):
        return Int8Linear
    if packing_available() and kernel_passes(ONEDNN_PACKED_FP32):
        return lambda linear: PackedLinear(linear, one_row_mkl)
    return TransposedLinear


def prepare_for_inference(model: nn.Module, compute_type: str = "float32", one_row_mkl: bool = False) -> nn.Module:
    """Swap every ``nn.Linear`` of ``model`` (in place) for the fastest inference kernel of
    ``compute_type`` on the device its weights are on; returns ``model`` in eval mode. No training
    afterwards. ValueError for a compute type the device cannot run (:func:`check_compute_type`).
    ``one_row_mkl``: see :class:`PackedLinear` (for layers that see one-row inputs: a decoder)."""
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    make = inference_layer(compute_type, device, one_row_mkl)
    if make is not None:
        for module in list(model.modules()):
            for name, child in module.named_children():
                if isinstance(child, nn.Linear):
                    setattr(module, name, make(child))
    return model.eval()


def prepare_for_translation(model: nn.Module, compute_type: str = "float32") -> nn.Module:
    """A Seq2Seq (encoder + decoder) for translate.py. ``int8``: the decoder's layers in int8 (its
    steps are the decoding time; int8 BERT activations cost BLEU, docs/speed.md), every other Linear
    fp32; ``bfloat16``: every Linear in bf16; ``float32``: as :func:`prepare_for_inference` gives it,
    the decoder's packed layers with their one-row MKL copy (a greedy step of one sentence)."""
    prepare_for_inference(model.decoder, compute_type, one_row_mkl=True)
    return prepare_for_inference(model, "float32" if compute_type == "int8" else compute_type)
