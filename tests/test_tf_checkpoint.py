"""TF tensor-bundle reader: CRC32C, the real TF-written checkpoint in ../shared, corrupt copies."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SHARED_BERT_TF, require_path

from nmt.errors import CheckpointError
from nmt.model.bert import BertConfig
from nmt.weights.bert_names import TF_SKIP, TF_TO_NATIVE, map_to_native
from nmt.weights.pretrained import installed_package_dir, read_bert_dir
from nmt.weights.safetensors_io import load_safetensors
from nmt.weights.crc32c import crc32c, crc32c_bytewise, mask_crc
from nmt.weights.tf_checkpoint import read_bundle_index, read_tf_checkpoint

INDEX = "bert_model.ckpt.index"
DATA = "bert_model.ckpt.data-00000-of-00001"


# ---- CRC32C ----------------------------------------------------------------------------------

def test_crc32c_known_values():
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283                    # the standard check value
    assert crc32c(bytes(32)) == 0x8A9136AA                       # RFC 3720 B.4 test vectors
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E


@pytest.mark.parametrize("size", [1, 2047, 2048, 2049, 4096 * 8 + 3, 300_007, 2_000_000])
def test_crc32c_lanes_match_bytewise(size):
    data = os.urandom(size)
    assert crc32c(data) == crc32c_bytewise(data)


def test_mask_is_leveldb_rotation():
    assert mask_crc(0) == 0xA282EAD8
    assert mask_crc(1) == ((1 << 17) + 0xA282EAD8) & 0xFFFFFFFF


# ---- the real checkpoint ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tf_dir():
    return require_path(SHARED_BERT_TF)


@pytest.fixture(scope="module")
def tf_tensors(tf_dir):
    return read_tf_checkpoint(tf_dir)


@pytest.fixture(scope="module")
def reference():
    try:
        directory = installed_package_dir()
    except CheckpointError as error:
        pytest.skip(str(error))
    return load_safetensors(directory / "model.safetensors")[0]


def test_every_tensor_equals_the_package_weights(tf_tensors, reference):
    assert len(tf_tensors) == 110
    assert sorted(n for n in tf_tensors if n.startswith("cls/")) == [
        "cls/predictions/output_bias", "cls/predictions/transform/LayerNorm/beta",
        "cls/predictions/transform/LayerNorm/gamma", "cls/predictions/transform/dense/bias",
        "cls/predictions/transform/dense/kernel", "cls/seq_relationship/output_bias",
        "cls/seq_relationship/output_weights"]
    renames = [("bert/", ""), ("/", "."), ("layer_", "layer."), ("LayerNorm.gamma", "LayerNorm.weight"),
               ("LayerNorm.beta", "LayerNorm.bias"), ("_embeddings", "_embeddings.weight"),
               ("kernel", "weight")]
    compared = 0
    for name, tensor in tf_tensors.items():
        if name.startswith("cls/"):
            continue
        hf_name = name
        for old, new in renames:
            hf_name = hf_name.replace(old, new)
        expected = reference[hf_name]
        if name.endswith("kernel"):
            expected = expected.t()                       # TF kernels are [in, out]
        assert tensor.dtype == torch.float32 and torch.equal(tensor, expected), name
        compared += 1
    assert compared == len(reference) - 1  # every package weight except the position_ids buffer


def test_converted_tf_equals_converted_hf(tf_dir):
    try:
        hf = read_bert_dir(installed_package_dir())
    except CheckpointError as error:
        pytest.skip(str(error))
    tf = read_bert_dir(tf_dir)
    assert tf.config == hf.config and tf.vocab == hf.vocab and tf.do_lower_case
    assert tf.state_dict.keys() == hf.state_dict.keys()
    for name in tf.state_dict:
        assert torch.equal(tf.state_dict[name], hf.state_dict[name]), name


# ---- corrupt copies --------------------------------------------------------------------------

def _copy(tf_dir: Path, dest: Path, data: bool = True) -> Path:
    dest.mkdir()
    for name in ("bert_config.json", "vocab.txt", INDEX) + ((DATA,) if data else ()):
        shutil.copyfile(tf_dir / name, dest / name)
        os.chmod(dest / name, 0o644)
    return dest


def test_truncated_index(tf_dir, tmp_path):
    d = _copy(tf_dir, tmp_path / "ckpt", data=False)
    blob = (d / INDEX).read_bytes()
    (d / INDEX).write_bytes(blob[:len(blob) // 2])
    with pytest.raises(CheckpointError, match="bad magic number") as info:
        read_bundle_index(d)
    assert INDEX in str(info.value)
    (d / INDEX).write_bytes(blob[:20])
    with pytest.raises(CheckpointError, match="too short for a table footer"):
        read_bundle_index(d)


def test_wrong_magic(tf_dir, tmp_path):
    d = _copy(tf_dir, tmp_path / "ckpt", data=False)
    blob = bytearray((d / INDEX).read_bytes())
    blob[-1] ^= 0x01
    (d / INDEX).write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=f"{INDEX}: bad magic number"):
        read_bundle_index(d)


def test_flipped_byte_in_index_block(tf_dir, tmp_path):
    d = _copy(tf_dir, tmp_path / "ckpt", data=False)
    blob = bytearray((d / INDEX).read_bytes())
    blob[40] ^= 0x10  # inside the first data block (tensor names)
    (d / INDEX).write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="checksum mismatch in data block 0"):
        read_bundle_index(d)


def test_flipped_byte_in_data_shard(tf_dir, tmp_path):
    d = _copy(tf_dir, tmp_path / "ckpt")
    with open(d / DATA, "r+b") as f:      # byte 100 lies in the first tensor (embeddings LayerNorm beta)
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0x04]))
    with pytest.raises(CheckpointError, match="bert/embeddings/LayerNorm/beta'?: checksum mismatch") as info:
        read_tf_checkpoint(d)
    assert DATA in str(info.value)


def test_missing_shard(tf_dir, tmp_path):
    d = _copy(tf_dir, tmp_path / "ckpt", data=False)
    with pytest.raises(CheckpointError, match="data shard 0 of 1 is missing") as info:
        read_bert_dir(d)
    assert DATA in str(info.value)


def test_config_that_does_not_match_the_tensors(tf_dir, tf_tensors, tmp_path):
    d = _copy(tf_dir, tmp_path / "ckpt")
    config = json.loads((d / "bert_config.json").read_text())
    (d / "bert_config.json").write_text(json.dumps({**config, "hidden_size": 768}))
    with pytest.raises(CheckpointError, match="config and weights do not match") as info:
        read_bert_dir(d)
    assert INDEX in str(info.value) and "hidden_size=768" in str(info.value)
    source = str(d / INDEX)
    with pytest.raises(CheckpointError, match="layer 4 but the config has num_hidden_layers=4"):
        map_to_native(tf_tensors, TF_TO_NATIVE, TF_SKIP, BertConfig(30522, 384, 4, 12, 1536), source)
    with pytest.raises(CheckpointError, match="missing tensor.*layer_6"):
        map_to_native(tf_tensors, TF_TO_NATIVE, TF_SKIP, BertConfig(30522, 384, 7, 12, 1536), source)
    with pytest.raises(CheckpointError, match=r"layer_\d/intermediate/dense/(bias|kernel)' has shape \[(384, )?1536\] "
                                              r"but the config implies \[(384, )?3072\]"):
        map_to_native(tf_tensors, TF_TO_NATIVE, TF_SKIP, BertConfig(30522, 384, 6, 12, 3072), source)


def test_unknown_and_missing_tensor_names(tf_tensors):
    config = BertConfig(30522, 384, 6, 12, 1536)
    source = f"{SHARED_BERT_TF / INDEX}"
    extra = {**tf_tensors, "bert/encoder/layer_0/attention/self/rotary/kernel": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="unknown tensor 'bert/encoder/layer_0/attention/self/rotary/kernel'") as info:
        map_to_native(extra, TF_TO_NATIVE, TF_SKIP, config, source)
    assert source in str(info.value)
    fewer = {k: v for k, v in tf_tensors.items() if k != "bert/encoder/layer_3/attention/self/key/bias"}
    with pytest.raises(CheckpointError, match="missing tensor.*'bert/encoder/layer_3/attention/self/key/bias'"):
        map_to_native(fewer, TF_TO_NATIVE, TF_SKIP, config, source)
    # the skip list is explicit: optimizer slots and global_step are skipped, nothing else
    slots = {**tf_tensors, "global_step": torch.tensor(5),
             "bert/pooler/dense/kernel/adam_m": torch.zeros(1), "bert/pooler/dense/kernel/adam_v": torch.zeros(1)}
    assert map_to_native(slots, TF_TO_NATIVE, TF_SKIP, config, source).keys() == \
        map_to_native(tf_tensors, TF_TO_NATIVE, TF_SKIP, config, source).keys()


def test_tf_header_is_decoded(tf_dir):
    num_shards, entries = read_bundle_index(tf_dir)
    assert num_shards == 1 and len(entries) == 110
    word = entries["bert/embeddings/word_embeddings"]
    assert word.dtype == 1 and word.shape == (30522, 384) and word.size == 30522 * 384 * 4
    # entries tile the shard without gaps
    spans = sorted((e.offset, e.size) for e in entries.values())
    assert all(a + s == b for (a, s), (b, _) in zip(spans, spans[1:]))
    assert spans[-1][0] + spans[-1][1] == (tf_dir / DATA).stat().st_size
