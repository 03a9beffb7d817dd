import pickle

import pytest
import torch

from nmt.errors import CheckpointError
from nmt.weights.checkpoint import (
    FORMAT,
    best_checkpoint_path,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), betas=(0.9, 0.99))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {"format": FORMAT, "model_spec": {"arch": "bert"}, "model": model.state_dict(),
            "source": {"vocab": ["a"]}, "target": {"vocab": ["b"]}, "optimizer": opt.state_dict(),
            "rng": rng_state(), "best_dev_loss": None, "step": 1}


def test_round_trip_loads_with_weights_only(tmp_path):
    path = tmp_path / "run" / "checkpoint_last.pt"
    state = _state()
    save_checkpoint(path, state)
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint_last.pt"]   # no temp file left
    raw = torch.load(path, weights_only=True)
    assert raw["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    back = load_checkpoint(path)
    torch.testing.assert_close(back["model"]["weight"], state["model"]["weight"])
    assert back["best_dev_loss"] is None


def test_rng_state_restores_dropout_stream():
    saved = rng_state()
    a = torch.rand(5)
    set_rng_state(saved)
    assert torch.equal(torch.rand(5), a)


def test_missing_truncated_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    good = tmp_path / "good.pt"
    save_checkpoint(good, _state())
    data = good.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt: truncated or corrupt"):
        load_checkpoint(bad)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt: truncated or corrupt"):
        load_checkpoint(garbage)
    wrong = tmp_path / "wrong_format.pt"
    save_checkpoint(wrong, {**_state(), "format": "other/9"})
    with pytest.raises(CheckpointError, match="format 'other/9'"):
        load_checkpoint(wrong)
    partial = tmp_path / "partial.pt"
    save_checkpoint(partial, {"format": FORMAT, "model": {}})
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(partial)


def test_code_in_a_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "x": Evil()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "checkpoint_last.pt"
    save_checkpoint(path, {"format": FORMAT, "step": 1, **{k: {} for k in ("model_spec", "model", "source", "target")}})
    with pytest.raises(Exception):
        save_checkpoint(path, {"format": FORMAT, "bad": lambda: 0})    # not picklable
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt"]


def test_best_checkpoint_prefers_finetune(tmp_path):
    with pytest.raises(CheckpointError, match="no trained model"):
        best_checkpoint_path(tmp_path)
    for stage in ("decoder", "finetune"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "checkpoint_best.pt").touch()
    assert best_checkpoint_path(tmp_path) == tmp_path / "finetune" / "checkpoint_best.pt"
