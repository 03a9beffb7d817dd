"""The fairseq-style decoder: size (paper: 80M for BERT-base + 16K vocab), structure, init, KV cache."""
import math

import pytest
import torch

from nmt.model.decoder import (
    DecoderConfig,
    TransformerDecoder,
    make_positions,
    sinusoidal_table,
)
from nmt.text.vocab import Vocab

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py: tiny models run faster on one thread


def tiny(layers=2, H=16, heads=4, V=23, **kw):
    torch.manual_seed(0)
    return TransformerDecoder(DecoderConfig(embed_dim=H, num_heads=heads, ffn_dim=2 * H, num_layers=layers, **kw),
                              vocab_size=V).eval()


def expected_decoder_params(H, ffn, layers, V):
    """Counted by hand from fairseq's transformer decoder (post-norm, untied output projection)."""
    attn = 4 * (H * H + H)                        # q, k, v, out projections with biases
    ffn_params = H * ffn + ffn + ffn * H + H       # fc1, fc2 with biases
    norms = 3 * 2 * H                              # self-attn, cross-attn, FFN layer norms
    per_layer = 2 * attn + ffn_params + norms
    return layers * per_layer + V * H + V * H      # + token embedding + output projection (no bias)


def test_bert_base_decoder_has_the_papers_80m_parameters():
    # BERT-base width, 16K target vocabulary: the paper reports ~80M decoder parameters.
    with torch.device("meta"):   # no memory, no init cost
        dec = TransformerDecoder(DecoderConfig.matching(768, 12), vocab_size=16000)
    n = sum(p.numel() for p in dec.parameters())
    assert dec.config.num_layers == 6 and dec.config.ffn_dim == 3072
    assert n == expected_decoder_params(768, 3072, 6, 16000) == 81_286_656
    assert abs(n - 80e6) / 80e6 < 0.02


def test_structure_is_post_norm_without_final_norm_or_embedding_norm():
    dec = tiny()
    norms = [name for name, m in dec.named_modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 3 * dec.config.num_layers and all(n.startswith("layers.") for n in norms)
    assert dec.output_projection.bias is None
    assert dec.output_projection.weight.data_ptr() != dec.embed_tokens.weight.data_ptr()
    assert dec.embed_scale == pytest.approx(math.sqrt(16))
    assert "positions" not in dec.state_dict()   # sinusoids are rebuilt, not saved


def test_sinusoids_match_fairseq_formula_and_positions_start_after_pad():
    dim, pad = 10, 0
    table = sinusoidal_table(20, dim, pad)
    half = dim // 2
    for pos in (1, 7, 20):
        for i in range(half):
            freq = math.exp(-i * math.log(10000) / (half - 1))
            assert table[pos, i].item() == pytest.approx(math.sin(pos * freq), abs=1e-6)
            assert table[pos, half + i].item() == pytest.approx(math.cos(pos * freq), abs=1e-6)
    assert torch.all(table[pad] == 0)
    assert make_positions(torch.tensor([[1, 9, 9, 0, 0]]), pad_id=0).tolist() == [[1, 2, 3, 0, 0]]


def test_xavier_uniform_init_for_all_new_weights():
    H, V = 16, 23
    dec = tiny(H=H, V=V)
    emb = dec.embed_tokens.weight
    assert torch.all(emb[Vocab.PAD] == 0)
    bound = math.sqrt(6 / (V + H))
    assert emb.abs().max() <= bound and emb.abs().max() > 0.8 * bound
    qkv = dec.layers[0].self_attn.qkv.weight            # three [H,H] blocks, each Xavier over (H, H)
    for block in qkv.chunk(3):
        assert block.abs().max() <= math.sqrt(6 / (2 * H))
    fc1 = dec.layers[0].ffn.fc1.weight
    assert fc1.abs().max() <= math.sqrt(6 / (H + 2 * H))
    biases = [p for n, p in dec.named_parameters() if n.endswith("bias") and "norm" not in n]
    assert biases and all(torch.all(b == 0) for b in biases)


def test_self_attention_is_causal_and_padding_in_source_is_ignored():
    dec = tiny()
    enc = torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    prev = torch.tensor([[1, 4, 5, 6], [1, 7, 8, 9]])
    out = dec(prev, enc, mask)
    changed = prev.clone(); changed[:, 3] = 10
    assert torch.allclose(dec(changed, enc, mask)[:, :3], out[:, :3], atol=1e-6)
    enc2 = enc.clone(); enc2[1, 3:] = 100.0               # garbage at padded source positions
    assert torch.allclose(dec(prev, enc2, mask), out, atol=1e-6)


def test_incremental_step_equals_full_forward_with_beams_and_reordering():
    dec = tiny(layers=3)
    B, G, S, T = 2, 3, 6, 5                                 # G beams per sentence
    enc = torch.randn(B, S, 16)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    prev = torch.randint(4, 23, (B * G, T)); prev[:, 0] = Vocab.BOS
    enc_rows, mask_rows = enc.repeat_interleave(G, 0), mask.repeat_interleave(G, 0)
    full = dec(prev, enc_rows, mask_rows)                   # [B*G, T, V]
    state = dec.init_state(enc, mask)                       # K/V once per sentence
    for t in range(T):
        logits = dec.step(prev[:, t], state)
        assert (logits - full[:, t]).abs().max() < 1e-5
    # reorder within sentences (beam reordering) and drop sentence 0 (batch shrinking)
    order = torch.tensor([5, 3, 3])
    dec.reorder_state(state, order, source_order=torch.tensor([1]))
    nxt = torch.tensor([11, 12, 13])
    logits = dec.step(nxt, state)
    ref = dec(torch.cat([prev[order], nxt[:, None]], 1), enc_rows[order], mask_rows[order])[:, -1]
    assert (logits - ref).abs().max() < 1e-5


def test_dropout_only_in_training():
    dec = tiny(dropout=0.5)
    enc, mask, prev = torch.randn(1, 3, 16), torch.ones(1, 3, dtype=torch.bool), torch.tensor([[1, 5, 6]])
    assert torch.equal(dec(prev, enc, mask), dec(prev, enc, mask))
    dec.train()
    assert not torch.equal(dec(prev, enc, mask), dec(prev, enc, mask))


def test_config_roundtrip_and_validation():
    cfg = DecoderConfig.matching(384, 12, dropout=0.1)
    assert DecoderConfig.from_dict(cfg.to_dict()) == cfg and cfg.ffn_dim == 1536
    with pytest.raises(ValueError, match="divisible"):
        DecoderConfig(embed_dim=10, num_heads=3, ffn_dim=40)
    with pytest.raises(ValueError, match="unknown decoder config keys"):
        DecoderConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def padded_batch(H=16):
    """Two sentences: the second has two padded source positions (mask False) and a padded target."""
    torch.manual_seed(1)
    enc = torch.randn(2, 5, H)
    src_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    prev = torch.tensor([[Vocab.BOS, 5, 7], [Vocab.BOS, 6, Vocab.PAD]])           # T = 3
    return prev, enc, src_mask


def test_cross_attention_weights_are_probabilities_over_real_source_tokens():
    dec = tiny(layers=3)
    prev, enc, src_mask = padded_batch()
    weights = dec.cross_attention_weights(prev, enc, src_mask)
    assert len(weights) == 3
    for w in weights:
        assert w.shape == (2, 4, 3, 5)                               # [B,h,T,S]
        assert (w >= 0).all() and (w[1, :, :, 3:] == 0).all()         # nothing on source padding
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 3), atol=1e-6, rtol=0)
        assert (w[1, :, :, :3] > 0).all()                            # every real token gets some weight
    # layers differ: each layer's own probabilities, not one copied through
    assert not torch.allclose(weights[0], weights[-1])


