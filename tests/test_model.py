"""Seq2Seq: stages (frozen encoder), parameter counts, ModelSpec round trips, both encoder kinds."""
import pytest
import torch

from nmt.errors import ModelSpecError
from nmt.model.loss import label_smoothed_nll_loss
from nmt.model.seq2seq import (
    ModelSpec,
    Seq2Seq,
    build_model,
    count_parameters,
    format_parameter_counts,
)
from nmt.model.transformer_encoder import TransformerEncoder
from nmt.text.vocab import Vocab

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py: tiny models run faster on one thread


TINY = dict(embed_dim=16, num_heads=2, ffn_dim=32, num_layers=2)


def tiny_model(dropout=0.15):
    torch.manual_seed(0)
    return build_model(ModelSpec.transformer("transformer-base", src_vocab_size=30, tgt_vocab_size=20,
                                             src_pad_id=0, dropout=dropout, **TINY))


def batch():
    src = torch.tensor([[5, 6, 7, 2], [8, 9, 2, 0]])
    return src, src.ne(0), torch.tensor([[Vocab.BOS, 5, 6], [Vocab.BOS, 7, 0]])


def test_decoder_stage_freezes_encoder_and_keeps_it_in_eval_mode():
    model = tiny_model(dropout=0.5)
    model.set_stage("decoder")
    model.train()
    assert not model.encoder.training and model.decoder.training
    assert all(not p.requires_grad for p in model.encoder.parameters())
    src, mask, prev = batch()
    enc = model.encode(src, mask)
    assert not enc.requires_grad                                   # ran under no_grad
    assert torch.equal(enc, model.encode(src, mask))                # no encoder dropout
    model(src, mask, prev).sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters() if p.dim() > 1)
    counts = count_parameters(model)
    assert counts["encoder"]["trainable"] == 0 and counts["encoder"]["frozen"] > 0
    assert counts["decoder"]["frozen"] == 0
    assert counts["total"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("stage", ["finetune", "direct", "scratch"])
def test_other_stages_train_everything(stage):
    model = tiny_model(dropout=0.5)
    model.set_stage("decoder")
    model.set_stage(stage)
    model.train()
    assert model.encoder.training
    src, mask, prev = batch()
    assert model.encode(src, mask).requires_grad
    model(src, mask, prev).sum().backward()
    assert all(p.grad is not None for p in model.encoder.layers.parameters() if p.dim() > 1)
    assert count_parameters(model)["encoder"]["frozen"] == 0


def test_unknown_stage_is_rejected():
    with pytest.raises(ValueError, match="unknown stage"):
        tiny_model().set_stage("frozen")


def test_forward_with_precomputed_encoder_out_is_the_same():
    model = tiny_model().eval()
    src, mask, prev = batch()
    out = model(src, mask, prev)
    assert out.shape == (2, 3, 20)
    assert torch.equal(out, model(src, mask, prev, encoder_out=model.encode(src, mask)))


def test_forward_with_target_is_the_label_smoothed_loss_of_the_logits_with_the_same_gradients():
    model = tiny_model(dropout=0.0)
    model.set_stage("finetune")
    src, mask, prev = batch()
    target = torch.tensor([[5, 6, Vocab.EOS], [7, Vocab.EOS, Vocab.PAD]])
    loss_ref, nll_ref = label_smoothed_nll_loss(model(src, mask, prev), target, epsilon=0.1)
    loss_ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    loss, nll = model(src, mask, prev, target=target, label_smoothing=0.1)
    loss.backward()
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(nll, nll_ref)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_baseline_shapes_follow_the_paper():
    base = ModelSpec.transformer("transformer-base", 100, 100)
    assert (base.encoder["num_layers"], base.encoder["embed_dim"], base.encoder["num_heads"],
            base.encoder["ffn_dim"]) == (6, 512, 8, 2048)
    assert (base.decoder["num_layers"], base.decoder["embed_dim"], base.decoder["ffn_dim"]) == (6, 512, 2048)
    big = ModelSpec.transformer("transformer-bert-size", 100, 100, src_pad_id=0)
    assert (big.encoder["num_layers"], big.encoder["embed_dim"], big.encoder["num_heads"],
            big.encoder["ffn_dim"]) == (12, 768, 12, 3072)
    assert big.decoder["num_layers"] == 6 and big.decoder["embed_dim"] == 768
    assert isinstance(tiny_model().encoder, TransformerEncoder)


def test_spec_round_trip_and_clear_errors():
    spec = ModelSpec.transformer("transformer-base", 30, 20, src_pad_id=1, **TINY)
    d = spec.to_dict()
    assert ModelSpec.from_dict(d) == spec
    assert build_model(ModelSpec.from_dict(d)).encoder.pad_id == 1
    with pytest.raises(ModelSpecError, match="unknown keys \\['extra'\\]"):
        ModelSpec.from_dict({**d, "extra": 1}, what="ckpt.pt: model_spec")
    with pytest.raises(ModelSpecError, match="unknown arch"):
        ModelSpec.from_dict({**d, "arch": "lstm"})
    with pytest.raises(ModelSpecError, match="missing keys \\['decoder'\\]"):
        ModelSpec.from_dict({k: v for k, v in d.items() if k != "decoder"})


def test_format_parameter_counts_mentions_every_part():
    text = format_parameter_counts(count_parameters(tiny_model()))
    assert text.splitlines()[0].startswith("encoder:") and "decoder:" in text and "total:" in text


def test_bert_arch_builds_a_decoder_as_wide_as_bert():
    bert = pytest.importorskip("nmt.model.bert")
    cfg = bert.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=16)
    spec = ModelSpec.bert(cfg, tgt_vocab_size=20, src_pad_id=0)
    model = build_model(ModelSpec.from_dict(spec.to_dict()))
    assert isinstance(model, Seq2Seq) and model.encoder_max_positions == 16
    assert (model.decoder.config.embed_dim, model.decoder.config.num_heads, model.decoder.config.ffn_dim) == (32, 4, 128)
    src = torch.tensor([[2, 7, 8, 3], [2, 9, 3, 0]])
    model.set_stage("decoder")
    model.train()
    out = model(src, src.ne(0), torch.tensor([[1, 5], [1, 6]]))
    assert out.shape == (2, 2, 20) and not model.encoder.training


def test_baselines_init_embeddings_like_fairseq_and_the_bert_decoder_keeps_xavier():
    # fairseq: token embeddings and an untied output projection ~ normal(0, H^-0.5), padding row zero;
    # the paper's new decoder on BERT: Xavier-uniform, std sqrt(2 / (V + H))
    torch.manual_seed(0)
    V = 4000
    base = build_model(ModelSpec.transformer("transformer-small", src_vocab_size=V, tgt_vocab_size=V, src_pad_id=0))
    for weight in (base.encoder.embed_tokens.weight, base.decoder.embed_tokens.weight,
                   base.decoder.output_projection.weight):
        H = weight.size(1)
        assert weight[1:].std().item() == pytest.approx(H ** -0.5, rel=0.02)
    assert not base.encoder.embed_tokens.weight[0].any() and not base.decoder.embed_tokens.weight[Vocab.PAD].any()
    bert = pytest.importorskip("nmt.model.bert")
    cfg = bert.BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=16)
    paper = build_model(ModelSpec.bert(cfg, tgt_vocab_size=V, src_pad_id=0))
    weight = paper.decoder.embed_tokens.weight
    assert weight[1:].std().item() == pytest.approx((2 / (V + 64)) ** 0.5, rel=0.02)
