"""The full translation network: an encoder (BERT, or a Transformer for the baselines) + the decoder.

:class:`ModelSpec` holds everything needed to rebuild the network; it is stored in checkpoints as a
plain dict (``to_dict``/``from_dict``) so loading never unpickles code. Training stages:

- ``"decoder"`` (paper stage 1): the encoder is frozen -- no gradients, always in eval mode (no
  dropout, even after ``model.train()``), and ``encode`` runs under ``torch.no_grad()``;
- ``"finetune"`` (stage 2), ``"direct"`` (no stage 1) and ``"scratch"`` (baselines): all trainable.

A worked example with a tiny baseline model:

>>> import torch
>>> spec = ModelSpec.transformer("transformer-base", src_vocab_size=30, tgt_vocab_size=20, src_pad_id=0,
...                              embed_dim=16, num_heads=2, ffn_dim=32, num_layers=1)
>>> model = build_model(spec)
>>> model.set_stage("decoder"); model.train() and None
>>> model.encoder.training, model.decoder.training
(False, True)
>>> counts = count_parameters(model)
>>> counts["encoder"]["trainable"], counts["decoder"]["frozen"]
(0, 0)
>>> ModelSpec.from_dict(spec.to_dict()) == spec
True
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from nmt.errors import CheckpointError, ModelSpecError
from nmt.model.decoder import DecoderConfig, TransformerDecoder, fairseq_embedding_init_
from nmt.model.limits import MAX_VOCAB, check_int
from nmt.model.loss import projected_label_smoothed_nll_loss
from nmt.model.transformer_encoder import (
    BASELINE_SHAPES,
    TransformerEncoder,
    TransformerEncoderConfig,
)
from nmt.text.vocab import Vocab

ARCHS = ("bert", *BASELINE_SHAPES)
STAGES = ("decoder", "finetune", "direct", "scratch")


@dataclass
class ModelSpec:
    arch: str                        # "bert" or one of BASELINE_SHAPES (transformer-base, -bert-size, ...)
    src_vocab_size: int              # WordPiece vocab (bert) or source BPE Vocab (baselines)
    tgt_vocab_size: int              # target BPE Vocab size (ids: nmt.text.vocab.Vocab)
    src_pad_id: int                  # source padding id (tokenizer.pad_id / Vocab.PAD)
    bert_config: dict | None         # BertConfig.to_dict() when arch == "bert", else None
    decoder: dict                    # DecoderConfig.to_dict()
    encoder: dict | None = None      # TransformerEncoderConfig.to_dict() for the baselines, else None

    @classmethod
    def bert(cls, bert_config, tgt_vocab_size: int, src_pad_id: int, **decoder_overrides) -> "ModelSpec":
        """The paper's system: a decoder as wide as BERT (``bert_config``: BertConfig or its dict)."""
        d = bert_config if isinstance(bert_config, dict) else bert_config.to_dict()
        dec = DecoderConfig.matching(d["hidden_size"], d["num_attention_heads"], **decoder_overrides)
        return cls("bert", int(d["vocab_size"]), tgt_vocab_size, src_pad_id, dict(d), dec.to_dict())

    @classmethod
    def transformer(cls, arch: str, src_vocab_size: int, tgt_vocab_size: int, src_pad_id: int = Vocab.PAD,
                    **overrides) -> "ModelSpec":
        """A baseline; ``overrides`` (e.g. embed_dim, dropout) apply to encoder and decoder alike."""
        if arch not in BASELINE_SHAPES:
            raise ModelSpecError(f"unknown baseline arch {arch!r}; expected one of {list(BASELINE_SHAPES)}")
        enc_layers, dec_layers, H, heads, ffn = BASELINE_SHAPES[arch]
        shape = dict(embed_dim=H, num_heads=heads, ffn_dim=ffn)
        shape.update(overrides)
        enc = TransformerEncoderConfig(**{"num_layers": enc_layers, **shape})
        dec = DecoderConfig(**{"num_layers": dec_layers, **shape})
        return cls(arch, src_vocab_size, tgt_vocab_size, src_pad_id, None, dec.to_dict(), enc.to_dict())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, what: str = "model spec") -> "ModelSpec":
        if not isinstance(d, dict):
            raise ModelSpecError(f"{what}: expected a dict, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown, missing = set(d) - names, {n for n in names - set(d) if n != "encoder"}
        if unknown or missing:
            raise ModelSpecError(f"{what}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        spec = cls(**d)
        spec.validate(what)
        return spec

    def validate(self, what: str = "model spec") -> None:
        """ModelSpecError, naming ``what`` and the field, unless the network can be built: a known arch,
        vocabulary sizes within nmt/model/limits.py's bounds, a pad id inside the source vocabulary,
        valid encoder/decoder configs of one width (BERT's vocabulary is the source's). Nothing is
        allocated, so a damaged spec (``tgt_vocab_size`` 1e10) fails here, not in ``nn.Embedding``."""
        if self.arch not in ARCHS:
            raise ModelSpecError(f"{what}: unknown arch {self.arch!r}; expected one of {list(ARCHS)}")
        for name in ("src_vocab_size", "tgt_vocab_size"):
            check_int(getattr(self, name), name, what, MAX_VOCAB, low=Vocab.UNK + 1)
        check_int(self.src_pad_id, "src_pad_id", what, self.src_vocab_size - 1, low=0)
        decoder = DecoderConfig.from_dict(self.decoder, where=f"{what}: decoder")
        if self.arch == "bert":
            if not self.bert_config:
                raise ModelSpecError(f"{what}: arch 'bert' needs bert_config")
            from nmt.model.bert import BertConfig     # lazy: keeps the baselines independent of BERT
            try:
                bert = BertConfig.from_dict(self.bert_config, source=f"{what}: bert_config")
            except CheckpointError as e:
                raise ModelSpecError(str(e)) from None
            width, widths = bert.hidden_size, "bert_config hidden_size"
            if bert.vocab_size != self.src_vocab_size:
                raise ModelSpecError(f"{what}: src_vocab_size {self.src_vocab_size} differs from bert_config "
                                     f"vocab_size {bert.vocab_size} (the source vocabulary is BERT's)")
        else:
            if not self.encoder:
                raise ModelSpecError(f"{what}: arch {self.arch!r} needs an encoder config")
            width = TransformerEncoderConfig.from_dict(self.encoder, where=f"{what}: encoder").embed_dim
            widths = "encoder embed_dim"
        if decoder.embed_dim != width:
            raise ModelSpecError(f"{what}: decoder embed_dim {decoder.embed_dim} differs from the {widths} "
                                 f"{width}; the decoder attends to the encoder's output, so they must be equal")


class Seq2Seq(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: TransformerDecoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.stage = "direct"

    @property
    def encoder_max_positions(self) -> int:
        enc = self.encoder
        return int(enc.config.max_position_embeddings if hasattr(enc.config, "max_position_embeddings")
                   else enc.config.max_positions)

    def set_stage(self, stage: str) -> None:
        """"decoder": freeze the encoder (no grad, eval mode kept); other stages: all trainable."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {list(STAGES)}")
        self.stage = stage
        frozen = stage == "decoder"
        self.encoder.requires_grad_(not frozen)
        self.decoder.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Seq2Seq":
        super().train(mode)
        if self.stage == "decoder":
            self.encoder.eval()          # frozen encoder: never dropout
        return self

    def encode(self, src_ids: Tensor, src_mask: Tensor) -> Tensor:
        """src_ids [B,S], src_mask [B,S] bool -> [B,S,H]."""
        ctx = torch.no_grad() if self.stage == "decoder" else contextlib.nullcontext()
        with ctx:
            return self.encoder(src_ids, src_mask)

    def forward(self, src_ids: Tensor, src_mask: Tensor, prev_tokens: Tensor,
                encoder_out: Tensor | None = None, target: Tensor | None = None,
                label_smoothing: float = 0.1):
        """-> logits [B,T,V]; pass ``encoder_out`` [B,S,H] to reuse an encoding.

        With ``target`` [B,T] -> (loss_sum, nll_sum) instead (nmt/model/loss.py): the output projection is
        fused into the label-smoothed loss, so the [B,T,V] logits are never built. Training goes
        through here (not a separate method) so that a DistributedDataParallel wrapper sees it."""
        if encoder_out is None:
            encoder_out = self.encode(src_ids, src_mask)
        if target is None:
            return self.decoder(prev_tokens, encoder_out, src_mask)
        hidden = self.decoder.features(prev_tokens, encoder_out, src_mask)                 # [B,T,H]
        return projected_label_smoothed_nll_loss(hidden, self.decoder.output_projection.weight, target,
                                                 epsilon=label_smoothing)


def build_model(spec: ModelSpec) -> Seq2Seq:
    """A freshly initialized network (BERT weights are loaded separately, e.g. nmt.weights.pretrained)."""
    spec.validate()               # every size checked before anything is allocated
    decoder = TransformerDecoder(DecoderConfig.from_dict(spec.decoder), spec.tgt_vocab_size, Vocab.PAD)
    if spec.arch == "bert":
        from nmt.model.bert import (  # lazy: keeps the baselines independent of BERT
            BertConfig,
            BertEncoder,
        )
        encoder = BertEncoder(BertConfig.from_dict(spec.bert_config))
    else:
        encoder = TransformerEncoder(TransformerEncoderConfig.from_dict(spec.encoder), spec.src_vocab_size,
                                     spec.src_pad_id)
        # fairseq's embedding init for the baselines: Xavier's std on a [V, H] table, sqrt(2 / (V + H)),
        # is sqrt((V + H) / 2H) times below fairseq's H^-0.5, and with it transformer-small stalled on
        # the demo (docs/notes/results-demo-en-vi-history.md)
        fairseq_embedding_init_([encoder.embed_tokens, decoder.embed_tokens, decoder.output_projection])
    return Seq2Seq(encoder, decoder)


def count_parameters(model: Seq2Seq) -> dict:
    """{"encoder": {"trainable": n, "frozen": n}, "decoder": {...}, "total": n}."""
    out = {}
    for part in ("encoder", "decoder"):
        params = list(getattr(model, part).parameters())
        out[part] = {"trainable": sum(p.numel() for p in params if p.requires_grad),
                     "frozen": sum(p.numel() for p in params if not p.requires_grad)}
    out["total"] = sum(v["trainable"] + v["frozen"] for v in out.values())
    return out


def format_parameter_counts(counts: dict) -> str:
    """One line per part, e.g. for a training log.

    >>> print(format_parameter_counts({"encoder": {"trainable": 0, "frozen": 22_713_216},
    ...                                "decoder": {"trainable": 33_136_000, "frozen": 0}, "total": 55_849_216}))
    encoder:   22.71M (trainable 0, frozen 22,713,216)
    decoder:   33.14M (trainable 33,136,000, frozen 0)
    total:     55.85M
    """
    lines = [f"{part + ':':9s} {(c['trainable'] + c['frozen']) / 1e6:6.2f}M "
             f"(trainable {c['trainable']:,}, frozen {c['frozen']:,})" for part, c in counts.items() if part != "total"]
    lines.append(f"{'total:':9s} {counts['total'] / 1e6:6.2f}M")
    return "\n".join(lines)
