"""Inference and training kernels for nn.Linear (nmt/cpu/inference_linear.py, nmt/cpu/gemm.py) against nn.Linear."""
import copy
import functools

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


@pytest.mark.skipif(not packing_available(), reason="no oneDNN in this PyTorch build")
def test_one_row_inputs_of_a_decoders_packed_layer_go_through_mkl(monkeypatch):
    """prepare_for_translation's decoder layers: one row -> the [in, out] MKL copy, more rows -> oneDNN."""
    import nmt.cpu.inference_linear as inference_linear
    lin = nn.Linear(48, 96)
    layer = PackedLinear(lin, one_row_mkl=True)
    calls = []
    real = inference_linear.onednn_linear
    monkeypatch.setattr(inference_linear, "onednn_linear", lambda *a: calls.append(a[0].shape) or real(*a))
    for shape in [(1, 48), (1, 1, 48), (2, 48), (4, 1, 48)]:
        x = torch.randn(*shape)
        torch.testing.assert_close(layer(x), lin(x), rtol=1e-5, atol=1e-5)
    assert calls == [(2, 48), (4, 1, 48)]
    model = nn.Module()
    model.encoder, model.decoder = mlp(), mlp()
    inference_linear.prepare_for_translation(model)
    assert [m.one_row is not None for m in (model.decoder[0], model.decoder[2], model.encoder[0])] == [True, True, False]


@pytest.mark.skipif(int8_engine() is None, reason="no quantized CPU engine in this PyTorch build")
def test_int8_layer_is_within_quantization_error_and_swaps_every_linear():
    model = mlp()
    x = torch.randn(20, 48)
    reference = model(x)
    quantized = prepare_for_inference(copy.deepcopy(model), "int8")
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


# --- the private kernels' self-checks and the compute types ---------------------------------------------

def fresh_checks(monkeypatch):
    """Forget earlier self-check verdicts (cached per process) for this test and after it."""
    from nmt.cpu import gemm
    gemm._self_check.cache_clear()
    monkeypatch.setattr(gemm, "_self_check", functools.cache(gemm._self_check.__wrapped__))


@pytest.mark.parametrize("failure", ["raises", "wrong"])
def test_a_failing_packed_kernel_falls_back_to_the_public_path_with_one_warning(monkeypatch, capsys, failure):
    from nmt.cpu import gemm, inference_linear
    fresh_checks(monkeypatch)
    real = gemm.onednn_linear

    def broken(x, w, b):
        if failure == "raises":
            raise RuntimeError("could not create a primitive descriptor\nsecond line")
        return 2 * real(x, w, b)                        # runs, but answers wrong
    monkeypatch.setattr(inference_linear, "onednn_linear", broken)
    monkeypatch.setattr(gemm, "onednn_linear", broken)
    model = mlp()
    x = torch.randn(5, 48)
    reference = model(x)
    fast = prepare_for_inference(copy.deepcopy(model))
    assert [type(m).__name__ for m in fast] == ["TransposedLinear", "ReLU", "TransposedLinear"]
    torch.testing.assert_close(fast(x), reference, rtol=1e-5, atol=1e-5)
    # training's layers take F.linear too (their kernel fails its own check), gradients intact
    trained = use_onednn(copy.deepcopy(model))
    torch.testing.assert_close(trained(x), reference, rtol=1e-5, atol=1e-5)
    prepare_for_inference(copy.deepcopy(model))         # the verdict is kept: no second warning
    err = capsys.readouterr().err.splitlines()
    if packing_available():
        assert len(err) == 2 and all(line.startswith("warning: oneDNN") for line in err), err
        assert "self-check" in err[0] and ("RuntimeError" in err[0] if failure == "raises" else "error" in err[0])
        assert "TransposedLinear" in err[0] and "NMT_FAST_KERNELS=0" in err[0]


@pytest.mark.skipif(int8_engine() is None, reason="no quantized CPU engine in this PyTorch build")
def test_a_failing_int8_kernel_leaves_the_layers_in_float32(monkeypatch, capsys):
    from nmt.cpu import inference_linear
    fresh_checks(monkeypatch)
    monkeypatch.setattr(inference_linear, "int8_linear", lambda x, packed, reduce_range: x.new_zeros(1))
    quantized = prepare_for_inference(mlp(), "int8")
    assert "Int8Linear" not in {type(m).__name__ for m in quantized}
    err = capsys.readouterr().err
    assert err.startswith("warning: int8 dynamic linear failed its self-check") and "float32 layers" in err


def test_fast_kernels_off_uses_public_ops_only(monkeypatch, capsys):
    from nmt.cpu import gemm, inference_linear
    fresh_checks(monkeypatch)
    monkeypatch.setenv("NMT_FAST_KERNELS", "0")

    def must_not_run(*args):
        raise AssertionError("a private kernel ran with NMT_FAST_KERNELS=0")
    monkeypatch.setattr(inference_linear, "onednn_linear", must_not_run)
    monkeypatch.setattr(gemm, "onednn_linear", must_not_run)
    model = mlp()
    x = torch.randn(4, 48)
    assert [type(m).__name__ for m in prepare_for_inference(copy.deepcopy(model))][0] == "TransposedLinear"
    use_onednn(copy.deepcopy(model))(x).sum().backward()
    assert capsys.readouterr().err == ""                # off is not a failure: no warning


def test_bfloat16_layers_are_within_bf16_rounding(monkeypatch):
    from nmt.cpu import inference_linear
    monkeypatch.setattr(inference_linear, "cpu_has_bf16", lambda: True)      # the kernels run anywhere, slowly
    model = mlp()
    x = torch.randn(6, 48)
    reference = model(x)
    bf16 = prepare_for_inference(copy.deepcopy(model), "bfloat16")
    assert [type(m).__name__ for m in bf16] == ["BFloat16Linear", "ReLU", "BFloat16Linear"]
    y = bf16(x)
    assert y.dtype == torch.float32
    assert 0 < ((y - reference).norm() / reference.norm()).item() < 0.02


def test_compute_types_the_device_cannot_run_are_refused(monkeypatch):
    from nmt.cpu import inference_linear
    monkeypatch.setattr(inference_linear, "cpu_has_bf16", lambda: False)
    with pytest.raises(ValueError, match="no bfloat16 instructions.*use float32 or int8"):
        prepare_for_inference(mlp(), "bfloat16")
    with pytest.raises(ValueError, match="unknown compute type 'float16'"):
        prepare_for_inference(mlp(), "float16")
    with pytest.raises(ValueError, match="CPU only"):
        inference_linear.check_compute_type("int8", torch.device("cuda"))


def test_cpu_flags_are_read_from_proc_cpuinfo(monkeypatch, tmp_path):
    from nmt.cpu import inference_linear
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n", encoding="utf-8")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(info if path == "/proc/cpuinfo" else path,
                                                                         *a, **k))
    assert inference_linear.cpu_has_bf16() and inference_linear.cpu_has_vnni()
    info.write_text("flags\t\t: fpu avx2 fma\n", encoding="utf-8")
    assert not inference_linear.cpu_has_bf16() and not inference_linear.cpu_has_vnni()