def test_explicit_attention_path_gives_the_sdpa_output():
    dec = tiny(layers=3)
    prev, enc, src_mask = padded_batch()
    with torch.no_grad():
        x, weights = dec.features_and_cross_attention(prev, enc, src_mask)
        torch.testing.assert_close(x, dec.features(prev, enc, src_mask), atol=1e-6, rtol=0)
        torch.testing.assert_close(dec.output_projection(x), dec(prev, enc, src_mask), atol=1e-5, rtol=0)
        # and the weights are the ones that produced that output: re-attend the values by hand
        layer = dec.layers[0]
        h, d = layer.cross_attn.num_heads, layer.cross_attn.head_dim
        k, v = layer.cross_attn.memory_kv(enc)                              # [B,h,S,d]
        x0 = dec._embed(prev, make_positions(prev, dec.pad_id))
        x0 = layer.self_attn_norm(x0 + layer.self_attn(x0, causal=True))
        q = layer.cross_attn.q(x0).view(2, 3, h, d).transpose(1, 2)            # [B,h,T,d]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        ref = scores.masked_fill(~src_mask[:, None, None, :], float("-inf")).softmax(-1)
        torch.testing.assert_close(weights[0], ref, atol=1e-6, rtol=0)


def test_cross_attention_weights_with_beam_rows_per_sentence():
    """G query rows per source sentence (the beam layout): each row's weights are its own."""
    dec = tiny(layers=1)
    attn = dec.layers[0].cross_attn
    prev, enc, src_mask = padded_batch()
    k, v = attn.memory_kv(enc)
    mask = src_mask[:, None, None, :]
    torch.manual_seed(2)
    x = torch.randn(2 * 3, 3, 16)                                        # N = B * G, G = 3
    with torch.no_grad():
        y, w = attn(x, k, v, mask, need_weights=True)
        torch.testing.assert_close(y, attn(x, k, v, mask), atol=1e-6, rtol=0)
        for n in range(6):                                               # row n reads sentence n // 3
            b = n // 3
            y1, w1 = attn(x[n:n + 1], k[b:b + 1], v[b:b + 1], mask[b:b + 1], need_weights=True)
            torch.testing.assert_close(w[n:n + 1], w1, atol=1e-6, rtol=0)
    assert w.shape == (6, 4, 3, 5) and (w[3:, :, :, 3:] == 0).all()
