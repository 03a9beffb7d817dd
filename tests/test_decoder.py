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
