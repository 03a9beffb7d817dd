"""Serving, part 1: a trained checkpoint written as a CTranslate2 model directory.

CTranslate2 (an optional package: ``pip install -e .[ctranslate2]``) runs Transformer models in
C++. Both of nmt's networks fit its ``TransformerSpec`` without new code in it:

- the BERT encoder: post-norm, exact (erf) GELU, learned positions, LayerNorm after the embeddings,
  no embedding scaling. Every source is one segment, so BERT's token-type row 0 is added to the
  position table once here (CTranslate2 has no token types);
- the baselines' encoder and the decoder: fairseq's post-norm layers with ReLU, ``sqrt(H) * embed``
  plus sinusoidal positions, written out as a position table (rows ``pad + 1 ...``, the positions
  nmt uses), and the decoder's separate output projection without bias.

:data:`DECODER_NAMES`, :data:`BERT_ENCODER_NAMES` and :data:`BASELINE_ENCODER_NAMES` are the one
name table, nmt state-dict name -> CTranslate2 variable name, with ``{}`` for the layer number; a
checkpoint tensor the table does not name, or a table row the checkpoint lacks, is an error, never
a silently dropped weight. Next to CTranslate2's files the directory holds :data:`PIPELINES_FILE`:
the checkpoint's source and target text pipelines, its default length penalty and its length
limits, which the engine (nmt/decode/ctranslate2_engine.py) rebuilds its text processing from.

One convention cannot be carried over exactly: CTranslate2 has one LayerNorm epsilon per model.
The BERT system's encoder uses BERT's (1e-12), and so, there, does its decoder (nmt: 1e-5); on the
demo's En-Vi models this moved scores by about 1e-5 and changed no translation (docs/serving.md).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from nmt.decode.length_penalty import DEFAULT_LENPEN
from nmt.errors import CheckpointError, ExportError
from nmt.model.decoder import sinusoidal_table
from nmt.model.seq2seq import ModelSpec
from nmt.text.vocab import Vocab
from nmt.weights.checkpoint import best_checkpoint_path, check_weights_fit, load_checkpoint

PIPELINES_FILE = "nmt_pipelines.json"      # nmt's half of the exported directory
FORMAT = "nmt-ctranslate2/1"
QUANTIZATIONS = ("float32", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "float16", "bfloat16")
INSTALL_HINT = "pip install -e .[ctranslate2]"

# nmt name -> CTranslate2 variable name; "{}": the layer
DECODER_NAMES = (
    ("decoder.embed_tokens.weight", "decoder/embeddings/weight"),
    ("decoder.layers.{}.self_attn.qkv.weight", "decoder/layer_{}/self_attention/linear_0/weight"),
    ("decoder.layers.{}.self_attn.qkv.bias", "decoder/layer_{}/self_attention/linear_0/bias"),
    ("decoder.layers.{}.self_attn.out.weight", "decoder/layer_{}/self_attention/linear_1/weight"),
    ("decoder.layers.{}.self_attn.out.bias", "decoder/layer_{}/self_attention/linear_1/bias"),
    ("decoder.layers.{}.self_attn_norm.weight", "decoder/layer_{}/self_attention/layer_norm/gamma"),
    ("decoder.layers.{}.self_attn_norm.bias", "decoder/layer_{}/self_attention/layer_norm/beta"),
    ("decoder.layers.{}.cross_attn.q.weight", "decoder/layer_{}/attention/linear_0/weight"),
    ("decoder.layers.{}.cross_attn.q.bias", "decoder/layer_{}/attention/linear_0/bias"),
    ("decoder.layers.{}.cross_attn.kv.weight", "decoder/layer_{}/attention/linear_1/weight"),   # keys, then values
    ("decoder.layers.{}.cross_attn.kv.bias", "decoder/layer_{}/attention/linear_1/bias"),
    ("decoder.layers.{}.cross_attn.out.weight", "decoder/layer_{}/attention/linear_2/weight"),
    ("decoder.layers.{}.cross_attn.out.bias", "decoder/layer_{}/attention/linear_2/bias"),
    ("decoder.layers.{}.cross_attn_norm.weight", "decoder/layer_{}/attention/layer_norm/gamma"),
    ("decoder.layers.{}.cross_attn_norm.bias", "decoder/layer_{}/attention/layer_norm/beta"),
    ("decoder.layers.{}.ffn.fc1.weight", "decoder/layer_{}/ffn/linear_0/weight"),
    ("decoder.layers.{}.ffn.fc1.bias", "decoder/layer_{}/ffn/linear_0/bias"),
    ("decoder.layers.{}.ffn.fc2.weight", "decoder/layer_{}/ffn/linear_1/weight"),
    ("decoder.layers.{}.ffn.fc2.bias", "decoder/layer_{}/ffn/linear_1/bias"),
    ("decoder.layers.{}.ffn_norm.weight", "decoder/layer_{}/ffn/layer_norm/gamma"),
    ("decoder.layers.{}.ffn_norm.bias", "decoder/layer_{}/ffn/layer_norm/beta"),
    ("decoder.output_projection.weight", "decoder/projection/weight"),
)
BERT_ENCODER_NAMES = (
    ("encoder.embeddings.word.weight", "encoder/embeddings_0/weight"),
    ("encoder.embeddings.position.weight", "encoder/position_encodings/encodings"),   # + token_type row 0
    ("encoder.embeddings.token_type.weight", None),                                    # folded into the above
    ("encoder.embeddings.norm.weight", "encoder/layernorm_embedding/gamma"),
    ("encoder.embeddings.norm.bias", "encoder/layernorm_embedding/beta"),
    ("encoder.layers.{}.attn.qkv.weight", "encoder/layer_{}/self_attention/linear_0/weight"),
    ("encoder.layers.{}.attn.qkv.bias", "encoder/layer_{}/self_attention/linear_0/bias"),
    ("encoder.layers.{}.attn.out.weight", "encoder/layer_{}/self_attention/linear_1/weight"),
    ("encoder.layers.{}.attn.out.bias", "encoder/layer_{}/self_attention/linear_1/bias"),
    ("encoder.layers.{}.attn_norm.weight", "encoder/layer_{}/self_attention/layer_norm/gamma"),
    ("encoder.layers.{}.attn_norm.bias", "encoder/layer_{}/self_attention/layer_norm/beta"),
    ("encoder.layers.{}.ffn.up.weight", "encoder/layer_{}/ffn/linear_0/weight"),
    ("encoder.layers.{}.ffn.up.bias", "encoder/layer_{}/ffn/linear_0/bias"),
    ("encoder.layers.{}.ffn.down.weight", "encoder/layer_{}/ffn/linear_1/weight"),
    ("encoder.layers.{}.ffn.down.bias", "encoder/layer_{}/ffn/linear_1/bias"),
    ("encoder.layers.{}.ffn_norm.weight", "encoder/layer_{}/ffn/layer_norm/gamma"),
    ("encoder.layers.{}.ffn_norm.bias", "encoder/layer_{}/ffn/layer_norm/beta"),
)
BASELINE_ENCODER_NAMES = (
    ("encoder.embed_tokens.weight", "encoder/embeddings_0/weight"),
    ("encoder.layers.{}.self_attn.qkv.weight", "encoder/layer_{}/self_attention/linear_0/weight"),
    ("encoder.layers.{}.self_attn.qkv.bias", "encoder/layer_{}/self_attention/linear_0/bias"),
    ("encoder.layers.{}.self_attn.out.weight", "encoder/layer_{}/self_attention/linear_1/weight"),
    ("encoder.layers.{}.self_attn.out.bias", "encoder/layer_{}/self_attention/linear_1/bias"),
    ("encoder.layers.{}.self_attn_norm.weight", "encoder/layer_{}/self_attention/layer_norm/gamma"),
    ("encoder.layers.{}.self_attn_norm.bias", "encoder/layer_{}/self_attention/layer_norm/beta"),
    ("encoder.layers.{}.ffn.fc1.weight", "encoder/layer_{}/ffn/linear_0/weight"),
    ("encoder.layers.{}.ffn.fc1.bias", "encoder/layer_{}/ffn/linear_0/bias"),
    ("encoder.layers.{}.ffn.fc2.weight", "encoder/layer_{}/ffn/linear_1/weight"),
    ("encoder.layers.{}.ffn.fc2.bias", "encoder/layer_{}/ffn/linear_1/bias"),
    ("encoder.layers.{}.ffn_norm.weight", "encoder/layer_{}/ffn/layer_norm/gamma"),
    ("encoder.layers.{}.ffn_norm.bias", "encoder/layer_{}/ffn/layer_norm/beta"),
)


def import_ctranslate2(error: type[Exception] = ExportError):
    """The ctranslate2 module, or ``error`` telling how to install it (an optional dependency)."""
    try:
        import ctranslate2
    except ImportError:
        raise error(f"the CTranslate2 engine needs the ctranslate2 package, which is not installed: "
                    f"{INSTALL_HINT}") from None
    return ctranslate2


def layer_counts(spec: ModelSpec) -> tuple[int, int]:
    """(encoder layers, decoder layers) of an nmt model spec."""
    encoder = spec.bert_config["num_hidden_layers"] if spec.arch == "bert" else spec.encoder["num_layers"]
    return int(encoder), int(spec.decoder["num_layers"])


def name_table(spec: ModelSpec) -> dict[str, str | None]:
    """nmt name -> CTranslate2 name for every tensor of this spec's network, layers expanded.

    >>> spec = ModelSpec.transformer("transformer-small", 40, 30, num_layers=1)
    >>> table = name_table(spec)
    >>> table["encoder.layers.0.self_attn.qkv.weight"], len(table)
    ('encoder/layer_0/self_attention/linear_0/weight', 35)
    """
    encoder_layers, decoder_layers = layer_counts(spec)
    table: dict[str, str | None] = {}
    encoder = BERT_ENCODER_NAMES if spec.arch == "bert" else BASELINE_ENCODER_NAMES
    for rows, layers in ((encoder, encoder_layers), (DECODER_NAMES, decoder_layers)):
        for ours, theirs in rows:
            for i in range(layers) if "{}" in ours else (None,):
                table[ours.format(i)] = theirs.format(i) if theirs and i is not None else theirs
    return table


def ctranslate2_variables(state: dict, spec: ModelSpec, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """CTranslate2 variable name -> float32 tensor, from an nmt state dict (``source`` names it in
    errors). A tensor the table does not know, or one it expects and ``state`` lacks, is an
    ExportError. The position tables are added: BERT's with token type 0 folded in, the
    sinusoidal ones as nmt computes them."""
    table = name_table(spec)
    unknown = sorted(set(state) - set(table))
    missing = sorted(set(table) - set(state))
    if unknown or missing:
        raise ExportError(f"{source}: cannot be exported to CTranslate2: tensors the export does not know "
                          f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}, tensors it needs and the checkpoint "
                          f"lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    out = {theirs: state[ours].detach().to("cpu", torch.float32) for ours, theirs in table.items() if theirs}
    if spec.arch == "bert":
        token_type = state["encoder.embeddings.token_type.weight"].detach().to("cpu", torch.float32)
        out["encoder/position_encodings/encodings"] = out["encoder/position_encodings/encodings"] + token_type[0]
    else:
        out["encoder/position_encodings/encodings"] = _sinusoids(int(spec.encoder["max_positions"]),
                                                                 int(spec.encoder["embed_dim"]), spec.src_pad_id)
    out["decoder/position_encodings/encodings"] = _sinusoids(int(spec.decoder["max_positions"]),
                                                             int(spec.decoder["embed_dim"]), Vocab.PAD)
    return out


def _sinusoids(positions: int, dim: int, pad_id: int) -> torch.Tensor:
    """The rows nmt adds at sequence positions 0, 1, ...: fairseq's table from row pad_id + 1."""
    return sinusoidal_table(positions, dim, pad_id)[pad_id + 1:pad_id + 1 + positions].contiguous()


