"""The fairseq-style Transformer decoder that is trained on top of the (frozen) BERT encoder.

It follows fairseq's ``transformer`` architecture with its defaults (``normalize_before=False``):

- input: ``sqrt(H) * embed(token) + sinusoid(position)``, then dropout; no embedding layer norm;
  positions are fairseq's: the first real token has position ``pad_id + 1`` (pad rows stay zero);
- each layer is POST-norm: ``x = LN(x + drop(SelfAttn(x)))``, ``x = LN(x + drop(CrossAttn(x, enc)))``,
  ``x = LN(x + drop(fc2(act_drop(relu(fc1(x))))))``; no final layer norm (fairseq adds one only
  when normalize_before=True);
- a separate output projection ``H -> V`` without bias (fairseq's ``share_decoder_input_output_embed``
  is off by default).

Initialization: every weight matrix, the token embedding included, is Xavier-uniform and every bias
is zero, as the paper states for all new weights (fairseq itself draws embeddings and the output
projection from N(0, H^-0.5)); the embedding row of PAD is zero.

Incremental decoding (beam search) keeps a :class:`DecoderState`: per layer the self-attention keys
and values of the prefix, and the cross-attention keys and values of the encoder output, computed
ONCE per source sentence and shared by all of its beams (the beams' queries are attended as extra
query rows of one attention call, so beam reordering never copies them).

For inspection, :meth:`TransformerDecoder.cross_attention_weights` runs a teacher-forced pass that
also returns each layer's cross-attention probabilities (``need_weights=True`` down to
:class:`CrossAttention`, which then computes them explicitly); every other path keeps scaled
dot-product attention (nmt/cpu/attention.py: PyTorch's kernel, in fp32 under CPU autocast), which
never forms them.

A worked example (a tiny decoder; ``step`` reproduces the full forward pass):

>>> import torch
>>> torch.manual_seed(0) and None
>>> dec = TransformerDecoder(DecoderConfig(embed_dim=8, num_heads=2, ffn_dim=16, num_layers=2), vocab_size=11).eval()
>>> enc, mask = torch.randn(1, 3, 8), torch.tensor([[True, True, False]])
>>> prev = torch.tensor([[1, 5, 7]])                       # BOS y1 y2
>>> full = dec(prev, enc, mask)                            # [1, 3, 11]
>>> state = dec.init_state(enc, mask)
>>> steps = torch.stack([dec.step(prev[:, t], state) for t in range(3)], dim=1)
>>> torch.allclose(full, steps, atol=1e-5)
True
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.cpu.attention import scaled_dot_product_attention
from nmt.model.limits import check_layer_config, config_from_dict
from nmt.text.vocab import Vocab


@dataclass
class DecoderConfig:
    embed_dim: int                  # H: model width; the paper uses the encoder's width (768 for BERT-base)
    num_heads: int                  # attention heads; the encoder's count (12 for BERT-base)
    ffn_dim: int                    # feed-forward inner width, 4 * H (3072 for BERT-base)
    num_layers: int = 6             # decoder layers (paper: 6)
    dropout: float = 0.15           # on embeddings, attention outputs and FFN outputs (paper: 0.15)
    attention_dropout: float = 0.0  # on attention probabilities (fairseq default 0)
    activation_dropout: float = 0.0  # after the FFN's ReLU (fairseq default 0)
    max_positions: int = 1024       # longest target prefix the position table covers

    def __post_init__(self):
        self.validate()

    def validate(self, where: str = "decoder config") -> None:
        """ModelSpecError unless the sizes are in bounds and the heads divide the width (nmt/model/limits.py)."""
        check_layer_config(self, where)

    @classmethod
    def matching(cls, hidden_size: int, num_heads: int, **overrides) -> "DecoderConfig":
        """The paper's decoder for an encoder of this width: same H and heads, FFN 4H, 6 layers.

        >>> DecoderConfig.matching(768, 12).ffn_dim
        3072
        """
        return cls(embed_dim=hidden_size, num_heads=num_heads, ffn_dim=4 * hidden_size, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "decoder config") -> "DecoderConfig":
        """From a checkpoint's model spec; ModelSpecError (naming ``where``) for a bad dict."""
        return config_from_dict(cls, d, where, "decoder")


# ----------------------------------------------------------------------------------------------
# building blocks shared with nmt/model/transformer_encoder.py

