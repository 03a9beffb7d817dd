"""Inference and training kernels for nn.Linear (nmt/cpu/inference_linear.py, nmt/cpu/gemm.py) against nn.Linear."""
import copy

import pytest
import torch
import torch.nn as nn

from nmt.cpu.allocator import keep_freed_memory
from nmt.cpu.gemm import OneDNNLinear, use_onednn
from nmt.cpu.inference_linear import (
    Int8Linear,
    PackedLinear,
    TransposedLinear,
    int8_engine,
    packing_available,
    prepare_for_inference,
)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(48, 96), nn.ReLU(), nn.Linear(96, 40, bias=False))


@pytest.mark.parametrize("layer", [PackedLinear, TransposedLinear])
def test_fp32_inference_layers_equal_nn_linear(layer):
    if layer is PackedLinear and not packing_available():
        pytest.skip("no oneDNN in this PyTorch build")
    lin = nn.Linear(48, 96)
    for shape in [(1, 48), (7, 48), (3, 5, 48)]:
        x = torch.randn(*shape)
        torch.testing.assert_close(layer(lin)(x), lin(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(int8_engine() is None, reason="no quantized CPU engine in this PyTorch build")
def test_int8_layer_is_within_quantization_error_and_swaps_every_linear():
    model = mlp()
    x = torch.randn(20, 48)
    reference = model(x)
    quantized = prepare_for_inference(copy.deepcopy(model), int8=True)
    assert [type(m).__name__ for m in quantized] == ["Int8Linear", "ReLU", "Int8Linear"]
    y = quantized(x)
    relative = (y - reference).norm() / reference.norm()
    assert 0 < relative < 0.05                          # int8 rounding shows, but stays small
    single = Int8Linear(model[0])(x[:1])                # one row: per-call activation scale
    assert single.shape == (1, 96)


def test_onednn_linear_gives_nn_linears_values_and_gradients():
    plain = mlp()
    fast = use_onednn(copy.deepcopy(plain))
    assert type(fast[0]) is OneDNNLinear and list(fast.state_dict()) == list(plain.state_dict())
    x = torch.randn(3, 11, 48, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(3, 11, 40)
    plain(x).backward(g)
    out = fast(x2)
    out.backward(g)
    torch.testing.assert_close(out, plain(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-5, msg=name)


def test_keep_freed_memory_applies_on_glibc():
    import platform
    applied = keep_freed_memory()
    assert isinstance(applied, bool)
    if platform.libc_ver()[0] == "glibc":
        assert applied