def build_spec(spec: ModelSpec, variables: dict[str, torch.Tensor]):
    """The ctranslate2.specs.TransformerSpec of an nmt network, its variables set from ``variables``."""
    ctranslate2 = import_ctranslate2()
    specs = ctranslate2.specs
    encoder_layers, decoder_layers = layer_counts(spec)
    bert = spec.arch == "bert"
    heads = int(spec.bert_config["num_attention_heads"] if bert else spec.encoder["num_heads"])
    encoder = specs.TransformerEncoderSpec(encoder_layers, heads, pre_norm=False, layernorm_embedding=bert,
                                           activation=specs.Activation.GELU if bert else specs.Activation.RELU)
    encoder.scale_embeddings = not bert                    # BERT adds its embeddings unscaled
    decoder = specs.TransformerDecoderSpec(decoder_layers, int(spec.decoder["num_heads"]), pre_norm=False,
                                           activation=specs.Activation.RELU)
    model = specs.TransformerSpec(encoder, decoder)
    # one epsilon for the whole model: BERT's where there is a BERT (module docstring), else torch's
    model.config.layer_norm_epsilon = float(spec.bert_config["layer_norm_eps"]) if bert else 1e-5
    for name, tensor in variables.items():
        _set_variable(model, name, tensor.numpy())
    return model


