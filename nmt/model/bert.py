"""BERT encoder, from scratch: the source side of Imamura & Sumita (2019).

The paper recycles a pre-trained BERT as the NMT encoder: its last hidden states ``[B, S, H]``
feed the decoder's cross-attention. This module is only the network (embeddings + N post-norm
Transformer layers); reading Google TF checkpoints and HF weights lives in
``nmt/weights/tf_checkpoint.py`` / ``nmt/weights/safetensors_io.py`` and ``nmt/weights/pretrained.py``.

Native parameter names (what ``tools/convert_bert_checkpoint.py`` writes)::

    embeddings.word.weight        [V, H]      word-piece embeddings
    embeddings.position.weight    [P, H]      learned absolute positions
    embeddings.token_type.weight  [T, H]      segment A/B embeddings
    embeddings.norm.{weight,bias} [H]
    layers.{i}.attn.qkv.{weight [3H, H], bias [3H]}   query, key, value stacked in that order
    layers.{i}.attn.out.{weight [H, H], bias [H]}
    layers.{i}.attn_norm.{weight,bias} [H]            post-norm after attention + residual
    layers.{i}.ffn.up.{weight [I, H], bias [I]}
    layers.{i}.ffn.down.{weight [H, I], bias [H]}
    layers.{i}.ffn_norm.{weight,bias} [H]             post-norm after FFN + residual
    pooler.dense.{weight [H, H], bias [H]}            only if the checkpoint has it

The fused QKV projection (one [3H, H] matmul instead of three smaller ones) is there for speed;
the converters concatenate BERT's separate query/key/value weights into it.

Example (a tiny random encoder; real weights come from ``nmt.weights.pretrained.load_bert``):

>>> import torch
>>> config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2,
...                     num_attention_heads=2, intermediate_size=16)
>>> encoder = BertEncoder(config).eval()
>>> ids = torch.tensor([[2, 7, 9, 3], [2, 5, 3, 0]])
>>> mask = ids != 0
>>> encoder(ids, mask).shape
torch.Size([2, 4, 8])
"""
from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nmt.cpu.attention import scaled_dot_product_attention
from nmt.errors import CheckpointError
from nmt.model.limits import (
    MAX_LAYERS,
    MAX_POSITIONS,
    MAX_VOCAB,
    MAX_WIDTH,
    check_heads,
    check_positive_float,
    check_probability,
)


@dataclass
class BertConfig:
    """The fields of Google's ``bert_config.json`` (HF ``config.json`` holds the same ones)."""

    vocab_size: int                            # word-piece vocabulary size V (30522 for uncased)
    hidden_size: int                           # H: width of embeddings and every layer (768 base)
    num_hidden_layers: int                     # N: Transformer layers (12 base, 6 for MiniLM-L6)
    num_attention_heads: int                   # heads per layer; H must divide evenly
    intermediate_size: int                     # I: feed-forward inner width (4H in BERT)
    hidden_act: str = "gelu"                   # only exact erf GELU ("gelu") is supported
    hidden_dropout_prob: float = 0.1           # dropout on embeddings and sub-layer outputs
    attention_probs_dropout_prob: float = 0.1  # dropout on attention probabilities
    max_position_embeddings: int = 512         # P: longest input, in word pieces incl. [CLS]/[SEP]
    type_vocab_size: int = 2                   # T: token types (segments A/B)
    layer_norm_eps: float = 1e-12              # BERT's LayerNorm epsilon

    def __post_init__(self):
        self.validate()

    def validate(self, source: str = "<config>") -> None:
        """Raise CheckpointError unless every field has a usable value: sizes positive and within
        nmt/model/limits.py's bounds (checked before anything is allocated), heads dividing the width."""
        for name, high in (("vocab_size", MAX_VOCAB), ("hidden_size", MAX_WIDTH), ("num_hidden_layers", MAX_LAYERS),
                           ("num_attention_heads", MAX_WIDTH), ("intermediate_size", MAX_WIDTH),
                           ("max_position_embeddings", MAX_POSITIONS), ("type_vocab_size", MAX_VOCAB)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointError(f"{source}: {name} must be a positive integer, got {value!r}")
            if value > high:
                raise CheckpointError(f"{source}: {name} {value:,} is above the limit of {high:,} "
                                      f"(a damaged or foreign config?)")
        check_heads(self.hidden_size, self.num_attention_heads, "hidden_size", "num_attention_heads", source,
                    CheckpointError)
        if self.hidden_act != "gelu":
            raise CheckpointError(f"{source}: hidden_act {self.hidden_act!r} is not supported; "
                                  "BERT uses exact erf GELU (\"gelu\")")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            check_probability(getattr(self, name), name, source, CheckpointError)
        check_positive_float(self.layer_norm_eps, "layer_norm_eps", source, CheckpointError)

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "BertConfig":
        """Build from a config dict; keys outside the dataclass (HF extras) are ignored.

        >>> BertConfig.from_dict({"vocab_size": 10, "hidden_size": 4, "num_hidden_layers": 1,
        ...     "num_attention_heads": 2, "intermediate_size": 8, "model_type": "bert"}).layer_norm_eps
        1e-12
        """
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: a BERT config must be a JSON object, got {type(d).__name__}")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in d]
        if missing:
            raise CheckpointError(f"{source}: the BERT config lacks {', '.join(missing)}")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError(f"{source}: position_embedding_type "
                                  f"{d['position_embedding_type']!r} is not supported (only absolute)")
        config = cls.__new__(cls)  # skip __post_init__: validate with the file name instead
        for f in fields(cls):
            setattr(config, f.name, d.get(f.name, f.default))
        config.validate(source)
        return config

    @classmethod
    def from_json(cls, path) -> "BertConfig":
        """Read ``bert_config.json`` (Google) or ``config.json`` (HF)."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: BERT config not found")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path}: not a valid JSON config ({error})") from None
        return cls.from_dict(d, source=str(path))

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class BertEmbeddings(nn.Module):
    """word + position + token type, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
        seq_len = input_ids.size(1)
        positions = torch.arange(seq_len, device=input_ids.device)                # [S]
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)  # [B, S, H]
        return self.dropout(self.norm(x))


class BertSelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection and a key-padding mask."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x, attn_mask):
        B, S, H = x.shape
        q, k, v = self.qkv(x).split(H, dim=2)                                      # 3 x [B, S, H]
        q, k, v = (t.view(B, S, self.num_heads, H // self.num_heads).transpose(1, 2)
                   for t in (q, k, v))                                              # [B, nh, S, hd]
        y = scaled_dot_product_attention(                                            # [B, nh, S, hd]
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout_p if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, S, H)                                       # [B, S, H]
        return self.out(y)


class BertLayer(nn.Module):
    """Post-norm Transformer layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attn = BertSelfAttention(config)
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = nn.Module()
        self.ffn.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, attn_mask):                                                 # x [B, S, H]
        x = self.attn_norm(x + self.dropout(self.attn(x, attn_mask)))
        h = F.gelu(self.ffn.up(x))                                                   # [B, S, I], exact erf GELU
        return self.ffn_norm(x + self.dropout(self.ffn.down(h)))                     # [B, S, H]


class BertEncoder(nn.Module):
    """BERT without task heads; ``forward`` returns the last hidden states ``[B, S, H]``.

    ``with_pooler`` adds BERT's pooler (tanh dense on [CLS]) so checkpoints that carry it load
    completely; the NMT model does not use it. ``init_weights=False`` keeps PyTorch's default
    init and skips BERT's truncated-normal pass (slow for a large model) when pre-trained weights
    will be loaded right away.
    """

    def __init__(self, config: BertConfig, with_pooler: bool = False, init_weights: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        if with_pooler:
            self.pooler = nn.Module()
            self.pooler.dense = nn.Linear(config.hidden_size, config.hidden_size)
        else:
            self.pooler = None
        if init_weights:
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        """BERT's init (truncated normal, std 0.02); only matters for tests and from-scratch use."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        """input_ids [B, S] long, attention_mask [B, S] bool (True = real token) -> [B, S, H]."""
        B, S = input_ids.shape
        if S > self.config.max_position_embeddings:
            raise ValueError(f"input has {S} positions but the BERT encoder supports at most "
                             f"{self.config.max_position_embeddings}; truncate the source sentences")
        if attention_mask.shape != input_ids.shape or attention_mask.dtype != torch.bool:
            raise ValueError(f"attention_mask must be a bool tensor of shape {tuple(input_ids.shape)} "
                             f"(True at real tokens), got {attention_mask.dtype} {tuple(attention_mask.shape)}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)                            # [B, S], all segment A
        attn_mask = attention_mask[:, None, None, :]                                # [B, 1, 1, S], True = attend
        x = self.embeddings(input_ids, token_type_ids)                              # [B, S, H]
        for layer in self.layers:
            x = layer(x, attn_mask)                                                  # [B, S, H]
        return x

    def pooled(self, hidden):
        """BERT's pooler: tanh(dense(hidden[:, 0])) -> [B, H]; needs ``with_pooler=True``."""
        if self.pooler is None:
            raise ValueError("this encoder has no pooler (the checkpoint did not carry one)")
        return torch.tanh(self.pooler.dense(hidden[:, 0]))


def num_parameters(module: nn.Module) -> int:
    """Total number of parameter elements (for summaries)."""
    return sum(p.numel() for p in module.parameters())


def expected_shapes(config: BertConfig, with_pooler: bool) -> dict[str, tuple[int, ...]]:
    """Native parameter name -> shape for ``config`` (used to validate checkpoints; no allocation).

    >>> shapes = expected_shapes(BertConfig(30522, 384, 6, 12, 1536), with_pooler=False)
    >>> len(shapes), shapes["layers.5.attn.qkv.weight"]
    (77, (1152, 384))
    """
    H, I = config.hidden_size, config.intermediate_size
    shapes = {
        "embeddings.word.weight": (config.vocab_size, H),
        "embeddings.position.weight": (config.max_position_embeddings, H),
        "embeddings.token_type.weight": (config.type_vocab_size, H),
        "embeddings.norm.weight": (H,), "embeddings.norm.bias": (H,),
    }
    for i in range(config.num_hidden_layers):
        shapes.update({
            f"layers.{i}.attn.qkv.weight": (3 * H, H), f"layers.{i}.attn.qkv.bias": (3 * H,),
            f"layers.{i}.attn.out.weight": (H, H), f"layers.{i}.attn.out.bias": (H,),
            f"layers.{i}.attn_norm.weight": (H,), f"layers.{i}.attn_norm.bias": (H,),
            f"layers.{i}.ffn.up.weight": (I, H), f"layers.{i}.ffn.up.bias": (I,),
            f"layers.{i}.ffn.down.weight": (H, I), f"layers.{i}.ffn.down.bias": (H,),
            f"layers.{i}.ffn_norm.weight": (H,), f"layers.{i}.ffn_norm.bias": (H,),
        })
    if with_pooler:
        shapes.update({"pooler.dense.weight": (H, H), "pooler.dense.bias": (H,)})
    return shapes


__all__ = ["BertConfig", "BertEncoder", "expected_shapes", "num_parameters"]
