"""Nothing silent: malformed files and a full disk are one ``error:`` line, never a traceback or a crash.

- the disk encoder cache reserves its space before it is memory-mapped (a full disk used to be a
  SIGBUS, "Bus error", while the cache was written);
- every tensor shape read from a safetensors file, a TF checkpoint or a native file is checked
  before a tensor is made or fused (negative dimensions, shapes that do not fit the config);
- a model spec (a checkpoint's, a BERT config) is checked before anything is allocated;
- meta.json of a prepared data directory is checked field by field.

Each through the library and through its entry point (``main()`` in-process: exit 2, one line).
"""
import errno
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train as train_cli
import translate as translate_cli
from tests.conftest import mount_tmpfs
from nmt.data.binarized import ParallelData, read_meta
from nmt.errors import CheckpointError, DataError, ModelSpecError, TrainingError
from nmt.model.bert import BertConfig, BertEncoder
from nmt.model.decoder import DecoderConfig
from nmt.model.seq2seq import ModelSpec
from nmt.train import encoder_cache
from nmt.weights.bert_names import HF_TO_NATIVE, TF_TO_NATIVE
from nmt.weights.checkpoint import model_from_checkpoint
from nmt.weights.crc32c import crc32c, mask_crc
from nmt.weights.pretrained import NativeBert, load_bert, read_bert_dir, save_native
from nmt.weights.safetensors_io import load_safetensors, save_safetensors
from nmt.weights.tf_checkpoint import TABLE_MAGIC, read_tf_checkpoint
from tests.test_trainer import work  # noqa: F401  (the module-scoped fixture: tiny real data)
from tests.test_translate import make_checkpoint
from tools import convert_bert_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


