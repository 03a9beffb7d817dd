"""Parameter names of pre-trained BERT checkpoints -> ``nmt.model.bert`` names: one table for both formats.

Google's TensorFlow checkpoints (read by nmt/weights/tf_checkpoint.py) and Hugging Face files (safetensors or
``pytorch_model.bin``) name the same tensors differently, and ours differ from both (nmt/model/bert.py:
fused QKV, shorter names). :data:`NAMES` holds one row per native tensor piece, with the name in
each format; ``{}`` is the layer slot. ``part`` orders the pieces that are concatenated along dim 0
into one native tensor (fused QKV: query, key, value); a TF ``kernel`` is [in, out] and is transposed
into torch's Linear [out, in]. Names that are not part of the encoder are skipped only when listed
(:data:`TF_SKIP`, :data:`HF_SKIP`); an unknown name, a missing tensor or a shape that does not fit
the config raises CheckpointError. A worked example:

>>> TF_TO_NATIVE["bert/encoder/layer_{}/attention/self/key/kernel"]      # (native, part, transpose)
('layers.{}.attn.qkv.weight', 1, True)
>>> HF_TO_NATIVE["encoder.layer.{}.attention.self.key.weight"]
('layers.{}.attn.qkv.weight', 1, False)
"""
from __future__ import annotations

import re
from collections import Counter

import torch

from nmt.errors import CheckpointError
from nmt.model.bert import BertConfig, expected_shapes

_TF, _HF = "bert/encoder/layer_{}/", "encoder.layer.{}."
NAMES = (     # (native name, part, Google TF checkpoint name, Hugging Face name)
    ("embeddings.word.weight",       0, "bert/embeddings/word_embeddings",        "embeddings.word_embeddings.weight"),
    ("embeddings.position.weight",   0, "bert/embeddings/position_embeddings",    "embeddings.position_embeddings.weight"),
    ("embeddings.token_type.weight", 0, "bert/embeddings/token_type_embeddings",  "embeddings.token_type_embeddings.weight"),
    ("embeddings.norm.weight",       0, "bert/embeddings/LayerNorm/gamma",        "embeddings.LayerNorm.weight"),
    ("embeddings.norm.bias",         0, "bert/embeddings/LayerNorm/beta",         "embeddings.LayerNorm.bias"),
    ("layers.{}.attn.qkv.weight",    0, _TF + "attention/self/query/kernel",      _HF + "attention.self.query.weight"),
    ("layers.{}.attn.qkv.weight",    1, _TF + "attention/self/key/kernel",        _HF + "attention.self.key.weight"),
    ("layers.{}.attn.qkv.weight",    2, _TF + "attention/self/value/kernel",      _HF + "attention.self.value.weight"),
    ("layers.{}.attn.qkv.bias",      0, _TF + "attention/self/query/bias",        _HF + "attention.self.query.bias"),
    ("layers.{}.attn.qkv.bias",      1, _TF + "attention/self/key/bias",          _HF + "attention.self.key.bias"),
    ("layers.{}.attn.qkv.bias",      2, _TF + "attention/self/value/bias",        _HF + "attention.self.value.bias"),
    ("layers.{}.attn.out.weight",    0, _TF + "attention/output/dense/kernel",    _HF + "attention.output.dense.weight"),
    ("layers.{}.attn.out.bias",      0, _TF + "attention/output/dense/bias",      _HF + "attention.output.dense.bias"),
    ("layers.{}.attn_norm.weight",   0, _TF + "attention/output/LayerNorm/gamma", _HF + "attention.output.LayerNorm.weight"),
    ("layers.{}.attn_norm.bias",     0, _TF + "attention/output/LayerNorm/beta",  _HF + "attention.output.LayerNorm.bias"),
    ("layers.{}.ffn.up.weight",      0, _TF + "intermediate/dense/kernel",        _HF + "intermediate.dense.weight"),
    ("layers.{}.ffn.up.bias",        0, _TF + "intermediate/dense/bias",          _HF + "intermediate.dense.bias"),
    ("layers.{}.ffn.down.weight",    0, _TF + "output/dense/kernel",              _HF + "output.dense.weight"),
    ("layers.{}.ffn.down.bias",      0, _TF + "output/dense/bias",                _HF + "output.dense.bias"),
    ("layers.{}.ffn_norm.weight",    0, _TF + "output/LayerNorm/gamma",           _HF + "output.LayerNorm.weight"),
    ("layers.{}.ffn_norm.bias",      0, _TF + "output/LayerNorm/beta",            _HF + "output.LayerNorm.bias"),
    ("pooler.dense.weight",          0, "bert/pooler/dense/kernel",               "pooler.dense.weight"),
    ("pooler.dense.bias",            0, "bert/pooler/dense/bias",                 "pooler.dense.bias"),
)
# The table per format, as map_to_native takes it: checkpoint name -> (native name, part, transpose).
TF_TO_NATIVE = {tf: (native, part, tf.endswith("/kernel")) for native, part, tf, _ in NAMES}
HF_TO_NATIVE = {hf: (native, part, False) for native, part, _, hf in NAMES}
# Entries of Google's checkpoints that are not part of the encoder ("*" = any characters).
TF_SKIP = ("global_step", "*/adam_m", "*/adam_v", "cls/*")
# position_ids is a constant buffer; cls.* are BertForPreTraining heads.
HF_SKIP = ("embeddings.position_ids", "cls.*")
# Older HF files (e.g. bert-base-uncased's pytorch_model.bin) name LayerNorm params gamma/beta.
HF_RENAMES = (("LayerNorm.gamma", "LayerNorm.weight"), ("LayerNorm.beta", "LayerNorm.bias"))


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{\}", r"(\d+)") + r"\Z")