def sinusoidal_table(num_positions: int, dim: int, pad_id: int) -> Tensor:
    """fairseq's sinusoidal table [num_positions + pad_id + 1, dim]: sin half then cos half, pad row 0.

    >>> t = sinusoidal_table(4, 6, pad_id=0)
    >>> tuple(t.shape), float(t[0].abs().sum()), float(t[1, 0])   # position 1: sin(1 * 1.0)
    ((5, 6), 0.0, 0.8414709568023682)
    """
    half = dim // 2
    scale = math.log(10000) / (half - 1) if half > 1 else 0.0
    freqs = torch.exp(torch.arange(half, dtype=torch.float) * -scale)             # [half]
    angles = torch.arange(num_positions + pad_id + 1, dtype=torch.float)[:, None] * freqs[None]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)              # [P, 2*half]
    if dim % 2:
        table = torch.cat([table, torch.zeros(table.size(0), 1)], dim=1)
    table[pad_id] = 0
    return table


def make_positions(tokens: Tensor, pad_id: int) -> Tensor:
    """fairseq positions: pad_id + 1, pad_id + 2, ... at real tokens, pad_id at padding. [B,T] -> [B,T]

    >>> make_positions(torch.tensor([[7, 8, 0], [7, 0, 0]]), pad_id=0).tolist()
    [[1, 2, 0], [1, 0, 0]]
    """
    real = tokens.ne(pad_id).long()
    return torch.cumsum(real, dim=1) * real + pad_id


