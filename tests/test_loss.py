"""label_smoothed_nll_loss against hand-computed values and two independent formulations; the fused
projection + loss (projected_label_smoothed_nll_loss) against the plain one, values and gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from nmt.model.loss import (
    label_smoothed_nll_loss,
    perplexity,
    projected_label_smoothed_nll_loss,
)
from nmt.text.vocab import Vocab


def test_hand_computed_example():
    # V = 4, p = softmax(1, 2, 3, 4); target 1 and target 3, plus one PAD position
    z = torch.tensor([1.0, 2.0, 3.0, 4.0])
    lse = math.log(sum(math.exp(v) for v in (1, 2, 3, 4)))
    logp = [v - lse for v in (1, 2, 3, 4)]
    eps, eps_i = 0.1, 0.1 / 3
    # target distribution: 1 - eps on the right class, eps / (V - 1) on each of the three others
    expected_loss = sum(-(1 - eps) * logp[t] - sum(eps_i * logp[v] for v in range(4) if v != t) for t in (1, 3))
    expected_nll = -(logp[1] + logp[3])
    logits = torch.stack([z, z, z])[None]                    # [1, 3, 4]
    target = torch.tensor([[1, 3, Vocab.PAD]])
    loss, nll = label_smoothed_nll_loss(logits, target, epsilon=eps)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
    assert nll.item() == pytest.approx(expected_nll, rel=1e-6)


def _fairseq_formulation(logits, target, eps, pad):
    """log-softmax written out, masked and weighted as fairseq's current function does."""
    lprobs = torch.log_softmax(logits.double(), -1).view(-1, logits.size(-1))
    t = target.view(-1, 1)
    nll = -lprobs.gather(-1, t)
    smooth = -lprobs.sum(-1, keepdim=True)
    pad_mask = t.eq(pad)
    nll, smooth = nll.masked_fill(pad_mask, 0).sum(), smooth.masked_fill(pad_mask, 0).sum()
    eps_i = eps / (lprobs.size(-1) - 1)
    return (1 - eps - eps_i) * nll + eps_i * smooth, nll


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_matches_log_softmax_formulation_and_torch_cross_entropy(eps):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g) * 4
    target = torch.randint(0, 50, (3, 7), generator=g)
    target[0, 5:] = Vocab.PAD
    loss, nll = label_smoothed_nll_loss(logits, target, epsilon=eps)
    ref_loss, ref_nll = _fairseq_formulation(logits, target, eps, Vocab.PAD)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    assert nll.item() == pytest.approx(ref_nll.item(), rel=1e-5)
    # the same loss through torch's uniform smoothing: s / V per class == eps / (V - 1)  =>  s = eps V / (V - 1)
    V = logits.size(-1)
    torch_loss = F.cross_entropy(logits.view(-1, V), target.view(-1), ignore_index=Vocab.PAD,
                                 reduction="sum", label_smoothing=eps * V / (V - 1))
    assert loss.item() == pytest.approx(torch_loss.item(), rel=1e-5)


def test_gradient_matches_reference():
    g = torch.Generator().manual_seed(1)
    a = (torch.randn(2, 5, 11, generator=g)).requires_grad_()
    b = a.detach().clone().double().requires_grad_()
    target = torch.randint(1, 11, (2, 5), generator=g)
    target[1, 3:] = Vocab.PAD
    label_smoothed_nll_loss(a, target, 0.1)[0].backward()
    _fairseq_formulation(b, target, 0.1, Vocab.PAD)[0].backward()
    torch.testing.assert_close(a.grad, b.grad.float(), rtol=1e-5, atol=1e-6)
    assert a.grad[1, 3:].abs().sum() == 0          # PAD positions get no gradient


def test_all_padding_gives_zero_and_bad_shapes_raise():
    loss, nll = label_smoothed_nll_loss(torch.randn(1, 2, 5), torch.zeros(1, 2, dtype=torch.long))
    assert loss.item() == 0 and nll.item() == 0
    with pytest.raises(ValueError, match="do not match"):
        label_smoothed_nll_loss(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="epsilon"):
        label_smoothed_nll_loss(torch.randn(2, 5), torch.zeros(2, dtype=torch.long), epsilon=1.0)


def test_perplexity_is_exp_of_mean_nll():
    assert perplexity(math.log(10) * 4, 4) == pytest.approx(10)
    assert perplexity(1e6, 1) == float("inf")


