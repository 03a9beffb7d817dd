"""BertEncoder: config validation, mask semantics, and parity with transformers.BertModel."""
import json
from pathlib import Path

import pytest
import torch

from nmt.errors import CheckpointError
from nmt.model.bert import BertConfig, BertEncoder, expected_shapes
from nmt.weights.pretrained import installed_package_dir, load_bert

TINY = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32)


def test_config_from_json_reads_google_and_hf_fields(tmp_path):
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps({**TINY, "hidden_act": "gelu", "initializer_range": 0.02, "model_type": "bert"}))
    config = BertConfig.from_json(path)
    assert config.hidden_size == 16 and config.layer_norm_eps == 1e-12 and config.max_position_embeddings == 512
    assert BertConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": 18}, "not divisible by num_attention_heads"),
    ({"hidden_act": "relu"}, "hidden_act 'relu' is not supported"),
    ({"hidden_size": 0}, "hidden_size must be a positive integer"),
    ({"vocab_size": None}, "vocab_size must be a positive integer"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
])
def test_bad_config_names_file_and_field(tmp_path, change, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**TINY, **change}))
    with pytest.raises(CheckpointError, match=message) as info:
        BertConfig.from_json(path)
    assert str(path) in str(info.value)


def test_config_missing_field_and_bad_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({k: v for k, v in TINY.items() if k != "intermediate_size"}))
    with pytest.raises(CheckpointError, match="lacks intermediate_size"):
        BertConfig.from_json(path)
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid JSON"):
        BertConfig.from_json(path)


def test_state_dict_names_match_documented_shapes():
    config = BertConfig(**TINY)
    for pooler in (False, True):
        model = BertEncoder(config, with_pooler=pooler)
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected_shapes(config, pooler)


def test_padding_does_not_change_real_positions_and_eval_is_deterministic():
    torch.manual_seed(0)
    encoder = BertEncoder(BertConfig(**TINY)).eval()
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    alone = encoder(ids, torch.ones_like(ids, dtype=torch.bool))                       # [1, 5, H]
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)              # [1, 8]
    out = encoder(padded, padded != 0)
    torch.testing.assert_close(out[:, :5], alone, rtol=0, atol=1e-6)
    # the padded keys are really masked: without the mask the real positions change
    assert (encoder(padded, torch.ones_like(padded, dtype=torch.bool))[:, :5] - alone).abs().max() > 1e-3
    torch.testing.assert_close(encoder(ids, ids != 0), alone, rtol=0, atol=0)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    encoder = BertEncoder(BertConfig(**TINY))
    ids = torch.randint(4, 40, (2, 6))
    mask = torch.ones_like(ids, dtype=torch.bool)
    encoder.train()
    assert not torch.equal(encoder(ids, mask), encoder(ids, mask))
    encoder.eval()
    assert torch.equal(encoder(ids, mask), encoder(ids, mask))


def test_token_types_and_bad_inputs():
    torch.manual_seed(0)
    encoder = BertEncoder(BertConfig(**TINY, max_position_embeddings=8)).eval()
    ids = torch.randint(4, 40, (1, 6))
    mask = torch.ones_like(ids, dtype=torch.bool)
    assert not torch.equal(encoder(ids, mask), encoder(ids, mask, torch.ones_like(ids)))
    with pytest.raises(ValueError, match="at most 8"):
        encoder(torch.randint(4, 40, (1, 9)), torch.ones(1, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool tensor"):
        encoder(ids, mask.long())


# ---- parity with transformers.BertModel on the real all-MiniLM-L6-v2 weights ------------------

def _iwslt_lines(directory: Path, count: int) -> list[str]:
    lines = (directory / "tst2012.en").read_text(encoding="utf-8").splitlines()
    # a spread of lengths: short, medium and long sentences
    picked = sorted((line for line in lines[:200] if line.strip()), key=len)
    step = max(1, len(picked) // count)
    return picked[::step][:count]


@pytest.fixture(scope="module")
def hf_model_dir():
    try:
        return installed_package_dir()
    except CheckpointError as error:
        pytest.skip(str(error))


def test_parity_with_transformers_bert_model(hf_model_dir, iwslt_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    encoder, tokenizer = load_bert(hf_model_dir)
    reference = transformers.BertModel.from_pretrained(str(hf_model_dir)).eval()
    texts = _iwslt_lines(iwslt_dir, 8)
    ids, mask = tokenizer.batch_encode(texts, max_length=128)                          # [B, S]
    assert mask.sum(1).min() < mask.shape[1] - 10  # really padded
    with torch.no_grad():
        ours = encoder(ids, mask)                                                         # [B, S, H]
        theirs = reference(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        pooled = reference(input_ids=ids, attention_mask=mask.long()).pooler_output
    error = (ours - theirs)[mask].abs().max().item()
    assert error <= 1e-5, f"max abs difference {error:.3g}"
    torch.testing.assert_close(encoder.pooled(ours), pooled, rtol=0, atol=1e-5)
    # padding does not change the real positions: each sentence alone vs inside the batch
    with torch.no_grad():
        for i in (0, len(texts) - 1):
            n = int(mask[i].sum())
            alone = encoder(ids[i:i + 1, :n], mask[i:i + 1, :n])
            torch.testing.assert_close(ours[i:i + 1, :n], alone, rtol=0, atol=1e-5)
    print(f"parity: max abs difference over real positions {error:.3g}")
