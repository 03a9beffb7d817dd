"""tools/average_checkpoints.py (nmt.weights.checkpoint.average_checkpoints) on the checkpoints of a
real tiny run kept by --keep-last-epochs: the mean computed here independently, the newest input's
spec and pipelines kept, the result translates, other runs' checkpoints refused."""
import pytest
import torch

from nmt.decode.translator import Translator
from nmt.weights.checkpoint import load_checkpoint, save_checkpoint
from tests.test_trainer import make_cfg, quiet, work  # noqa: F401  (work: the module-scoped fixture)
from tools.average_checkpoints import main as average_main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def epochs(work, tmp_path_factory):  # noqa: F811
    from nmt.train.trainer import setup
    run = tmp_path_factory.mktemp("average")
    setup(make_cfg(work, run, stage="decoder", max_epochs=4, keep_last_epochs=3), print_fn=quiet).fit()
    stage = run / "decoder"
    return stage, [stage / f"checkpoint_epoch{k}.pt" for k in (2, 3, 4)]


def test_average_of_the_last_epochs(epochs, tmp_path, capsys):
    stage, paths = epochs
    out = tmp_path / "avg.pt"
    assert average_main(["--num-epoch-checkpoints", "3", str(stage), "--output", str(out)]) == 0
    assert "averaged 3 checkpoints (checkpoint_epoch2.pt, checkpoint_epoch3.pt, checkpoint_epoch4.pt)" in \
        capsys.readouterr().out
    avg, inputs = load_checkpoint(out), [load_checkpoint(p) for p in paths]
    for name, tensor in avg["model"].items():
        expected = sum(s["model"][name].double() for s in inputs) / 3
        torch.testing.assert_close(tensor.double(), expected, rtol=0, atol=1e-6, msg=name)
    moved = [n for n in avg["model"] if not torch.equal(inputs[0]["model"][n], inputs[2]["model"][n])]
    assert moved, "the epochs' decoders differ, so the mean is not one of them"
    for key in ("model_spec", "source", "target", "config", "step", "epoch"):
        assert avg[key] == inputs[2][key], key                       # the newest input's
    assert "optimizer" not in avg and avg["averaged_from"] == [str(p) for p in paths]
    same = tmp_path / "same.pt"                                       # --inputs: the same file
    assert average_main(["--inputs", *map(str, paths), "--output", str(same)]) == 0
    assert all(torch.equal(load_checkpoint(same)["model"][n], t) for n, t in avg["model"].items())
    result = Translator.from_checkpoint(out).translate(["Click OK."], beam=2)[0]
    assert isinstance(result.text, str) and result.score <= 0


def test_checkpoints_of_another_network_or_vocabulary_are_refused(epochs, tmp_path, capsys):
    _, paths = epochs
    for key, change in (("target", lambda t: {**t, "mode": "raw" if t.get("mode") != "raw" else "tokenized"}),
                        ("model_spec", lambda s: {**s, "tgt_vocab_size": s["tgt_vocab_size"] + 1})):
        other = load_checkpoint(paths[0])
        other[key] = change(other[key])
        foreign = tmp_path / f"other-{key}.pt"
        save_checkpoint(foreign, other)
        assert average_main(["--inputs", str(foreign), str(paths[1]), "--output", str(tmp_path / "x.pt")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and f"its {key} differs" in err and err.count("\n") == 1
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("argv, message", [
    (["--inputs", "{p0}", "--output", "{out}"], "at least 2 checkpoints"),
    (["--inputs", "{p0}", "{missing}", "--output", "{out}"], "checkpoint not found"),
    (["--inputs", "{p0}", "{p1}", "--output", "{p1}"], "is one of the inputs"),
    (["--num-epoch-checkpoints", "5", "{stage}", "--output", "{out}"], "3 epoch checkpoints"),
    (["--num-epoch-checkpoints", "x", "{stage}", "--output", "{out}"], "a whole number >= 2"),
])
def test_bad_input_is_one_error_line(epochs, tmp_path, capsys, argv, message):
    stage, paths = epochs
    names = {"p0": paths[0], "p1": paths[1], "missing": tmp_path / "nope.pt", "out": tmp_path / "o.pt", "stage": stage}
    assert average_main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
