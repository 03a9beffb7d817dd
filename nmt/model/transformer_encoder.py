"""A from-scratch Transformer encoder for the paper's baselines (no BERT; source BPE vocabulary).

fairseq ``transformer`` encoder with its defaults (post-norm): ``sqrt(H) * embed + sinusoid``,
dropout, then N layers of ``LN(x + drop(SelfAttn(x)))`` and ``LN(x + drop(FFN(x)))``; padded
source positions are masked out of attention and zeroed in the output. Two sizes from the paper:

- ``transformer-base``: 6 layers, H 512, 8 heads, FFN 2048 (decoder of the same size);
- ``transformer-bert-size``: 12 layers, H 768, 12 heads, FFN 3072 (BERT-base's shape; 6 decoder layers);
- ``transformer-minilm-size``: 6 layers, H 384, 12 heads, FFN 1536 (the demo BERT's shape, all-MiniLM-L6-v2;
  6 decoder layers): the demo's "same network without pre-training";
- ``transformer-small``: 3 + 3 layers, H 256, 4 heads, FFN 1024: the low-resource baseline for corpora of
  10-50K pairs (narrow and shallow, as Sennrich & Zhang 2019 and Araabi & Monz 2020 recommend; the
  recipe around it, more dropout and more epochs, is ``nmt.train.config.LOW_RESOURCE_BASELINE``).

>>> import torch
>>> enc = TransformerEncoder(TransformerEncoderConfig(embed_dim=8, num_heads=2, ffn_dim=16, num_layers=1),
...                          vocab_size=20, pad_id=0).eval()
>>> out = enc(torch.tensor([[5, 6, 2], [7, 2, 0]]), torch.tensor([[True, True, True], [True, True, False]]))
>>> tuple(out.shape), float(out[1, 2].abs().sum().detach())
((2, 3, 8), 0.0)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from nmt.model.decoder import (
    FeedForward,
    SelfAttention,
    make_positions,
    sinusoidal_table,
    xavier_init_,
)
from nmt.model.limits import check_layer_config, config_from_dict


@dataclass
class TransformerEncoderConfig:
    embed_dim: int                   # H: model width
    num_heads: int                   # attention heads
    ffn_dim: int                     # feed-forward inner width
    num_layers: int = 6              # encoder layers
    dropout: float = 0.15            # on embeddings, attention and FFN outputs (same as the decoder's)
    attention_dropout: float = 0.0   # on attention probabilities
    activation_dropout: float = 0.0  # after the FFN's ReLU
    max_positions: int = 1024        # longest source (ids incl. EOS) the position table covers

    def __post_init__(self):
        self.validate()

    def validate(self, where: str = "encoder config") -> None:
        """ModelSpecError unless the sizes are in bounds and the heads divide the width (nmt/model/limits.py)."""
        check_layer_config(self, where)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "encoder config") -> "TransformerEncoderConfig":
        """From a checkpoint's model spec; ModelSpecError (naming ``where``) for a bad dict."""
        return config_from_dict(cls, d, where, "encoder")


# baseline shapes: name -> (encoder layers, decoder layers, H, heads, FFN)
BASELINE_SHAPES = {
    "transformer-base": (6, 6, 512, 8, 2048),
    "transformer-bert-size": (12, 6, 768, 12, 3072),
    "transformer-minilm-size": (6, 6, 384, 12, 1536),
    "transformer-small": (3, 3, 256, 4, 1024),
}


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerEncoderConfig):
        super().__init__()
        H = cfg.embed_dim
        self.self_attn = SelfAttention(H, cfg.num_heads, cfg.attention_dropout)
        self.self_attn_norm = nn.LayerNorm(H)
        self.ffn = FeedForward(H, cfg.ffn_dim, cfg.activation_dropout)
        self.ffn_norm = nn.LayerNorm(H)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B,S,H], mask [B,S] bool -> [B,S,H]."""
        x = self.self_attn_norm(x + F.dropout(self.self_attn(x, key_mask=mask), self.dropout, self.training))
        return self.ffn_norm(x + F.dropout(self.ffn(x), self.dropout, self.training))


class TransformerEncoder(nn.Module):
    def __init__(self, config: TransformerEncoderConfig, vocab_size: int, pad_id: int):
        super().__init__()
        self.config, self.pad_id = config, pad_id
        H = config.embed_dim
        self.embed_scale = math.sqrt(H)
        self.embed_tokens = nn.Embedding(vocab_size, H, padding_idx=pad_id)
        self.register_buffer("positions", sinusoidal_table(config.max_positions, H, pad_id), persistent=False)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        xavier_init_(self)

    @property
    def max_positions(self) -> int:
        return self.config.max_positions

    def forward(self, src_ids: Tensor, src_mask: Tensor) -> Tensor:
        """src_ids [B,S], src_mask [B,S] bool (True = real) -> [B,S,H], zero at padding."""
        if src_ids.size(1) > self.max_positions:
            raise ValueError(f"source of {src_ids.size(1)} tokens exceeds the encoder's max_positions "
                             f"{self.max_positions}")
        x = self.embed_scale * self.embed_tokens(src_ids) + self.positions[make_positions(src_ids, self.pad_id)]
        x = F.dropout(x, self.config.dropout, self.training)
        keep = src_mask[..., None].to(x.dtype)                                  # [B,S,1]
        x = x * keep
        for layer in self.layers:
            x = layer(x, src_mask)
        return x * keep