def one_error_line(err: str, *needles: str) -> str:
    """The single ``error:`` line of an entry point's stderr, which must name every needle."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- the disk encoder cache

def allocated_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_the_disk_cache_is_reserved_before_it_is_mapped(tmp_path):
    path = tmp_path / "encoder_cache.float16.npy"
    values = encoder_cache.create_cache_file(path, np.float16, (3000, 64))
    nbytes = 3000 * 64 * 2
    assert values.shape == (3000, 64) and values.dtype == np.float16
    assert allocated_bytes(path) >= nbytes            # allocated on the disk, not a sparse file
    values[:] = 1.5
    values.flush()
    del values
    assert (np.load(path) == 1.5).all()                 # a normal .npy file


def test_without_fallocate_the_reservation_writes_zeros(tmp_path, monkeypatch):
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    monkeypatch.setattr(encoder_cache.os, "posix_fallocate", unsupported)
    path = tmp_path / "cache.npy"
    values = encoder_cache.create_cache_file(path, np.float32, (1000, 32))
    assert allocated_bytes(path) >= 1000 * 32 * 4 and float(np.abs(values).sum()) == 0.0


def full_disk(fd, offset, length):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_is_a_training_error_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(encoder_cache, "reserve_space", full_disk)
    path = tmp_path / "run" / "encoder_cache.float16.npy"
    with pytest.raises(TrainingError) as info:
        encoder_cache.create_cache_file(path, np.float16, (1000, 64))
    message = str(info.value)
    assert message.startswith(f"{path}: no room for the encoder cache (No space left on device)")
    assert "needs 128,000 bytes" in message and "bytes (" in message and "free" in message
    assert "--encoder-cache memory" in message and "--encoder-cache off" in message
    assert not path.exists()                          # nothing left behind


def test_a_real_full_disk_is_an_error_not_a_bus_error(tmp_path):
    """A 1 MiB tmpfs and a 4 MiB cache: before the reservation, writing the mapped pages past the
    first MiB killed the process with SIGBUS. In a child process, so a regression cannot take pytest down."""
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here (not root?); the injected full disk covers the error path")
    try:
        code = ("import numpy as np, sys; from pathlib import Path\n"
                "from nmt.train.encoder_cache import create_cache_file; from nmt.errors import TrainingError\n"
                f"try:\n    v = create_cache_file(Path({str(disk / 'c.npy')!r}), np.float32, (1024, 1024)); v[:] = 1\n"
                "except TrainingError as e:\n    print(e); sys.exit(2)\n")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
        assert "no room for the encoder cache" in result.stdout and "needs 4,194,304 bytes" in result.stdout
        assert not (disk / "c.npy").exists()
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_train_with_a_full_disk_for_the_cache_is_one_error_line(work, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setattr(encoder_cache, "reserve_space", full_disk)
    run = tmp_path / "run"
    code = train_cli.main(["--data", str(work["data"]), "--bert", str(work["bert"]), "--run-dir", str(run),
                           "--decoder-layers", "1", "--max-steps", "1", "--no-progress", "--device", "cpu",
                           "--encoder-cache", "disk"])
    assert code == 2
    one_error_line(capsys.readouterr().err, "encoder_cache.float16.npy: no room for the encoder cache",
                   "--encoder-cache memory")
    assert not list(run.rglob("encoder_cache*"))


# ----------------------------------------------------------------------------- tiny BERT files

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "the", "a", "cat", "dog", "sat", "on", "mat", "##s"]
TINY = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32)
KEY = "bert/encoder/layer_1/attention/self/key/kernel"
WORDS = "bert/embeddings/word_embeddings"


@pytest.fixture(scope="module")
def tiny_state() -> dict:
    torch.manual_seed(0)
    return BertEncoder(TINY).state_dict()


def checkpoint_tensors(state: dict, table: dict) -> dict[str, torch.Tensor]:
    """A native state dict under the names (and orientation) of a TF or HF checkpoint."""
    out = {}
    pieces = {}
    for native, _, _ in table.values():
        pieces[native] = pieces.get(native, 0) + 1
    for name, (native, part, transpose) in table.items():
        for layer in range(TINY.num_hidden_layers) if "{}" in name else [None]:
            key = native if layer is None else native.format(layer)
            if key not in state:
                continue                                          # the pooler: not in this encoder
            tensor = state[key].chunk(pieces[native], dim=0)[part]
            out[name if layer is None else name.format(layer)] = tensor.t().contiguous() if transpose else tensor
    return out


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1                                            # int64: a negative size is 10 bytes
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n >> 7 else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, value) -> bytes:
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    return _varint(number << 3) + _varint(value)


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A LevelDB block (no prefix compression, one restart) with its trailer."""
    body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in entries)
    body += struct.pack("<II", 0, 1)
    return body + b"\0" + struct.pack("<I", mask_crc(crc32c(body + b"\0")))


def write_tf_checkpoint(prefix: Path, tensors: dict[str, torch.Tensor], shapes: dict | None = None) -> None:
    """A TF tensor bundle as TensorFlow lays it out (nmt/weights/tf_checkpoint.py's docstring); ``shapes``
    overrides the shape recorded for a tensor (a corrupt index)."""
    data, entries = bytearray(), []
    for name in sorted(tensors):
        raw = tensors[name].detach().float().contiguous().numpy().tobytes()
        shape = (shapes or {}).get(name, list(tensors[name].shape))
        dims = b"".join(_field(2, _field(1, d)) for d in shape)
        entry = (_field(1, 1) + _field(2, dims) + _field(4, len(data)) + _field(5, len(raw))
                 + _varint(6 << 3 | 5) + struct.pack("<I", mask_crc(crc32c(raw))))
        entries.append((name.encode(), entry))
        data += raw
    data_block = _block([(b"", _field(1, 1))] + entries)
    index_block = _block([(entries[-1][0], _varint(0) + _varint(len(data_block) - 5))])
    meta_block = _block([])
    footer = (_varint(len(data_block) + len(index_block)) + _varint(len(meta_block) - 5)
              + _varint(len(data_block)) + _varint(len(index_block) - 5)).ljust(40, b"\0")
    Path(f"{prefix}.index").write_bytes(data_block + index_block + meta_block + footer + struct.pack("<Q", TABLE_MAGIC))
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))


