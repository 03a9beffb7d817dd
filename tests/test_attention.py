import pytest
import torch
import torch.nn.functional as F

from nmt.cpu.attention import scaled_dot_product_attention
from nmt.model.bert import BertConfig
from nmt.model.seq2seq import ModelSpec, build_model
from nmt.text.vocab import Vocab

pytestmark = pytest.mark.usefixtures("one_thread")


def qkv(dtype, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 3, 5, 8, generator=g).to(dtype).requires_grad_(requires_grad) for _ in range(3)]


@pytest.mark.parametrize("kwargs", [{}, {"is_causal": True},
                                    {"attn_mask": torch.tensor([True, True, True, False, False])[None, None, None]}])
def test_float32_is_pytorchs_attention_unchanged(kwargs):
    q, k, v = qkv(torch.float32)
    assert torch.equal(scaled_dot_product_attention(q, k, v, **kwargs),
                       F.scaled_dot_product_attention(q, k, v, **kwargs))


def test_bfloat16_under_cpu_autocast_is_computed_in_float32_and_returned_in_bfloat16():
    q, k, v = qkv(torch.bfloat16, requires_grad=True)
    mask = torch.tensor([True, True, True, False, False])[None, None, None]              # [1,1,1,S]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    y32 = F.scaled_dot_product_attention(q32, k32, v32, attn_mask=mask)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, y32.to(torch.bfloat16))           # the fp32 result, rounded once
    y.float().sum().backward()
    y32.sum().backward()
    for a, b in ((q, q32), (k, k32), (v, v32)):
        assert a.grad.dtype == torch.bfloat16
        torch.testing.assert_close(a.grad.float(), b.grad, rtol=2e-2, atol=2e-2)


def tiny_model(arch: str):
    torch.manual_seed(0)
    if arch == "bert":
        bert = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=16)
        return build_model(ModelSpec.bert(bert, tgt_vocab_size=20, src_pad_id=0, num_layers=2))
    return build_model(ModelSpec.transformer(arch, src_vocab_size=40, tgt_vocab_size=20, src_pad_id=0,
                                             embed_dim=16, num_heads=2, ffn_dim=32, num_layers=2))


@pytest.mark.parametrize("arch", ["bert", "transformer-base"])
def test_every_attention_of_a_model_under_cpu_bfloat16_autocast_runs_in_float32(arch, monkeypatch):
    model = tiny_model(arch)
    seen, pytorchs = [], F.scaled_dot_product_attention

    def recording(q, k, v, **kwargs):
        seen.append(q.dtype)
        return pytorchs(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)   # what nmt.cpu.attention calls
    src = torch.tensor([[5, 6, 7, 2], [8, 9, 2, 0]])
    prev = torch.tensor([[Vocab.BOS, 5, 6], [Vocab.BOS, 7, Vocab.PAD]])
    target = torch.tensor([[5, 6, Vocab.EOS], [7, Vocab.EOS, Vocab.PAD]])
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model(src, src.ne(0), prev, target=target)
    loss.backward()
    assert len(seen) == 2 * 3            # encoder: 2 layers x self; decoder: 2 layers x (self + cross)
    assert set(seen) == {torch.float32}
    assert torch.isfinite(loss)