def _set_variable(model, name: str, value) -> None:
    """Set the CTranslate2 variable ``name`` ("decoder/layer_0/attention/linear_1/weight"): its parts
    are attributes of the spec objects, "x_N" the N-th of a list attribute x."""
    path = name.split("/")
    node = model
    for part in path[:-1]:
        if hasattr(node, part):
            node = getattr(node, part)
            continue
        match = re.fullmatch(r"(.+)_(\d+)", part)
        items = getattr(node, match.group(1), None) if match else None
        if not isinstance(items, list) or int(match.group(2)) >= len(items):
            raise ExportError(f"CTranslate2 variable {name}: the spec has no {part!r} (a name table row that "
                              f"this ctranslate2 version does not have)")
        node = items[int(match.group(2))]
    if not hasattr(node, path[-1]):
        raise ExportError(f"CTranslate2 variable {name}: the spec has no {path[-1]!r}")
    setattr(node, path[-1], value)


def unique_tokens(tokens: list[str]) -> tuple[list[str], dict[int, str]]:
    """CTranslate2 looks tokens up by string, so each id needs a token of its own: a repeated token
    (possible in a BERT vocabulary) is renamed. Returns the tokens and {id: new name}.

    >>> unique_tokens(["a", "b", "a"])
    (['a', 'b', 'a<dup2>'], {2: 'a<dup2>'})
    """
    seen, out, renamed = set(tokens), [], {}
    firsts: set[str] = set()
    for i, token in enumerate(tokens):
        if token in firsts:
            new = f"{token}<dup{i}>"
            while new in seen:
                new += "_"
            seen.add(new)
            renamed[i] = token = new
        firsts.add(token)
        out.append(token)
    return out, renamed


