"""label_smoothed_nll_loss against hand-computed values and two independent formulations."""
import math

import pytest
import torch
import torch.nn.functional as F

from nmt.loss import label_smoothed_nll_loss, perplexity
from nmt.vocab import Vocab


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