def _projection_case(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 7, 16, generator=g, dtype=dtype) * 2
    weight = torch.randn(50, 16, generator=g, dtype=dtype) * 0.5
    target = torch.randint(1, 50, (3, 7), generator=g)
    target[0, 4:] = Vocab.PAD
    target[2, 6] = Vocab.PAD
    return hidden, weight, target


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("chunk_rows", [1, 3, 1000])            # uneven chunks, and everything at once
def test_projected_loss_values_and_gradients_equal_the_plain_loss(dtype, tol, chunk_rows):
    hidden, weight, target = _projection_case(dtype)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    plain = label_smoothed_nll_loss if dtype == torch.float32 else \
        (lambda logits, target, epsilon: _fairseq_formulation(logits, target, epsilon, Vocab.PAD))   # float64
    loss1, nll1 = plain(h1 @ w1.T, target, epsilon=0.1)
    loss2, nll2 = projected_label_smoothed_nll_loss(h2, w2, target, epsilon=0.1, chunk_bytes=chunk_rows * 4 * 50)
    (3.0 * loss1).backward()                                     # a scaled loss, as the trainer's 1/tokens
    (3.0 * loss2).backward()
    torch.testing.assert_close(loss2.double(), loss1.double(), rtol=tol, atol=0)
    torch.testing.assert_close(nll2.double(), nll1.double(), rtol=tol, atol=0)
    torch.testing.assert_close(h2.grad, h1.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(w2.grad, w1.grad, rtol=tol, atol=tol)
    assert h2.grad.dtype == dtype and w2.grad.dtype == dtype
    assert h2.grad[0, 4:].abs().sum() == 0                       # PAD positions get no gradient
    assert not nll2.requires_grad


def test_projected_loss_without_grad_and_with_a_frozen_input():
    hidden, weight, target = _projection_case(torch.float32, seed=3)
    ref = label_smoothed_nll_loss(hidden @ weight.T, target, epsilon=0.2)
    with torch.no_grad():
        got = projected_label_smoothed_nll_loss(hidden, weight.requires_grad_(), target, epsilon=0.2)
    torch.testing.assert_close(got, ref)
    assert not got[0].requires_grad
    # only the projection trains (hidden frozen): its gradient still matches
    w1, w2 = weight.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    label_smoothed_nll_loss(hidden @ w1.T, target, epsilon=0.2)[0].backward()
    projected_label_smoothed_nll_loss(hidden, w2, target, epsilon=0.2)[0].backward()
    torch.testing.assert_close(w2.grad, w1.grad, rtol=1e-5, atol=1e-6)


def test_projected_loss_all_padding_and_bad_shapes():
    weight = torch.randn(5, 4, requires_grad=True)
    loss, nll = projected_label_smoothed_nll_loss(torch.randn(1, 2, 4), weight, torch.zeros(1, 2, dtype=torch.long))
    assert loss.item() == 0 and nll.item() == 0
    loss.backward()
    assert weight.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="do not match"):
        projected_label_smoothed_nll_loss(torch.randn(2, 3, 4), weight, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="do not match"):
        projected_label_smoothed_nll_loss(torch.randn(2, 3, 6), weight, torch.zeros(2, 3, dtype=torch.long))


def test_projected_loss_under_autocast_matches_the_plain_loss_under_autocast():
    # the trainer's --amp path (CUDA autocast) runs the matmuls in bf16/fp16 and the softmax in float32;
    # CPU autocast exercises the same branch. bf16 keeps 8 bits of mantissa, hence the tolerance.
    hidden, weight, target = _projection_case(torch.float32, seed=5)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss1, nll1 = label_smoothed_nll_loss(torch.nn.functional.linear(h1, w1), target)
        loss2, nll2 = projected_label_smoothed_nll_loss(h2, w2, target, chunk_bytes=3 * 4 * 50)
    loss1.backward()
    loss2.backward()
    assert loss2.dtype == torch.float32 and h2.grad.dtype == torch.float32 and w2.grad.dtype == torch.float32
    torch.testing.assert_close(loss2, loss1, rtol=1e-3, atol=0)
    torch.testing.assert_close(nll2, nll1, rtol=1e-3, atol=0)
    torch.testing.assert_close(h2.grad, h1.grad, rtol=0.02, atol=0.02)
    torch.testing.assert_close(w2.grad, w1.grad, rtol=0.02, atol=0.02)