def export_ctranslate2(checkpoint: str | Path, output: str | Path, *, quantization: str | None = None,
                       bert: str | Path | None = None, force: bool = False) -> dict:
    """Write ``checkpoint`` (a file, or a run directory: its best model) as a CTranslate2 model
    directory ``output``: model.bin, the vocabularies, config.json and :data:`PIPELINES_FILE`.
    ``quantization``: the weights' type on disk (CTranslate2's names; None: float32). ``bert``: a
    stage-1 checkpoint's BERT, when not where it records. The directory appears whole or not at all;
    an existing one is replaced only with ``force``. Returns what :data:`PIPELINES_FILE` holds."""
    ctranslate2 = import_ctranslate2()
    output = Path(output)
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ExportError(f"--quantization {quantization}: expected one of {', '.join(QUANTIZATIONS)}")
    if output.exists() and not force:
        raise ExportError(f"{output}: already exists; choose another --output or pass --force to replace it")
    path = Path(checkpoint)
    path = best_checkpoint_path(path) if path.is_dir() else path
    ckpt = load_checkpoint(path, bert=bert)
    spec = ModelSpec.from_dict(ckpt["model_spec"], what=f"{path}: model_spec")
    check_weights_fit(ckpt["model"], spec, path)
    from nmt.text.pipeline import SourcePipeline, TargetPipeline
    source = SourcePipeline.from_dict(ckpt["source"], what=f"{path}: source")
    target = TargetPipeline.from_dict(ckpt["target"], what=f"{path}: target")
    if len(source.vocab_tokens) != spec.src_vocab_size or len(target.vocab) != spec.tgt_vocab_size:
        raise CheckpointError(f"{path}: vocabulary sizes (source {len(source.vocab_tokens)}, target "
                              f"{len(target.vocab)}) do not match the model ({spec.src_vocab_size}, "
                              f"{spec.tgt_vocab_size}); a damaged checkpoint, use another one")
    lenpen = ckpt.get("decoding", {}).get("lenpen", DEFAULT_LENPEN)
    if not isinstance(lenpen, (int, float)) or isinstance(lenpen, bool):
        raise CheckpointError(f"{path}: decoding.lenpen is {lenpen!r}, not a number (a damaged checkpoint?)")
    model = build_spec(spec, ctranslate2_variables(ckpt["model"], spec, str(path)))
    source_tokens, renamed = unique_tokens(source.vocab_tokens)
    model.register_source_vocabulary(source_tokens)
    model.register_target_vocabulary(list(target.vocab.symbols))   # <pad> <s> </s> <unk>: CTranslate2's own names
    encoder_positions = (spec.bert_config["max_position_embeddings"] if spec.arch == "bert"
                         else spec.encoder["max_positions"])
    info = {"format": FORMAT, "checkpoint": str(path), "arch": spec.arch, "source": ckpt["source"],
            "target": ckpt["target"], "lenpen": float(lenpen),
            "source_renamed": {str(i): t for i, t in renamed.items()},
            "max_source_len": min(int(source.max_positions), int(encoder_positions)),
            "max_target_positions": int(spec.decoder["max_positions"]),
            "quantization": quantization or "float32"}
    _write_directory(ctranslate2, model, output, info, quantization, force)
    return info