def xavier_init_(module: nn.Module) -> None:
    """Xavier-uniform for every Linear/Embedding weight, zero biases, LayerNorm (1, 0).

    A fused projection (``qkv``: [3H, H]) is initialized block by block, so each of q, k, v gets the
    same Xavier range as a separate [H, H] matrix would.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            blocks = getattr(m, "fused_blocks", 1)
            for w in m.weight.data.chunk(blocks, dim=0):
                nn.init.xavier_uniform_(w)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.xavier_uniform_(m.weight)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def fairseq_embedding_init_(embeddings: list[nn.Module]) -> None:
    """fairseq's transformer init for token embeddings and an untied output projection:
    normal(0, H^-0.5), padding row zero, so ``sqrt(H) * embed`` starts at unit scale.

    Xavier-uniform on a [V, H] table gives std sqrt(2 / (V + H)): 0.022 for V 4,000, H 256, a third of
    H^-0.5 = 0.0625, so the scaled tokens start at a third of the sinusoidal positions' size. The
    from-scratch baselines use this (nmt/model/seq2seq.py); the BERT system's new decoder keeps the paper's
    Xavier init.
    """
    for m in embeddings:
        nn.init.normal_(m.weight, mean=0.0, std=m.weight.size(1) ** -0.5)
        if getattr(m, "padding_idx", None) is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()


def _fused_linear(dim: int, blocks: int) -> nn.Linear:
    lin = nn.Linear(dim, blocks * dim)
    lin.fused_blocks = blocks          # read by xavier_init_
    return lin


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection (with biases, as fairseq)."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = num_heads, dim // num_heads, dropout
        self.qkv = _fused_linear(dim, 3)
        self.out = nn.Linear(dim, dim)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, H = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim)            # [B,T,3,h,d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                            # 3 x [B,h,T,d]
        return q, k, v

    def _merge(self, y: Tensor) -> Tensor:
        B, h, T, d = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, h * d))                   # [B,T,H]

    def forward(self, x: Tensor, *, causal: bool = False, key_mask: Tensor | None = None) -> Tensor:
        """x [B,T,H]; key_mask [B,T] bool (True = real token) or None -> [B,T,H]."""
        q, k, v = self._heads(x)
        mask = None if key_mask is None else key_mask[:, None, None, :]           # [B,1,1,T]
        y = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                         dropout_p=self.dropout if self.training else 0.0)
        return self._merge(y)

    def step(self, x: Tensor, cache: dict) -> Tensor:
        """x [N,1,H] (the newest position t) -> [N,1,H]; cache {"k","v": [N,h,t,d] or, after
        ``reorder_cache``, [N,h,t+1,d] with slot t free; "t": positions filled} gains position t."""
        q, k, v = self._heads(x)                                                  # [N,h,1,d]
        t = cache["t"]
        if cache["k"] is not None and cache["k"].size(2) == t + 1:               # write into the free slot
            cache["k"][:, :, t:] = k
            cache["v"][:, :, t:] = v
        else:
            cache["k"] = k.contiguous() if t == 0 else torch.cat([cache["k"], k], dim=2)
            cache["v"] = v.contiguous() if t == 0 else torch.cat([cache["v"], v], dim=2)
        cache["t"] = t + 1
        keys, values = cache["k"], cache["v"]                                     # [N,h,t+1,d]
        # every cached position is in the past and no prefix holds padding: no mask needed
        if x.device.type == "cpu" and not self.training:
            # one query row: two batched matmuls beat SDPA's kernel on the CPU (docs/speed.md)
            scores = torch.matmul(q, keys.transpose(-1, -2)).mul_(self.head_dim ** -0.5)   # [N,h,1,t+1]
            y = torch.matmul(scores.softmax(-1), values)                                    # [N,h,1,d]
        else:
            y = scaled_dot_product_attention(q, keys, values, dropout_p=self.dropout if self.training else 0.0)
        return self._merge(y)

    @staticmethod
    @torch.no_grad()
    def reorder_cache(cache: dict, new_order: Tensor) -> None:
        """Keep rows ``new_order`` [N'] of the cache, copied ONCE into buffers with a free slot for the
        next position (so ``step`` never concatenates). Incremental decoding is inference only."""
        t = cache["t"]
        if cache["k"] is None:
            return
        for name in ("k", "v"):
            old = cache[name]                                                     # [N,h,t,d], contiguous
            new = old.new_empty(new_order.numel(), old.size(1), t + 1, old.size(3))
            # gather into a contiguous block, then one strided copy: faster on the CPU than
            # index_select(out=new[:, :, :t]), whose strided output takes a slow path (docs/speed.md)
            new[:, :, :t] = old[:, :, :t].index_select(0, new_order)
            cache[name] = new


class CrossAttention(nn.Module):
    """Decoder -> encoder attention. Keys/values come from ``memory`` [B,S,H] and can be cached.

    The query batch may hold G rows per source sentence (N = B * G, e.g. G beams): they are folded
    into the query-length axis so that one attention call serves all beams with ONE copy of K/V.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = num_heads, dim // num_heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = _fused_linear(dim, 2)
        self.out = nn.Linear(dim, dim)

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """memory [B,S,H] -> k, v [B,h,S,d]."""
        B, S, _ = memory.shape
        kv = self.kv(memory).view(B, S, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return k, v

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor,
                need_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x [N,T,H] with N = B*G; k, v [B,h,S,d]; mask [B,1,1,S] bool -> [N,T,H].

        ``need_weights``: also return the attention probabilities [N,h,T,S] (0 at padding),
        computed explicitly (:meth:`explicit_attention`); otherwise SDPA, which never forms them.
        """
        N, T, H = x.shape
        B = k.size(0)
        G, h, d = N // B, self.num_heads, self.head_dim
        q = self.q(x).view(B, G, T, h, d).permute(0, 3, 1, 2, 4).reshape(B, h, G * T, d)   # [B,h,G*T,d]
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            y, probs = self.explicit_attention(q, k, v, mask, dropout_p)
        else:
            y = scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.view(B, h, G, T, d).permute(0, 2, 3, 1, 4).reshape(N, T, H)                  # [N,T,H]
        if not need_weights:
            return self.out(y)
        S = k.size(2)
        return self.out(y), probs.view(B, h, G, T, S).transpose(1, 2).reshape(N, h, T, S)

    def explicit_attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor,
                           dropout_p: float = 0.0) -> tuple[Tensor, Tensor]:
        """What SDPA computes, with its probabilities kept: softmax(q k^T / sqrt(d)) over the real
        source tokens. q [B,h,Q,d], k, v [B,h,S,d], mask [B,1,1,S] -> y [B,h,Q,d], probs [B,h,Q,S]."""
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.head_dim ** -0.5         # [B,h,Q,S]
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        y = torch.matmul(F.dropout(probs, dropout_p, training=dropout_p > 0), v)
        return y, probs


class FeedForward(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, activation_dropout: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
        self.activation_dropout = activation_dropout

    def forward(self, x: Tensor) -> Tensor:
        h = F.dropout(F.relu(self.fc1(x)), self.activation_dropout, self.training)
        return self.fc2(h)


# ----------------------------------------------------------------------------------------------

class DecoderLayer(nn.Module):
    """Post-norm layer: self-attention, cross-attention, FFN, each ``LN(x + dropout(sublayer(x)))``."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        H = cfg.embed_dim
        self.self_attn = SelfAttention(H, cfg.num_heads, cfg.attention_dropout)
        self.self_attn_norm = nn.LayerNorm(H)
        self.cross_attn = CrossAttention(H, cfg.num_heads, cfg.attention_dropout)
        self.cross_attn_norm = nn.LayerNorm(H)
        self.ffn = FeedForward(H, cfg.ffn_dim, cfg.activation_dropout)
        self.ffn_norm = nn.LayerNorm(H)
        self.dropout = cfg.dropout

    def _after_self_attention(self, x: Tensor, a: Tensor, k: Tensor, v: Tensor, mask: Tensor,
                              need_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The layer from the self-attention output ``a`` on (its residual and norm, cross-attention,
        FFN): the part :meth:`forward` (whole prefix) and :meth:`step` (one cached position) share."""
        drop = lambda y: F.dropout(y, self.dropout, self.training)   # noqa: E731
        x = self.self_attn_norm(x + drop(a))
        if need_weights:
            c, probs = self.cross_attn(x, k, v, mask, need_weights=True)
        else:
            c = self.cross_attn(x, k, v, mask)
        x = self.cross_attn_norm(x + drop(c))
        x = self.ffn_norm(x + drop(self.ffn(x)))
        return (x, probs) if need_weights else x

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor,
                need_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x [B,T,H]; k, v [B,h,S,d] of the encoder output; mask [B,1,1,S] -> [B,T,H]
        (``need_weights``: and the cross-attention probabilities [B,h,T,S])."""
        return self._after_self_attention(x, self.self_attn(x, causal=True), k, v, mask, need_weights)

    def step(self, x: Tensor, cache: dict, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """x [N,1,H] -> [N,1,H], appending this position's keys/values to ``cache``."""
        return self._after_self_attention(x, self.self_attn.step(x, cache), k, v, mask)


@dataclass
class DecoderState:
    """Incremental decoding state of N = B * beam_size prefixes over B source sentences."""
    cross_k: list[Tensor]          # per layer [B,h,S,d]: encoder keys, once per sentence
    cross_v: list[Tensor]          # per layer [B,h,S,d]
    cross_mask: Tensor             # [B,1,1,S] bool, True = real source token
    self_cache: list[dict] = field(default_factory=list)   # per layer {"k","v": [N,h,t(+1),d] or None, "t": t}
    length: int = 0                # t: prefix positions already fed


class TransformerDecoder(nn.Module):
    def __init__(self, config: DecoderConfig, vocab_size: int, pad_id: int = Vocab.PAD):
        super().__init__()
        self.config, self.vocab_size, self.pad_id = config, vocab_size, pad_id
        H = config.embed_dim
        self.embed_scale = math.sqrt(H)
        self.embed_tokens = nn.Embedding(vocab_size, H, padding_idx=pad_id)
        # not a parameter and not saved: rebuilt from the config like fairseq does
        self.register_buffer("positions", sinusoidal_table(config.max_positions, H, pad_id), persistent=False)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.output_projection = nn.Linear(H, vocab_size, bias=False)
        xavier_init_(self)

    @property
    def max_positions(self) -> int:
        return self.config.max_positions

    def _embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        x = self.embed_scale * self.embed_tokens(tokens) + self.positions[positions]
        return F.dropout(x, self.config.dropout, self.training)

    def _embed_prefix(self, prev_tokens: Tensor) -> Tensor:
        T = prev_tokens.size(1)
        if T > self.max_positions:
            raise ValueError(f"target prefix of {T} tokens exceeds the decoder's max_positions {self.max_positions}")
        return self._embed(prev_tokens, make_positions(prev_tokens, self.pad_id))   # [B,T,H]

    def forward(self, prev_tokens: Tensor, encoder_out: Tensor, src_mask: Tensor) -> Tensor:
        """prev_tokens [B,T] (BOS y1 .. y_{T-1}, right-padded), encoder_out [B,S,H], src_mask [B,S] -> logits [B,T,V]."""
        return self.output_projection(self.features(prev_tokens, encoder_out, src_mask))

    def features(self, prev_tokens: Tensor, encoder_out: Tensor, src_mask: Tensor) -> Tensor:
        """The last layer's output before the output projection: [B,T,H] (training fuses the
        projection into the loss, nmt/model/loss.py ``projected_label_smoothed_nll_loss``)."""
        x = self._embed_prefix(prev_tokens)                                      # [B,T,H]
        mask = src_mask[:, None, None, :]                                        # [B,1,1,S]
        for layer in self.layers:
            k, v = layer.cross_attn.memory_kv(encoder_out)                        # [B,h,S,d]
            x = layer(x, k, v, mask)
        return x                                                                 # [B,T,H]

    def features_and_cross_attention(self, prev_tokens: Tensor, encoder_out: Tensor,
                                     src_mask: Tensor) -> tuple[Tensor, list[Tensor]]:
        """:meth:`features` [B,T,H] and, per layer, the cross-attention probabilities [B,h,T,S]
        (rows sum to 1 over the real source tokens, 0 at padding). Teacher-forced over
        ``prev_tokens``: row t is what the decoder read from the source to predict token t + 1.
        The probabilities are computed explicitly, so this path is for inspection, not speed."""
        x = self._embed_prefix(prev_tokens)                                      # [B,T,H]
        mask = src_mask[:, None, None, :]                                        # [B,1,1,S]
        weights = []
        for layer in self.layers:
            k, v = layer.cross_attn.memory_kv(encoder_out)                        # [B,h,S,d]
            x, probs = layer(x, k, v, mask, need_weights=True)
            weights.append(probs)
        return x, weights

    def cross_attention_weights(self, prev_tokens: Tensor, encoder_out: Tensor, src_mask: Tensor) -> list[Tensor]:
        """Per layer, the cross-attention probabilities [B,h,T,S] of a teacher-forced pass
        (:meth:`features_and_cross_attention`): what tools/plot_attention.py draws."""
        return self.features_and_cross_attention(prev_tokens, encoder_out, src_mask)[1]

    # -- incremental decoding --------------------------------------------------------------------
    def init_state(self, encoder_out: Tensor, src_mask: Tensor) -> DecoderState:
        """Cross-attention K/V of every layer, computed once. encoder_out [B,S,H], src_mask [B,S]."""
        ks, vs = zip(*(layer.cross_attn.memory_kv(encoder_out) for layer in self.layers))
        return DecoderState(list(ks), list(vs), src_mask[:, None, None, :],
                            [{"k": None, "v": None, "t": 0} for _ in self.layers])

    def step(self, prev_token: Tensor, state: DecoderState) -> Tensor:
        """Feed position t = state.length for N prefixes: prev_token [N] -> logits [N,V].

        N must be a multiple of the number of source sentences B; rows ``b*G .. b*G+G-1`` belong
        to sentence b (G = N // B, e.g. the beam).
        """
        return self.output_projection(self.step_features(prev_token, state))

    def step_features(self, prev_token: Tensor, state: DecoderState) -> Tensor:
        """``step`` before the output projection: [N] -> [N,H] (beam search projects row chunks)."""
        t = state.length
        if t >= self.max_positions:
            raise ValueError(f"decoding past the decoder's max_positions {self.max_positions}")
        pos = torch.full_like(prev_token, self.pad_id + 1 + t)
        x = self._embed(prev_token, pos)[:, None, :]                              # [N,1,H]
        for layer, cache, k, v in zip(self.layers, state.self_cache, state.cross_k, state.cross_v):
            x = layer.step(x, cache, k, v, state.cross_mask)
        state.length = t + 1
        return x[:, 0]                                                           # [N,H]

    def reorder_state(self, state: DecoderState, new_order: Tensor,
                      source_order: Tensor | None = None) -> DecoderState:
        """Select prefixes: new_order [N'] indexes the current N rows (beam reordering).

        ``source_order`` [B'] selects source sentences as well (dropping finished ones); rows of
        ``new_order`` must then be grouped by the kept sentences in that order. Updated in place.
        """
        for cache in state.self_cache:
            SelfAttention.reorder_cache(cache, new_order)
        if source_order is not None:
            state.cross_k = [k.index_select(0, source_order) for k in state.cross_k]
            state.cross_v = [v.index_select(0, source_order) for v in state.cross_v]
            state.cross_mask = state.cross_mask.index_select(0, source_order)
        return state
