"""Bounds on a network's sizes, checked before anything is allocated.

A model's sizes come from files: a checkpoint's ``model_spec``, a BERT ``config.json``. A damaged or
hand-edited one (``tgt_vocab_size`` 1e10, a width of -384) must be one clear error, not a 15 TB
allocation or a PyTorch traceback deep inside ``nn.Linear``. The bounds are far above any model
this project trains (BERT-large: width 1024, 24 layers, 30,522 word pieces) and far below what
would exhaust a machine by themselves.

>>> check_int(512, "embed_dim", "decoder", high=MAX_WIDTH)
>>> check_int(10**10, "tgt_vocab_size", "ckpt.pt: model_spec", high=MAX_VOCAB)
Traceback (most recent call last):
...
nmt.errors.ModelSpecError: ckpt.pt: model_spec: tgt_vocab_size must be an integer from 1 to 16,777,216, got 10000000000
"""
from __future__ import annotations

import math
from dataclasses import MISSING, fields

from nmt.errors import ModelSpecError

MAX_VOCAB = 2 ** 24        # symbols of a vocabulary (source, target, BERT word pieces, token types)
MAX_WIDTH = 2 ** 16        # a model width or a feed-forward inner width
MAX_LAYERS = 256           # layers of an encoder or a decoder
MAX_POSITIONS = 2 ** 16    # entries of a position table


def check_int(value, name: str, where: str, high: int, low: int = 1, error: type = ModelSpecError) -> None:
    """Raise ``error`` naming ``where`` and ``name`` unless ``value`` is an int (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise error(f"{where}: {name} must be an integer from {low:,} to {high:,}, got {value!r}")


def check_probability(value, name: str, where: str, error: type = ModelSpecError) -> None:
    """Raise unless ``value`` is a number in [0, 1) (a dropout rate)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise error(f"{where}: {name} must be a number in [0, 1), got {value!r}")


def check_positive_float(value, name: str, where: str, error: type = ModelSpecError) -> None:
    """Raise unless ``value`` is a finite number > 0 (a LayerNorm epsilon)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise error(f"{where}: {name} must be a finite number > 0, got {value!r}")


def check_heads(width: int, heads: int, width_name: str, heads_name: str, where: str,
                error: type = ModelSpecError) -> None:
    """Attention splits the width into equal heads: ``heads`` must divide ``width``."""
    if width % heads:
        raise error(f"{where}: {width_name} {width} is not divisible by {heads_name} {heads} "
                    f"(each attention head gets width / heads dimensions)")


def check_layer_config(config, where: str) -> None:
    """The fields DecoderConfig and TransformerEncoderConfig share: sizes in bounds, heads dividing
    the width, dropout rates in [0, 1)."""
    check_int(config.embed_dim, "embed_dim", where, MAX_WIDTH)
    check_int(config.num_heads, "num_heads", where, config.embed_dim)
    check_heads(config.embed_dim, config.num_heads, "embed_dim", "num_heads", where)
    check_int(config.ffn_dim, "ffn_dim", where, MAX_WIDTH)
    check_int(config.num_layers, "num_layers", where, MAX_LAYERS)
    check_int(config.max_positions, "max_positions", where, MAX_POSITIONS)
    for name in ("dropout", "attention_dropout", "activation_dropout"):
        check_probability(getattr(config, name), name, where)


def config_from_dict(cls, d, where: str, kind: str):
    """A config dataclass from a dict read from a file: no unknown or missing keys, then
    ``cls.validate(where)`` (so the error names the file, not the dataclass)."""
    if not isinstance(d, dict):
        raise ModelSpecError(f"{where}: expected a dict of {kind} config fields, got {type(d).__name__}")
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ModelSpecError(f"{where}: unknown {kind} config keys {sorted(unknown)}")
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in d]
    if missing:
        raise ModelSpecError(f"{where}: the {kind} config lacks {', '.join(missing)}")
    config = cls.__new__(cls)          # skip __post_init__: validate with ``where`` instead
    for f in fields(cls):
        setattr(config, f.name, d.get(f.name, f.default))
    config.validate(where)
    return config


def check_state_shapes(state: dict, expected: dict, where: str, source: str, fix: str,
                       error: type = ModelSpecError) -> None:
    """Raise ``error`` unless ``state`` holds exactly the tensors of ``expected`` (name -> shape), each
    of its shape: the weights a file holds against what its own ``source`` (its config, its model spec)
    implies, before any of them is copied into a network. ``fix``: what to do, ending the message.

    >>> import torch
    >>> check_state_shapes({"w": torch.zeros(2, 3)}, {"w": (3, 3)}, "b.pt", "config", "convert it again")
    Traceback (most recent call last):
    ...
    nmt.errors.ModelSpecError: b.pt: tensor 'w' has shape [2, 3] but the config implies [3, 3]; config and weights do not match (convert it again)
    """
    unknown, missing = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
    if unknown or missing:
        raise error(f"{where}: the weights do not match the {source} (unknown: {unknown[:5]}, missing: {missing[:5]}); "
                    f"{fix}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            raise error(f"{where}: tensor {name!r} has shape {list(state[name].shape)} but the {source} implies "
                        f"{list(shape)}; {source} and weights do not match ({fix})")