def _write_directory(ctranslate2, model, output: Path, info: dict, quantization: str | None, force: bool) -> None:
    """CTranslate2's converter into a temporary directory next to ``output``, then renamed."""
    class Converter(ctranslate2.converters.Converter):
        def _load(self):
            return model

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp.{os.getpid()}")
    old = output.with_name(f".{output.name}.old.{os.getpid()}")
    try:
        try:
            Converter().convert(str(tmp), quantization=quantization, force=True)
        except (ValueError, NotImplementedError) as e:
            raise ExportError(f"{info['checkpoint']}: CTranslate2 refused the model ({e})") from None
        (tmp / PIPELINES_FILE).write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
        if output.exists():
            if not force:
                raise ExportError(f"{output}: appeared while exporting; pass --force to replace it")
            os.replace(output, old)
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def read_pipelines_file(directory: str | Path, error: type[Exception] = ExportError) -> dict:
    """:data:`PIPELINES_FILE` of an exported directory, checked; ``error`` names the directory and
    the command that writes one."""
    directory = Path(directory)
    hint = "export one with python tools/export_ctranslate2.py --checkpoint CHECKPOINT --output DIR"
    path = directory / PIPELINES_FILE
    if not directory.is_dir() or not (directory / "model.bin").is_file() or not path.is_file():
        raise error(f"{directory}: not a CTranslate2 model directory exported by nmt (no model.bin and "
                    f"{PIPELINES_FILE}); {hint}")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e}); {hint}") from None
    needed = ("source", "target", "lenpen", "max_source_len", "max_target_positions", "source_renamed")
    if not isinstance(info, dict) or info.get("format") != FORMAT or any(k not in info for k in needed):
        raise error(f"{path}: not an {FORMAT} file (written by another version of nmt?); {hint}")
    return info