def tf_dir(directory: Path, state: dict, shapes: dict | None = None, replace: dict | None = None) -> Path:
    directory.mkdir()
    (directory / "bert_config.json").write_text(json.dumps(TINY.to_dict()))
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    write_tf_checkpoint(directory / "bert_model.ckpt", {**checkpoint_tensors(state, TF_TO_NATIVE), **(replace or {})},
                        shapes)
    return directory


def hf_dir(directory: Path, state: dict, replace: dict | None = None) -> Path:
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(TINY.to_dict()))
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    save_safetensors({**checkpoint_tensors(state, HF_TO_NATIVE), **(replace or {})}, directory / "model.safetensors")
    return directory


def rewrite_header(path: Path, change) -> None:
    """Apply ``change`` to a safetensors file's JSON header, keeping its byte buffer."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    change(header)
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + n:])


def test_tiny_tf_and_hf_directories_read_back_exactly(tiny_state, tmp_path):
    """The writers above are faithful: the malformed files below differ from good ones in one thing."""
    for directory in (tf_dir(tmp_path / "tf-uncased", tiny_state), hf_dir(tmp_path / "hf-uncased", tiny_state)):
        state = read_bert_dir(directory).state_dict
        assert state.keys() == tiny_state.keys() and all(torch.equal(state[k], tiny_state[k]) for k in state)


# ----------------------------------------------------------------------------- malformed weights

def test_a_negative_dimension_in_a_tf_index_names_the_tensor(tiny_state, tmp_path):
    """[-V, -16] has the right element count: it used to reach reshape (invalid shape dimension -16)."""
    d = tf_dir(tmp_path / "tf-uncased", tiny_state, shapes={WORDS: [-len(VOCAB), -16]})
    with pytest.raises(CheckpointError, match=rf"bert_model.ckpt.index: entry '{WORDS}': tensor '{WORDS}' has "
                                              rf"shape \[-14, -16\]; every dimension must be from 0"):
        read_tf_checkpoint(d)


def test_a_tf_shape_that_does_not_hold_its_bytes_names_the_tensor(tiny_state, tmp_path):
    d = tf_dir(tmp_path / "tf-uncased", tiny_state, shapes={WORDS: [len(VOCAB), 15]})
    with pytest.raises(CheckpointError, match=rf"data-00000-of-00001: tensor '{WORDS}': 896 bytes do not hold "
                                              rf"shape \[14, 15\]"):
        read_tf_checkpoint(d)


def test_a_tf_piece_of_the_wrong_shape_is_named_before_the_pieces_are_fused(tiny_state, tmp_path):
    """A key kernel [16, 15]: torch.cat of query, key and value used to fail (Sizes of tensors must match)."""
    d = tf_dir(tmp_path / "tf-uncased", tiny_state, replace={KEY: torch.zeros(16, 15)})
    with pytest.raises(CheckpointError, match=rf"bert_model.ckpt.index: tensor '{KEY}' has shape \[16, 15\] but "
                                              rf"the config implies \[16, 16\] \(hidden_size=16, .*config and "
                                              rf"weights do not match"):
        read_bert_dir(d)


@pytest.mark.parametrize("change, message", [
    (lambda h: h["a"].update(shape=[-2, -3]), r"tensor 'a' has shape \[-2, -3\]; every dimension must be"),
    (lambda h: h["a"].update(shape=[0, 2 ** 62]), r"tensor 'a' has shape \[0, 4611686018427387904\]"),
    (lambda h: h["a"].update(shape=[2 ** 20, 2 ** 20]), r"tensor 'a' data_offsets \[0, 24\] do not match F32 "
                                                        r"\[1048576, 1048576\]"),
    (lambda h: h["a"].update(shape="23"), "tensor 'a' has a bad header entry"),
    (lambda h: h["a"].update(shape=[2.0, 3]), r"tensor 'a' has shape \[2.0, 3\]"),
    (lambda h: h["a"].update(data_offsets=[0, "24"]), r"data_offsets \[0, '24'\], not two integers"),
    (lambda h: h.update(__metadata__=["x"]), "__metadata__ must map names to strings"),
])
def test_malformed_safetensors_headers_name_the_file_and_tensor(tmp_path, change, message):
    path = tmp_path / "w.safetensors"
    save_safetensors({"a": torch.zeros(2, 3)}, path)
    rewrite_header(path, change)
    with pytest.raises(CheckpointError, match=rf"w.safetensors: .*{message}"):
        load_safetensors(path)


def test_an_hf_piece_of_the_wrong_shape_names_the_tensor(tiny_state, tmp_path):
    name = "encoder.layer.0.attention.self.value.weight"
    d = hf_dir(tmp_path / "hf-uncased", tiny_state, replace={name: torch.zeros(15, 16)})
    with pytest.raises(CheckpointError, match=rf"model.safetensors: tensor '{name}' has shape \[15, 16\] but the "
                                              rf"config implies \[16, 16\]"):
        read_bert_dir(d)


def test_a_native_bert_file_with_a_bad_tensor_or_entry(tiny_state, tmp_path):
    bad = {**tiny_state, "layers.0.ffn.up.weight": torch.zeros(31, 16)}
    path = tmp_path / "bad.pt"
    save_native(NativeBert(TINY, bad, VOCAB, True, "test"), path)
    with pytest.raises(CheckpointError, match=r"bad.pt: tensor 'layers.0.ffn.up.weight' has shape \[31, 16\] but "
                                              r"the config implies \[32, 16\]"):
        load_bert(path)
    d = NativeBert(TINY, tiny_state, VOCAB, True, "test").to_dict()
    for key, value, message in (("model", [1, 2], "'model' is list, not a dict"),
                                ("config", None, "'config' is NoneType, not a dict"),
                                ("config", {**TINY.to_dict(), "num_attention_heads": 7},
                                 "bad.pt: config: hidden_size 16 is not divisible by num_attention_heads 7")):
        torch.save({**d, key: value}, path)
        with pytest.raises(CheckpointError, match=message):
            load_bert(path)


def bad_bert_dirs(tiny_state, base: Path) -> list[tuple[Path, str]]:
    """(directory, what its error names): each malformed weight file once."""
    base.mkdir()
    negative = tf_dir(base / "neg-uncased", tiny_state, shapes={WORDS: [-len(VOCAB), -16]})
    key = tf_dir(base / "key-uncased", tiny_state, replace={KEY: torch.zeros(16, 15)})
    hf = hf_dir(base / "hf-uncased", tiny_state)
    rewrite_header(hf / "model.safetensors", lambda h: h["embeddings.LayerNorm.weight"].update(shape=[-1, -16]))
    heads = hf_dir(base / "heads-uncased", tiny_state)
    (heads / "config.json").write_text(json.dumps({**TINY.to_dict(), "num_attention_heads": 7}))
    return [(negative, f"tensor '{WORDS}' has shape [-14, -16]"), (key, f"tensor '{KEY}' has shape [16, 15]"),
            (hf, "tensor 'embeddings.LayerNorm.weight' has shape [-1, -16]"),
            (heads, "config.json: hidden_size 16 is not divisible by num_attention_heads 7")]


def test_converting_malformed_weights_is_one_error_line(tiny_state, tmp_path, capsys):
    for directory, needle in bad_bert_dirs(tiny_state, tmp_path / "bert"):
        out = tmp_path / f"{directory.name}.pt"
        assert convert_bert_checkpoint.main([str(directory), str(out)]) == 2
        one_error_line(capsys.readouterr().err, str(directory), needle)
        assert not out.exists()


def test_training_on_malformed_weights_is_one_error_line(work, tiny_state, tmp_path, capsys):  # noqa: F811
    for directory, needle in bad_bert_dirs(tiny_state, tmp_path / "bert"):
        code = train_cli.main(["--data", str(work["data"]), "--bert", str(directory), "--run-dir",
                               str(tmp_path / "run"), "--max-steps", "1", "--no-progress", "--device", "cpu"])
        assert code == 2
        one_error_line(capsys.readouterr().err, str(directory), needle)


# ----------------------------------------------------------------------------- model specs

@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> dict:
    return torch.load(make_checkpoint(tmp_path_factory.mktemp("spec") / "tiny.pt"), weights_only=True)


def _spec(ckpt: dict, **changes) -> dict:
    spec = json.loads(json.dumps(ckpt["model_spec"]))
    for key, value in changes.items():
        part, _, field = key.partition("__")
        if field:
            spec[part][field] = value
        else:
            spec[part] = value
    return {**ckpt, "model_spec": spec}


def spec_faults(ckpt: dict) -> list[tuple[dict, str]]:
    """(a damaged checkpoint, its error) for each way a model spec can be wrong."""
    vocab = len(ckpt["target"]["vocab"])
    up = "decoder.layers.0.ffn.fc1.weight"
    shape = list(ckpt["model"][up].shape)
    return [
        (_spec(ckpt, tgt_vocab_size=10 ** 10), "model_spec: tgt_vocab_size must be an integer from 4 to 16,777,216, "
                                               "got 10000000000"),
        (_spec(ckpt, tgt_vocab_size=vocab + 1), f"model_spec tgt_vocab_size is {vocab + 1} but its target vocabulary "
                                                f"has {vocab} entries"),
        (_spec(ckpt, decoder__num_heads=7), "model_spec: decoder: embed_dim 16 is not divisible by num_heads 7"),
        (_spec(ckpt, decoder__ffn_dim=-32), "model_spec: decoder: ffn_dim must be an integer from 1 to 65,536, "
                                            "got -32"),
        (_spec(ckpt, decoder__num_layers=10 ** 9), "model_spec: decoder: num_layers must be an integer from 1 to 256"),
        (_spec(ckpt, decoder__dropout=float("nan")), "model_spec: decoder: dropout must be a number in [0, 1)"),
        (_spec(ckpt, decoder="x"), "model_spec: decoder: expected a dict of decoder config fields, got str"),
        (_spec(ckpt, bert_config__num_hidden_layers=0), "model_spec: bert_config: num_hidden_layers must be a "
                                                        "positive integer, got 0"),
        (_spec(ckpt, bert_config__vocab_size=2 ** 30), "model_spec: bert_config: vocab_size 1,073,741,824 is above "
                                                       "the limit of 16,777,216"),
        (_spec(ckpt, src_pad_id=-1), "model_spec: src_pad_id must be an integer from 0 to"),
        ({**ckpt, "model": {**ckpt["model"], up: torch.zeros(shape[0] + 1, shape[1])}},
         f"tensor '{up}' has shape [{shape[0] + 1}, {shape[1]}] but the model_spec implies {shape}"),
    ]


def test_a_damaged_model_spec_is_refused_before_anything_is_built(good_checkpoint, monkeypatch):
    """Before anything is built, or built on the meta device only (shapes, no memory)."""
    import nmt.weights.checkpoint as checkpoint
    devices = []
    real = checkpoint.build_model
    monkeypatch.setattr(checkpoint, "build_model",
                        lambda spec: devices.append(torch.empty(0).device.type) or real(spec))
    for ckpt, message in spec_faults(good_checkpoint):
        devices.clear()
        with pytest.raises((ModelSpecError, CheckpointError)) as info:
            model_from_checkpoint(ckpt, "bad.pt")
        assert str(info.value).startswith("bad.pt: ") and message in str(info.value)
        assert set(devices) <= {"meta"}, message
    devices.clear()
    model, _ = model_from_checkpoint(good_checkpoint, "good.pt")
    assert devices == ["meta", "cpu"]
    assert model.decoder.config.num_heads == 2


def test_translating_with_a_damaged_model_spec_is_one_error_line(good_checkpoint, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("the cat sat .\n", encoding="utf-8")
    for n, (ckpt, message) in enumerate(spec_faults(good_checkpoint)):
        path = tmp_path / f"bad{n}.pt"
        torch.save(ckpt, path)
        assert translate_cli.main(["--quiet", "--checkpoint", str(path), "--input", str(src)]) == 2
        one_error_line(capsys.readouterr().err, str(path), message)


def test_configs_built_in_code_are_checked_too():
    with pytest.raises(ModelSpecError, match="embed_dim 16 is not divisible by num_heads 7"):
        DecoderConfig(embed_dim=16, num_heads=7, ffn_dim=32)
    with pytest.raises(ModelSpecError, match="decoder embed_dim 32 differs from the encoder embed_dim 16"):
        spec = ModelSpec.transformer("transformer-small", 30, 20, embed_dim=16, num_heads=2, ffn_dim=32)
        ModelSpec.from_dict({**spec.to_dict(), "decoder": {**spec.decoder, "embed_dim": 32}})
    with pytest.raises(ModelSpecError, match="src_vocab_size 99 differs from bert_config vocab_size 14"):
        spec = ModelSpec.bert(TINY, tgt_vocab_size=20, src_pad_id=0)
        ModelSpec.from_dict({**spec.to_dict(), "src_vocab_size": 99})


# ----------------------------------------------------------------------------- meta.json

def _set(path: tuple, value):
    def change(meta):
        *parents, last = path
        for key in parents:
            meta = meta[key]
        if value is KeyError:
            del meta[last]
        else:
            meta[last] = value
    return change


META_FAULTS = [
    (_set(("splits", "train", "pairs"), KeyError), "no field splits.train.pairs"),
    (_set(("splits", "train", "pairs"), "40"), "field splits.train.pairs is '40', expected a pair count"),
    (_set(("splits", "train", "pairs"), -1), "field splits.train.pairs is -1, expected a pair count"),
    (_set(("splits", "valid", "files", "valid.src.idx"), KeyError), "no field splits.valid.files.valid.src.idx"),
    (_set(("splits", "train", "files", "train.tgt.bin", "bytes"), None),
     "field splits.train.files.train.tgt.bin.bytes is None, expected a byte count"),
    (_set(("splits", "train", "files", "train.tgt.bin", "sha256"), 7),
     "field splits.train.files.train.tgt.bin.sha256 is 7, expected a sha256 hex string"),
    (_set(("splits", "train", "inputs"), ["train.en"]),
     "field splits.train.inputs is ['train.en'], expected an object"),
    (_set(("splits",), []), "field splits is [], expected an object of splits"),
    (_set(("splits",), KeyError), "no field splits"),
    (_set(("files", "source.json"), "x"), "field files.source.json is 'x', expected an object"),
    (_set(("source", "vocab_size"), "big"), "field source.vocab_size is 'big', expected a vocabulary size"),
    (_set(("target",), 5), "field target is 5, expected an object"),
    (_set(("target",), KeyError), "no field target.vocab_size"),        # found when training verifies the ids
]


@pytest.mark.parametrize("damage, message", META_FAULTS)
def test_a_malformed_meta_json_names_the_field(work, tmp_path, damage, message):  # noqa: F811
    data = Path(shutil.copytree(work["data"], tmp_path / "data"))
    meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
    damage(meta)
    (data / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_meta(data)
        ParallelData(data, "train", verify=True)
        ParallelData(data, "valid", verify=True)
    assert str(info.value).startswith(f"{data / 'meta.json'}: ") and message in str(info.value)
    assert "prepare the data again" in str(info.value)


def test_training_on_a_malformed_meta_json_is_one_error_line(work, tmp_path, capsys):  # noqa: F811
    for n, (damage, message) in enumerate(META_FAULTS):
        data = Path(shutil.copytree(work["data"], tmp_path / f"data{n}"))
        meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
        damage(meta)
        (data / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        code = train_cli.main(["--data", str(data), "--bert", str(work["bert"]), "--run-dir", str(tmp_path / "run"),
                               "--max-steps", "1", "--no-progress", "--device", "cpu"])
        assert code == 2
        one_error_line(capsys.readouterr().err, str(data / "meta.json"), message)