def _glob(pattern: str) -> re.Pattern:
    return re.compile(re.escape(pattern).replace(r"\*", ".*") + r"\Z")


def map_to_native(tensors: dict[str, torch.Tensor], table: dict, skip: tuple[str, ...],
                  config: BertConfig, source: str) -> dict[str, torch.Tensor]:
    """Rename, transpose and fuse checkpoint tensors into an ``nmt.model.bert.BertEncoder`` state dict.

    Raises CheckpointError naming ``source`` and the tensor for: a name neither in ``table`` nor
    in ``skip``; a layer index beyond ``config.num_hidden_layers``; a missing tensor; a shape
    that does not match ``config`` (each piece is checked before pieces are fused). The pooler is
    optional (both of its tensors or neither).
    """
    compiled = [(_pattern(src), src, native, part, transpose, _pattern(native))
                for src, (native, part, transpose) in table.items()]
    pieces = Counter(native for native, _, _ in table.values())        # native template -> pieces fused
    found = []                                  # (name, native, part, transpose, tensor, pieces fused)
    for name, tensor in tensors.items():
        match = _match(name, compiled, skip, config, source)
        if match is not None:
            native, part, transpose, template = match
            found.append((name, native, part, transpose, tensor, pieces[template]))
    expected = expected_shapes(config, with_pooler=any(f[1].startswith("pooler.") for f in found))
    parts: dict[str, dict[int, torch.Tensor]] = {}
    for name, native, part, transpose, tensor, count in found:
        shape = expected[native]
        want = (shape[0] // count, *shape[1:])                          # one piece, in torch's [out, in]
        want = tuple(reversed(want)) if transpose else want             # as the checkpoint stores it
        if tuple(tensor.shape) != want:
            raise CheckpointError(f"{source}: tensor {name!r} has shape {list(tensor.shape)} but the config implies "
                                  f"{list(want)} ({_sizes(config)}); config and weights do not match")
        tensor = tensor.t() if transpose else tensor
        parts.setdefault(native, {})[part] = (tensor.float() if tensor.is_floating_point() else tensor).contiguous()
    _check_complete(parts, expected, compiled, source)
    state = {}
    for native in expected:                     # every piece checked above: the concatenation fits
        fused = [parts[native][p] for p in sorted(parts[native])]
        state[native] = fused[0] if len(fused) == 1 else torch.cat(fused, dim=0)
    return state


def _sizes(config: BertConfig) -> str:
    """The config's sizes that decide the tensor shapes, for messages."""
    return (f"hidden_size={config.hidden_size}, intermediate_size={config.intermediate_size}, "
            f"vocab_size={config.vocab_size}, max_position_embeddings={config.max_position_embeddings}, "
            f"type_vocab_size={config.type_vocab_size}")


def _match(name: str, compiled: list, skip: tuple[str, ...], config: BertConfig,
           source: str) -> tuple[str, int, bool, str] | None:
    """(native name, part, transpose, native template) of a checkpoint name; None if it is skipped."""
    for regex, _, template, part, transpose, _ in compiled:
        m = regex.match(name)
        if m:
            break
    else:
        if any(_glob(p).match(name) for p in skip):
            return None
        raise CheckpointError(f"{source}: unknown tensor {name!r} (not a BERT encoder weight and not "
                              f"in the skip list {list(skip)})")
    native = template
    if m.groups():
        layer = int(m.group(1))
        if layer >= config.num_hidden_layers:
            raise CheckpointError(f"{source}: tensor {name!r} is for layer {layer} but the config has "
                                  f"num_hidden_layers={config.num_hidden_layers}; config and weights "
                                  "do not match")
        native = template.format(layer)
    return native, part, transpose, template


def _check_complete(parts: dict[str, dict[int, torch.Tensor]], expected: dict, compiled: list, source: str) -> None:
    """CheckpointError listing the checkpoint names of the pieces ``expected`` needs and ``parts`` lacks."""
    missing = []
    for native in expected:
        have = parts.get(native, {})
        for _, src, _, part, _, native_regex in compiled:
            m = native_regex.match(native)
            if m and part not in have:
                missing.append(src.format(*m.groups()))
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise CheckpointError(f"{source}: missing tensor(s) {shown}; the checkpoint is incomplete")


def normalize_hf_names(tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Drop a ``bert.`` prefix and rename old gamma/beta; duplicates after that raise."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        new = name[len("bert."):] if name.startswith("bert.") else name
        for old, replacement in HF_RENAMES:
            if new.endswith(old):
                new = new[:-len(old)] + replacement
        if new in out:
            raise CheckpointError(f"{source}: tensor {name!r} duplicates {new!r}")
        out[new] = tensor
    return out
