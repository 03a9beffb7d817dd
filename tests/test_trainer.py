"""Training on real (tiny) data: stages, encoder cache, resume, Ctrl-C, NaN and bad input."""
import dataclasses
import gzip
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import train as train_cli
from nmt.data.binarized import SplitWriter, collate
from nmt.errors import ConfigError, DivergedError, TrainingError
from nmt.text.wordpiece import default_vocab_path
from nmt.train.config import TrainConfig, compose_config
from nmt.train.trainer import setup
from nmt.weights.checkpoint import load_checkpoint
from tests.conftest import save_tiny_bert

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo" / "en-de"


def _short_pairs(split: str, n: int, max_words: int = 7) -> list[tuple[str, str]]:
    with gzip.open(DEMO / f"{split}.en.gz", "rt", encoding="utf-8") as fe, \
            gzip.open(DEMO / f"{split}.de.gz", "rt", encoding="utf-8") as fd:
        pairs = [(e.strip(), d.strip()) for e, d in zip(fe, fd)]
    return [p for p in pairs if len(p[0].split()) <= max_words and len(p[1].split()) <= max_words][:n]


def _write_split(directory: Path, name: str, pairs) -> None:
    (directory / f"{name}.en").write_text("".join(e + "\n" for e, _ in pairs), encoding="utf-8")
    (directory / f"{name}.de").write_text("".join(d + "\n" for _, d in pairs), encoding="utf-8")


def _prepare(out: Path, raw: Path, train_pairs, dev_pairs, bpe_merges=150) -> Path:
    from nmt.data.prepare import prepare
    raw.mkdir(parents=True, exist_ok=True)
    _write_split(raw, "train", train_pairs)
    if dev_pairs is not None:
        _write_split(raw, "dev", dev_pairs)
    prepare(out, train_prefix=raw / "train", valid_prefix=raw / "dev" if dev_pairs is not None else None,
            src="en", tgt="de", target_mode="tokenized", bert=default_vocab_path(), bpe_merges=bpe_merges,
            print_fn=lambda *_: None)
    return out


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py: tiny models run faster on one thread


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """A prepared data directory (40 real short En-De pairs, 12 dev) and a tiny random BERT (real vocab)."""
    base = tmp_path_factory.mktemp("trainer")
    bert = save_tiny_bert(base / "tiny_bert.pt", layers=2, positions=64)
    train_pairs, dev_pairs = _short_pairs("train", 40), _short_pairs("dev", 12)
    data = _prepare(base / "data", base / "raw", train_pairs, dev_pairs)
    return {"base": base, "bert": bert, "data": data, "train_pairs": train_pairs, "dev_pairs": dev_pairs}


def make_cfg(work, run_dir, **kw) -> TrainConfig:
    """Sentence batches: the tests below count batches (40 pairs / 8 = 5 per epoch)."""
    base = dict(data=str(work["data"]), bert=str(work["bert"]), run_dir=str(run_dir), decoder_layers=1,
                max_sentences=8, batching="sentences", lr=2e-3, warmup_steps=4, dropout=0.1, progress=False,
                device="cpu", encoder_cache="off")
    return dataclasses.replace(TrainConfig(), **{**base, **kw})


def quiet(*_):
    pass


def encoder_tensors(model) -> dict:
    return {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}


def test_tiny_model_overfits_real_pairs(work, tmp_path):
    """8 real sentence pairs in one batch: the NLL goes from chance to near zero."""
    cfg = make_cfg(work, tmp_path, stage="direct", label_smoothing=0.0, lr=3e-3, warmup_steps=50, dropout=0.0,
                   encoder_dropout=0.0)
    trainer = setup(cfg, print_fn=quiet)
    batch = collate(trainer.train_data, np.arange(8), trainer.src_pad_id)
    first = None
    for _ in range(150):
        loss_sum, nll_sum, _ = trainer.train_step([batch])
        trainer.step += 1
        first = first if first is not None else nll_sum / batch.num_tokens
    trainer.model.eval()
    with torch.no_grad():
        _, nll_sum = trainer.forward_loss(batch)
    assert first > 4.0
    assert nll_sum.item() / batch.num_tokens < 0.05          # per-token NLL in nats: memorised


def test_stage1_freezes_the_encoder_and_stage2_unfreezes_it(work, tmp_path):
    trainer = setup(make_cfg(work, tmp_path, stage="decoder", max_steps=3), print_fn=quiet)
    model = trainer.model
    before = encoder_tensors(model)
    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in model.decoder.parameters()}
    assert trainer.fit() == "max_steps"
    assert model.training and not model.encoder.training
    assert all(not m.training for m in model.encoder.modules())            # every dropout in it is off
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())
    assert any(p.grad is not None for p in model.decoder.parameters())
    after = encoder_tensors(model)
    assert all(torch.equal(before[k], after[k]) for k in before)           # bit-identical
    batch = collate(trainer.train_data, [0, 1, 2], trainer.src_pad_id)
    out1, out2 = model.encode(batch.src_ids, batch.src_mask), model.encode(batch.src_ids, batch.src_mask)
    assert torch.equal(out1, out2) and not out1.requires_grad

    # stage 2 from the stage-1 checkpoint: everything trains, dropout on both sides, new optimizer
    ft = setup(make_cfg(work, tmp_path, stage="finetune", init=str(tmp_path / "decoder" / "checkpoint_last.pt"),
                        encoder_dropout=0.1, max_steps=3), print_fn=quiet)
    ft_before = encoder_tensors(ft.model)
    assert all(torch.equal(ft_before[k], after[k]) for k in after)         # starts from stage 1's weights
    assert ft.peak_lr == 2e-3 and ft.optimizer.state == {}
    assert len(ft.optimizer.param_groups[0]["params"]) == len(list(ft.model.parameters()))
    ft.fit()
    assert ft.model.encoder.training
    changed = [k for k, v in encoder_tensors(ft.model).items() if not torch.equal(v, ft_before[k])]
    assert "embeddings.word.weight" in changed and len(changed) > 10


def test_cached_stage1_matches_uncached(work, tmp_path):
    losses = {}
    for mode in ("off", "memory"):
        trainer = setup(make_cfg(work, tmp_path / mode, stage="decoder", encoder_cache=mode, cache_dtype="float32",
                                 max_steps=4), print_fn=quiet)
        trainer.maybe_build_cache()
        assert (trainer.cache is not None) == (mode == "memory")
        seen = []
        step = trainer.train_step
        trainer.train_step = lambda group: seen.append(step(group)[0] / group[0].num_tokens) or (seen[-1], 0.0, 0.0)
        trainer.maybe_build_cache = lambda: None
        trainer.fit()
        losses[mode] = seen
    assert len(losses["off"]) == 4
    for a, b in zip(losses["off"], losses["memory"]):
        assert abs(a - b) < 1e-5
    # (parameters are not compared: Adam divides by sqrt(v), so 1e-7 gradient noise on near-zero
    # gradients moves a weight by up to lr; the losses over 4 updates are the contract)


def test_resume_continues_exactly(work, tmp_path):
    # 5 batches per epoch: 8 updates cross an epoch end (dev evaluation, checkpoints) in both runs
    n = 8
    straight = setup(make_cfg(work, tmp_path / "a", stage="direct", max_steps=n, encoder_dropout=0.1), print_fn=quiet)
    straight.fit()
    first = setup(make_cfg(work, tmp_path / "b", stage="direct", max_steps=n // 2 - 1, encoder_dropout=0.1),
                  print_fn=quiet)
    first.fit()
    del first
    torch.manual_seed(12345)                        # resuming must not depend on the global RNG state
    second = setup(make_cfg(work, tmp_path / "b", stage="direct", max_steps=n, encoder_dropout=0.1, resume=True),
                   print_fn=quiet)
    assert second.step == n // 2 - 1
    second.fit()
    assert second.step == straight.step == n and second.epoch == straight.epoch
    a, b = straight.model.state_dict(), second.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    ckpt = torch.load(tmp_path / "b" / "direct" / "checkpoint_last.pt", weights_only=True)
    assert ckpt["step"] == n and ckpt["batch_in_epoch"] == n - 5
    records = [json.loads(line) for line in (tmp_path / "a" / "direct" / "metrics.jsonl").read_text().splitlines()]
    epoch = next(r for r in records if r["event"] == "epoch")
    assert epoch["dev"]["ppl"] == pytest.approx(2.718281828 ** epoch["dev"]["nll"], rel=1e-6)


class HardKill(BaseException):
    """A kill no handler sees (SIGKILL, the out-of-memory killer): nothing is saved on the way out."""


def test_save_interval_updates_bounds_what_a_hard_kill_costs(work, tmp_path):
    """--save-interval-updates 3: a run killed hard after update 8 (epoch 2, 5 updates an epoch) left
    checkpoint_last.pt at update 6, mid-epoch; the resume from there trains on to the same model as a
    run never killed. Without the option the same kill leaves the epoch-end checkpoint (update 5)."""
    n = 12
    straight = setup(make_cfg(work, tmp_path / "a", stage="direct", max_steps=n, encoder_dropout=0.1), print_fn=quiet)
    straight.fit()
    for name, interval, left in (("b", 3, 6), ("c", 0, 5)):
        killed = setup(make_cfg(work, tmp_path / name, stage="direct", max_steps=n, encoder_dropout=0.1,
                                save_interval_updates=interval), print_fn=quiet)
        step = killed.train_step

        def dies_in_update_9(batch, trainer=killed, step=step):
            if trainer.step == 8:
                raise HardKill
            return step(batch)
        killed.train_step = dies_in_update_9
        with pytest.raises(HardKill):
            killed.fit()
        ckpt = torch.load(tmp_path / name / "direct" / "checkpoint_last.pt", weights_only=True)
        assert (ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]) == (left, 1, left - 5)
    del killed
    resumed = setup(make_cfg(work, tmp_path / "b", stage="direct", max_steps=n, encoder_dropout=0.1,
                             save_interval_updates=3, resume=True), print_fn=quiet)
    assert resumed.step == 6
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="--save-interval-updates must be >= 0"):
        make_cfg(work, tmp_path / "d", save_interval_updates=-1).validate()


def test_checkpoint_is_self_contained_and_best_is_written(work, tmp_path):
    trainer = setup(make_cfg(work, tmp_path, stage="decoder", max_epochs=1), print_fn=quiet)
    assert trainer.fit() == "max_epochs"
    best = tmp_path / "decoder" / "checkpoint_best.pt"
    ckpt = load_checkpoint(best)
    assert ckpt["stage"] == "decoder" and ckpt["epoch"] == 1 and ckpt["batch_in_epoch"] == 0
    assert ckpt["target"]["vocab"] == trainer.target.vocab.symbols
    assert ckpt["best_dev_loss"] == pytest.approx(trainer.best_dev_loss)
    assert not list(tmp_path.glob("**/*.tmp*")) and not list(tmp_path.glob("**/encoder_cache*"))


def test_dev_bleu_cpu_time_and_cpu_budget(work, tmp_path):
    # --dev-bleu logs greedy dev BLEU per epoch; every epoch logs the stage's CPU time so far;
    # --max-cpu-minutes stops at the end of the first epoch that reaches it (a compute-matched baseline)
    trainer = setup(make_cfg(work, tmp_path, stage="direct", dev_bleu=True, max_epochs=5, max_cpu_minutes=1e-4),
                    print_fn=quiet)
    assert trainer.fit() == "cpu_budget" and trainer.epoch == 1
    epoch = [json.loads(line) for line in (tmp_path / "direct" / "metrics.jsonl").read_text().splitlines()][-1]
    assert epoch["event"] == "epoch" and epoch["dev_bleu_search"] == "greedy"
    assert 0 <= epoch["dev_bleu"] <= 100 and epoch["cpu_seconds"] > 0
    ckpt = torch.load(tmp_path / "direct" / "checkpoint_last.pt", weights_only=True)
    assert 0 < ckpt["cpu_seconds"] <= epoch["cpu_seconds"] + 0.05     # saved just after the epoch's record


def test_metrics_add_up_after_a_resume(work, tmp_path):
    """A resumed epoch's record covers the whole epoch (its partial sums travel in the checkpoint),
    and what a killed run logged past its last checkpoint is not kept twice."""
    def cfg(name, **kw):        # one pair per batch: 40 updates per epoch, a "train" record at update 100
        return make_cfg(work, tmp_path / name, stage="direct", max_sentences=1, max_epochs=3, **kw)

    def records(name):
        return [json.loads(line) for line in (tmp_path / name / "direct" / "metrics.jsonl").read_text().splitlines()]
    setup(cfg("straight"), print_fn=quiet).fit()
    setup(cfg("resumed", max_steps=55), print_fn=quiet).fit()            # stopped 15 updates into epoch 2
    with open(tmp_path / "resumed" / "direct" / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": "train", "step": 100, "epoch": 3}) + "\n")   # as if killed later on
        f.write(json.dumps({"event": "epoch", "epoch": 2, "step": 80}) + "\n")
        f.write('{"event": "tra')                                         # a line cut short by the kill
    setup(cfg("resumed", resume=True), print_fn=quiet).fit()
    straight, resumed = records("straight"), records("resumed")
    assert [r["step"] for r in resumed if r["event"] == "train"] == [100]
    epochs = [r for r in resumed if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    for a, b in zip([r for r in straight if r["event"] == "epoch"], epochs, strict=True):
        assert (a["train"]["tokens"], a["train"]["sentences"]) == (b["train"]["tokens"], b["train"]["sentences"])
        assert a["train"]["loss"] == pytest.approx(b["train"]["loss"], abs=1e-5)
        assert a["dev"]["loss"] == pytest.approx(b["dev"]["loss"], abs=1e-5)


CHECKPOINT_KEYS = {"format", "stage", "model_spec", "model", "source", "target", "config", "data_sha256", "optimizer", "schedule",
                   "step", "epoch", "batch_in_epoch", "best_dev_loss", "best_dev_bleu", "bad_epochs", "rng",
                   "world_size", "cpu_seconds", "owed", "epoch_totals", "epoch_seconds"}


def test_checkpoint_last_records_the_owed_work_and_a_resume_does_it_once(work, tmp_path):
    """nmt/train/run_state.py's contract: after an epoch checkpoint_last.pt holds the whole state and the
    work still owed (best copy, kept-epoch copy, the epoch's record); a resume after a kill that came
    before any of it does it, and only once."""
    cfg = make_cfg(work, tmp_path, stage="decoder", max_epochs=1, epoch_checkpoints="1")
    assert setup(cfg, print_fn=quiet).fit() == "max_epochs"
    stage = tmp_path / "decoder"
    last = load_checkpoint(stage / "checkpoint_last.pt")
    assert set(last) == CHECKPOINT_KEYS | {"bert_reference"}           # stage 1: its BERT by reference
    owed = last["owed"]
    assert owed["best"] and owed["epoch_checkpoint"] == 1 and [r["event"] for r in owed["metrics"]] == ["epoch"]
    (stage / "checkpoint_best.pt").unlink()                 # as if killed right after checkpoint_last.pt
    (stage / "checkpoint_epoch1.pt").unlink()
    metrics = stage / "metrics.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()
                               if '"event": "epoch"' not in line))
    resumed = setup(dataclasses.replace(cfg, resume=True), print_fn=quiet)
    assert resumed.owed == owed
    assert resumed.fit() == "max_epochs" and resumed.owed == {}
    assert load_checkpoint(stage / "checkpoint_best.pt")["epoch"] == 1 and (stage / "checkpoint_epoch1.pt").is_file()
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [1]
    resumed.settle_owed()                                   # nothing owed any more: nothing written twice
    assert metrics.read_text().count('"event": "epoch"') == 1


def test_a_resumed_run_keeps_its_warmup_and_the_model_is_set_to_its_stage_once(work, tmp_path, monkeypatch):
    """The warm-up is decided in one place (nmt/train/schedule.py: warmup_steps_for): --warmup-reference
    epochs scaled by the LR, or, resumed, what the checkpoint says (a resume that changes them is refused)."""
    from nmt.model.seq2seq import Seq2Seq
    from nmt.weights.checkpoint import save_checkpoint
    stages = []
    set_stage = Seq2Seq.set_stage
    monkeypatch.setattr(Seq2Seq, "set_stage", lambda self, stage: stages.append(stage) or set_stage(self, stage))
    cfg = make_cfg(work, tmp_path, stage="direct", warmup_steps=None, warmup_reference=1.0, max_steps=2)
    first = setup(cfg, print_fn=quiet)
    assert stages == ["direct"]                              # assemble_run leaves it to the Trainer
    assert first.warmup_steps == 5 * 5                       # 1 epoch at 4e-4 -> 5 at 2e-3, 5 updates each
    first.fit()
    path = tmp_path / "direct" / "checkpoint_last.pt"
    state = load_checkpoint(path)
    state["schedule"]["warmup_steps"] = 7                    # as if saved by a job of another world size
    save_checkpoint(path, state)
    assert setup(dataclasses.replace(cfg, resume=True), print_fn=quiet).warmup_steps == 7
    for changed in ({"warmup_steps": 4}, {"warmup_epochs": 1.0}):    # the schedule must stay the checkpoint's
        with pytest.raises(TrainingError, match="--warmup-"):
            setup(dataclasses.replace(cfg, resume=True, **changed), print_fn=quiet)


def test_resume_with_the_data_moved(work, tmp_path):
    cfg = make_cfg(work, tmp_path / "run", stage="direct", max_steps=2)
    setup(cfg, print_fn=quiet).fit()
    moved = Path(shutil.copytree(work["data"], tmp_path / "moved"))
    # the same files under another path: resumed (the sha256 of its meta.json is the one recorded)
    lines = []
    trainer = setup(dataclasses.replace(cfg, data=str(moved), max_steps=3, resume=True), print_fn=lines.append)
    assert trainer.step == 2 and any("--data: checkpoint" in line for line in lines)
    assert trainer.fit() == "max_steps" and trainer.train_data.directory == moved
    # the same data prepared again from the corpus at another path (a re-cloned checkout's demo cache):
    # meta.json names other input paths and times, the files are the same: resumed
    again = Path(shutil.copytree(work["data"], tmp_path / "again"))
    meta = json.loads((again / "meta.json").read_text(encoding="utf-8"))
    meta["settings"]["inputs"] = {split: [["/elsewhere/" + Path(p).name, size, 1] for p, size, _ in files]
                                  for split, files in meta["settings"]["inputs"].items()}
    (again / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    trainer = setup(dataclasses.replace(cfg, data=str(again), max_steps=4, resume=True), print_fn=quiet)
    assert trainer.step == 3 and trainer.fit() == "max_steps"
    # other data (prepared with other BPE) under a new path: refused, as before
    other = _prepare(tmp_path / "other", tmp_path / "raw_other", work["train_pairs"], work["dev_pairs"], bpe_merges=60)
    with pytest.raises(TrainingError, match="--data: checkpoint"):
        setup(dataclasses.replace(cfg, data=str(other), max_steps=4, resume=True), print_fn=quiet)


def test_token_batching_holds_max_sentences_on_average(work, tmp_path):
    trainer = setup(make_cfg(work, tmp_path, stage="direct", batching="tokens", max_sentences=8), print_fn=quiet)
    batches = trainer.epoch_batches(0)
    tokens, _ = trainer.batch_limits
    widths = np.maximum(trainer.train_data.src_lengths, trainer.train_data.tgt_lengths + 1)
    assert tokens == round(8 * widths.mean())
    assert all(len(b) * widths[b].max() <= tokens for b in batches)
    assert sorted(i for b in batches for i in b.tolist()) == list(range(40))


def test_ctrl_c_saves_last_and_stops(work, tmp_path):
    trainer = setup(make_cfg(work, tmp_path, stage="decoder", max_steps=100), print_fn=quiet)
    step = trainer.train_step

    def interrupted_step(batch):
        out = step(batch)
        if trainer.step == 1:                       # the second update: Ctrl-C arrives during it
            os.kill(os.getpid(), signal.SIGINT)
        return out
    trainer.train_step = interrupted_step
    before = signal.getsignal(signal.SIGINT)   # Python's default; SIG_IGN when started as a background job
    assert trainer.fit() == "interrupted"
    assert load_checkpoint(tmp_path / "decoder" / "checkpoint_last.pt")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before                 # the caller's handler is back


def test_nan_loss_stops_with_a_message_and_saves_nothing(work, tmp_path):
    trainer = setup(make_cfg(work, tmp_path, stage="decoder", max_steps=5), print_fn=quiet)
    with torch.no_grad():
        trainer.model.decoder.output_projection.weight.fill_(float("nan"))
    with pytest.raises(DivergedError, match="non-finite training loss"):       # a TrainingError too
        trainer.fit()
    assert not (tmp_path / "decoder" / "checkpoint_last.pt").exists()


# ---------------------------------------------------------------------------------------------- bad input

def run_cli(args, capsys) -> tuple[int, str]:
    code = train_cli.main([*args, "--no-progress", "--device", "cpu"])
    return code, capsys.readouterr().err


def test_unknown_stage_and_arch(work, tmp_path, capsys):
    code, err = run_cli(["--data", str(work["data"]), "--stage", "decode"], capsys)
    assert code == 2 and "error: unknown --stage 'decode'; expected one of decoder, finetune" in err
    code, err = run_cli(["--data", str(work["data"]), "--arch", "lstm"], capsys)
    assert code == 2 and "error: unknown --arch 'lstm'" in err
    code, err = run_cli(["--data", str(work["data"]), "--arch", "transformer-base", "--stage", "finetune"], capsys)
    assert code == 2 and "does not go with --arch transformer-base" in err


def test_finetune_without_stage1_checkpoint(work, tmp_path, capsys):
    code, err = run_cli(["--data", str(work["data"]), "--bert", str(work["bert"]), "--stage", "finetune",
                         "--run-dir", str(tmp_path)], capsys)
    assert code == 2
    assert f"error: {tmp_path / 'decoder' / 'checkpoint_best.pt'}: no stage-1 checkpoint to fine-tune" in err


def test_vocabularies_that_do_not_match_the_checkpoint(work, tmp_path, capsys):
    trainer = setup(make_cfg(work, tmp_path, stage="decoder", max_steps=1), print_fn=quiet)
    trainer.fit()
    other = _prepare(tmp_path / "other", tmp_path / "raw_other", work["train_pairs"], work["dev_pairs"], bpe_merges=60)
    code, err = run_cli(["--data", str(other), "--bert", str(work["bert"]), "--stage", "finetune",
                         "--init", str(tmp_path / "decoder" / "checkpoint_last.pt")], capsys)
    assert code == 2 and "checkpoint_last.pt: its target vocabulary" in err and "differs from the data's" in err


def test_empty_training_set(work, tmp_path, capsys):
    """prepare_data.py refuses an empty corpus; a data directory whose train split is empty anyway
    (written by hand or by another tool) must still be refused by training, clearly."""
    data = tmp_path / "empty"
    shutil.copytree(work["data"], data)
    writer = SplitWriter(data, "train")
    meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
    meta["splits"]["train"] = writer.close()
    (data / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    code, err = run_cli(["--data", str(data), "--bert", str(work["bert"]), "--run-dir", str(tmp_path)], capsys)
    assert code == 2 and "'train' split is empty (0 sentence pairs)" in err


def test_missing_dev_set(work, tmp_path, capsys):
    data = _prepare(tmp_path / "nodev", tmp_path / "raw", work["train_pairs"], None)
    code, err = run_cli(["--data", str(data), "--bert", str(work["bert"]), "--run-dir", str(tmp_path)], capsys)
    assert code == 2 and "no dev set (split 'valid'" in err


def test_missing_data_directory(tmp_path, capsys):
    code, err = run_cli(["--data", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "nowhere: data directory not found" in err


def test_resume_without_a_checkpoint(work, tmp_path, capsys):
    code, err = run_cli(["--data", str(work["data"]), "--bert", str(work["bert"]), "--run-dir", str(tmp_path),
                         "--resume"], capsys)
    assert code == 2 and "nothing to resume" in err


@pytest.mark.slow
def test_real_minilm_stage1_with_cache(work, tmp_path):
    """The real all-MiniLM-L6-v2 (installed package): frozen, cached stage 1 learns (dev loss drops)."""
    from nmt.weights.pretrained import ensure_default_bert
    try:
        bert = ensure_default_bert(print_fn=quiet)
    except ValueError as e:
        pytest.skip(str(e))
    cfg = make_cfg(work, tmp_path, bert=str(bert), stage="decoder", encoder_cache="auto", max_epochs=3,
                   decoder_layers=2, lr=1e-3)
    trainer = setup(cfg, print_fn=quiet)
    start = trainer.evaluate()["loss"]
    trainer.fit()
    assert trainer.cache is None                    # removed at the end (in-memory cache released with it)
    # 40 training pairs: dev loss 5.97 -> 5.06 nats, then early stopping (measured); an untrained
    # decoder stays near the start
    assert trainer.best_dev_loss < start - 0.5


def test_lenpen_grid_stores_the_dev_bleu_best_length_penalty_in_the_best_checkpoint(work, tmp_path):
    from nmt.data.binarized import split_text
    from nmt.decode.translator import Translator
    from nmt.metrics import corpus_bleu
    grid = [0.5, 1.0, 2.0]
    trainer = setup(make_cfg(work, tmp_path, stage="decoder", max_epochs=2, lenpen_grid="0.5,1.0,2.0"),
                    print_fn=quiet)
    assert trainer.fit() == "max_epochs"
    best = tmp_path / "decoder" / "checkpoint_best.pt"
    decoding = load_checkpoint(best, required=("decoding", "model", "step"))["decoding"]   # the rest kept
    assert decoding["grid"] == grid and decoding["beam"] == 10 and decoding["chosen_on"] == "dev BLEU"
    # the oracle: the best checkpoint's dev BLEU at each value, decoded here independently
    sources, references, _ = split_text(work["data"], "valid")
    translator = Translator.from_checkpoint(best)
    bleu = [corpus_bleu([r.text for r in translator.translate(sources, beam=10, lenpen=g)], references)[0].score
            for g in grid]
    assert decoding["dev_bleu"] == [round(b, 2) for b in bleu]
    assert decoding["lenpen"] == grid[max(range(3), key=lambda i: (bleu[i], -i))] == translator.lenpen
    events = [json.loads(line) for line in (tmp_path / "decoder" / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "lenpen" and events[-1]["lenpen"] == decoding["lenpen"]


def test_bad_lenpen_grid_is_a_config_error(work, tmp_path, capsys):
    for grid in ("1.0,x", "1.0,1.0", "-1"):
        code, err = run_cli(["--data", str(work["data"]), "--bert", str(work["bert"]), "--run-dir", str(tmp_path),
                             "--lenpen-grid", grid], capsys)
        assert code == 2 and "--lenpen-grid" in err, err


def test_data_and_bert_casing_must_agree(work, tmp_path, capsys):
    """Data prepared lower-cased (its source.json) and a BERT that keeps case: refused at start, naming
    both and the flag that accepts it; with --allow-casing-mismatch a warning. The BERT's own casing
    comes from what it says (here: what its .pt records)."""
    from nmt.train.assemble import check_casing
    from nmt.weights.pretrained import Casing, load_native, save_native
    cased = tmp_path / "tiny_cased_bert.pt"
    save_native(dataclasses.replace(load_native(work["bert"]), do_lower_case=False), cased)
    code, err = run_cli(["--data", str(work["data"]), "--bert", str(cased), "--run-dir", str(tmp_path / "run"),
                         "--max-steps", "1"], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert str(work["data"] / "source.json") in err and "lower-cased" in err
    assert f"the BERT {cased} keeps case (recorded in {cased})" in err and "--allow-casing-mismatch" in err
    assert not (tmp_path / "run" / "decoder" / "checkpoint_last.pt").exists()
    messages = []
    setup(make_cfg(work, tmp_path / "run", bert=str(cased), allow_casing_mismatch=True), print_fn=messages.append)
    assert [m for m in messages if m.startswith("warning: ") and "keeps case" in m]
    messages.clear()
    setup(make_cfg(work, tmp_path / "run"), print_fn=messages.append)                  # the same casing: silent
    assert not [m for m in messages if "casing" in m or "warning" in m]
    check_casing(Casing(None, "no tokenizer_config.json"), True, Path("bert"), work["data"], False, messages.append)
    assert "using the data's: lower-cased" in messages[-1]          # a BERT that does not say takes the data's


def test_a_flipped_byte_in_binarized_data_is_caught_at_start(work, tmp_path, capsys):
    """Same size, one bit flipped in train.src.bin: a clear error naming the file before training, not an
    IndexError in the embedding mid-run."""
    data = tmp_path / "data"
    shutil.copytree(work["data"], data)
    with open(data / "train.src.bin", "r+b") as f:
        f.seek(4 * 5 + 3)                                  # the high byte of the 6th id: far out of range
        byte = f.read(1)
        f.seek(4 * 5 + 3)
        f.write(bytes([byte[0] ^ 0x40]))
    code, err = run_cli(["--data", str(data), "--bert", str(work["bert"]), "--run-dir", str(tmp_path / "run"),
                         "--max-steps", "1"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{data / 'train.src.bin'}: contents do not match the sha256" in err and "prepare the data again" in err


@pytest.mark.parametrize("flag, value", [
    ("--lr", "nan"), ("--train-lr", "inf"), ("--dropout", "nan"), ("--label-smoothing", "nan"),
    ("--clip-norm", "nan"), ("--clip-norm", "-1"), ("--warmup-epochs", "nan"), ("--warmup-reference", "inf"),
    ("--max-cpu-minutes", "nan"), ("--max-cpu-minutes", "inf"), ("--encoder-dropout", "nan"), ("--adam-beta2", "1"),
])
def test_float_flags_that_make_no_sense_are_refused(work, tmp_path, capsys, flag, value):
    code, err = run_cli(["--data", str(work["data"]), "--run-dir", str(tmp_path), flag, value], capsys)
    assert code == 2 and err.startswith(f"error: {flag} must be") and err.count("\n") == 1, err


# ---------------------------------------------------------------------------------------------- update-freq, epochs kept, best metric

def test_update_freq_accumulates_the_gradient_of_one_large_batch(work, tmp_path):
    """--update-freq: the gradients of an update over two batches equal those of one batch holding
    both (stage 1, decoder dropout off: the random streams of one pass and two would differ)."""
    def grads(name, groups):
        trainer = setup(make_cfg(work, tmp_path / name, stage="decoder", dropout=0.0, update_freq=len(groups)),
                        print_fn=quiet)
        trainer.optimizer.step = lambda: None            # keep the gradients, change nothing
        batches = [collate(trainer.train_data, np.array(idx), trainer.src_pad_id) for idx in groups]
        trainer.train_step(batches)
        return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    a = grads("two", [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]])         # different sizes and token counts
    b = grads("one", [list(range(10))])
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-5, msg=name)


def test_update_freq_counts_updates_for_the_schedule(work, tmp_path):
    # 5 batches per epoch in groups of 2: 3 updates (2 + 2 + 1); warm-up in epochs counts updates
    trainer = setup(make_cfg(work, tmp_path, stage="direct", update_freq=2, warmup_steps=None, warmup_epochs=1.0,
                             max_epochs=2), print_fn=quiet)
    assert (trainer.batches_per_epoch, trainer.updates_per_epoch, trainer.warmup_steps) == (5, 3, 3)
    assert trainer.fit() == "max_epochs" and trainer.step == 6
    start, *_, last = [json.loads(x) for x in (tmp_path / "direct" / "metrics.jsonl").read_text().splitlines()]
    assert start["updates_per_epoch"] == 3 and start["tokens_per_update"] > 0
    epochs = [json.loads(x) for x in (tmp_path / "direct" / "metrics.jsonl").read_text().splitlines()
              if '"epoch"' in x and '"event": "epoch"' in x]
    assert [e["train"]["sentences"] for e in epochs] == [40, 40]     # every pair, once per epoch


def test_keep_last_epochs_keeps_those_and_the_listed_ones(work, tmp_path):
    trainer = setup(make_cfg(work, tmp_path, stage="decoder", max_epochs=5, keep_last_epochs=2,
                             epoch_checkpoints="1"), print_fn=quiet)
    trainer.fit()
    stage = tmp_path / "decoder"
    assert sorted(p.name for p in stage.glob("checkpoint_epoch*.pt")) == \
        ["checkpoint_epoch1.pt", "checkpoint_epoch4.pt", "checkpoint_epoch5.pt"]
    assert load_checkpoint(stage / "checkpoint_epoch4.pt")["epoch"] == 4


def test_best_and_epoch_checkpoints_are_snapshots_without_the_optimizer(work, tmp_path):
    trainer = setup(make_cfg(work, tmp_path, stage="decoder", max_epochs=2, epoch_checkpoints="2"), print_fn=quiet)
    trainer.fit()
    stage = tmp_path / "decoder"
    last = load_checkpoint(stage / "checkpoint_last.pt", required=(), with_bert=False)
    trained = sum(t.numel() * t.element_size() for t in last["model"].values())
    for name in ("checkpoint_best.pt", "checkpoint_epoch2.pt"):
        snapshot = load_checkpoint(stage / name, required=(), with_bert=False)
        assert "optimizer" not in snapshot and "rng" not in snapshot
        # everything else as checkpoint_last.pt has it: weights, pipelines, counters, config
        assert sorted(snapshot) == sorted(k for k in last if k not in ("optimizer", "rng"))
        assert all(torch.equal(snapshot["model"][k], v) for k, v in last["model"].items())
        assert (snapshot["step"], snapshot["epoch"]) == (last["step"], last["epoch"])
        # what it saves: Adam's two moments, twice the trained weights
        saved = (stage / "checkpoint_last.pt").stat().st_size - (stage / name).stat().st_size
        assert 2 * trained < saved < 2.5 * trained


def tensor_bytes(model_state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in model_state.values())


def test_float16_snapshots_halve_the_weights_and_every_reader_computes_in_float32(work, tmp_path):
    """--snapshot-dtype float16: best and epoch snapshots hold float16 weights (half the tensor bytes),
    checkpoint_last.pt stays float32; translating, the length-penalty choice, perplexity, averaging and
    --init read them back as float32, the same numbers as the float32 weights rounded to float16."""
    from nmt.decode.translator import Translator
    from nmt.train.evaluation import checkpoint_perplexity
    from nmt.weights.checkpoint import average_checkpoints, save_checkpoint
    trainer = setup(make_cfg(work, tmp_path, stage="decoder", max_epochs=2, keep_last_epochs=2,
                             snapshot_dtype="float16", lenpen_grid="1.0,2.0"), print_fn=quiet)
    trainer.fit()
    stage = tmp_path / "decoder"
    last = load_checkpoint(stage / "checkpoint_last.pt", required=(), with_bert=False)
    assert "snapshot_dtype" not in last and {t.dtype for t in last["model"].values()} == {torch.float32}
    for name in ("checkpoint_best.pt", "checkpoint_epoch1.pt", "checkpoint_epoch2.pt"):
        stored = load_checkpoint(stage / name, required=(), with_bert=False)       # as stored
        assert stored["snapshot_dtype"] == "float16", name
        assert {t.dtype for t in stored["model"].values()} == {torch.float16}, name
        assert 2 * tensor_bytes(stored["model"]) == tensor_bytes(last["model"]), name
        assert {t.dtype for t in load_checkpoint(stage / name)["model"].values()} == {torch.float32}, name
    epoch2 = load_checkpoint(stage / "checkpoint_epoch2.pt", required=(), with_bert=False)
    for k, v in last["model"].items():              # last's weights rounded: within fp16's 2^-11 relative error
        assert torch.equal(epoch2["model"][k], v.half()), k
        assert ((epoch2["model"][k].float() - v).abs() <= v.abs() * 2**-11 + 2**-24).all(), k
    best = load_checkpoint(stage / "checkpoint_best.pt", required=(), with_bert=False)
    assert best["decoding"]["grid"] == [1.0, 2.0]       # update_checkpoint kept the file float16
    # the reference: the same checkpoint with float32 weights rounded to float16 and back
    rounded = tmp_path / "rounded.pt"
    save_checkpoint(rounded, {**{k: v for k, v in best.items() if k != "snapshot_dtype"},
                              "model": {k: v.float() for k, v in best["model"].items()}})
    lines = [e for e, _ in work["dev_pairs"][:4]]
    snapshot = stage / "checkpoint_best.pt"
    ours, theirs = (Translator.from_checkpoint(p).translate(lines, beam=3) for p in (snapshot, rounded))
    assert [(r.text, r.score) for r in ours] == [(r.text, r.score) for r in theirs]
    assert checkpoint_perplexity(snapshot, work["data"]) == checkpoint_perplexity(rounded, work["data"])
    # averaging two float16 snapshots: the mean of their float32 values, stored float32
    avg = average_checkpoints([stage / "checkpoint_epoch1.pt", stage / "checkpoint_epoch2.pt"])
    epoch1 = load_checkpoint(stage / "checkpoint_epoch1.pt", required=(), with_bert=False)
    assert "snapshot_dtype" not in avg
    for k, v in avg["model"].items():
        assert v.dtype == torch.float32, k
        if not k.startswith("encoder."):
            torch.testing.assert_close(v, (epoch1["model"][k].float() + epoch2["model"][k].float()) / 2, rtol=0,
                                       atol=1e-7)
    # stage 2 from the float16 snapshot: a float32 model with the rounded decoder and the BERT file's encoder
    ft = setup(make_cfg(work, tmp_path, stage="finetune", init=str(stage / "checkpoint_epoch2.pt"), max_steps=1,
                        snapshot_dtype="bfloat16"), print_fn=quiet)
    assert {p.dtype for p in ft.model.parameters()} == {torch.float32}
    decoder = ft.model.decoder.state_dict()
    assert all(torch.equal(decoder[k.removeprefix("decoder.")], v.float())
               for k, v in epoch2["model"].items() if k.startswith("decoder."))
    bert = torch.load(work["bert"], weights_only=True)["model"]
    assert torch.equal(ft.model.encoder.state_dict()["embeddings.word.weight"],
                       bert["embeddings.word.weight"].float())
    assert ft.fit() == "max_steps"


def test_snapshot_dtypes_round_within_their_precision_and_a_bad_one_is_refused(work, tmp_path, capsys):
    """bfloat16 keeps 8 significant bits (relative error <= 2^-8), float32 keeps the weights as they are;
    --snapshot-dtype anything else is a ConfigError (one error line, exit status 2)."""
    from nmt.weights.checkpoint import save_snapshot
    setup(make_cfg(work, tmp_path, stage="decoder", max_steps=2), print_fn=quiet).fit()
    last_path = tmp_path / "decoder" / "checkpoint_last.pt"
    last = load_checkpoint(last_path, required=(), with_bert=False)
    save_snapshot(last_path, tmp_path / "bf16.pt", "bfloat16")
    save_snapshot(last_path, tmp_path / "fp32.pt", "float32")
    bf16 = load_checkpoint(tmp_path / "bf16.pt", required=(), with_bert=False)
    assert bf16["snapshot_dtype"] == "bfloat16" and 2 * tensor_bytes(bf16["model"]) == tensor_bytes(last["model"])
    read = load_checkpoint(tmp_path / "bf16.pt", with_bert=False)["model"]
    for k, v in last["model"].items():
        assert read[k].dtype == torch.float32 and ((read[k] - v).abs() <= v.abs() * 2**-8).all(), k
    fp32 = load_checkpoint(tmp_path / "fp32.pt", required=(), with_bert=False)
    assert "snapshot_dtype" not in fp32 and all(torch.equal(fp32["model"][k], v) for k, v in last["model"].items())
    with pytest.raises(ConfigError, match="unknown --snapshot-dtype 'half'"):
        make_cfg(work, tmp_path, snapshot_dtype="half").validate()
    code, err = run_cli(["--data", str(work["data"]), "--bert", str(work["bert"]), "--run-dir", str(tmp_path / "x"),
                         "--snapshot-dtype", "float64"], capsys)
    assert code == 2 and "unknown --snapshot-dtype 'float64'; expected float32, float16, bfloat16" in err, err


def test_best_metric_bleu_picks_the_best_checkpoint_by_dev_bleu(work, tmp_path, monkeypatch):
    bleus = iter([5.0, 9.0, 7.0, 8.0])              # epoch 2 is the best by BLEU, whatever the dev loss does
    trainer = setup(make_cfg(work, tmp_path, stage="decoder", max_epochs=10, dev_bleu=True, best_metric="bleu",
                             patience=2), print_fn=quiet)
    monkeypatch.setattr(trainer, "dev_bleu", lambda: next(bleus))
    assert trainer.fit() == "converged" and trainer.epoch == 4        # epochs 3 and 4 did not beat 9.0
    best = load_checkpoint(tmp_path / "decoder" / "checkpoint_best.pt")
    assert best["epoch"] == 2 and best["best_dev_bleu"] == 9.0
    with pytest.raises(ConfigError, match="--best-metric bleu needs --dev-bleu"):
        make_cfg(work, tmp_path, best_metric="bleu", dev_bleu=False).validate()


def test_bfloat16_autocast_on_the_cpu_trains_with_fp32_master_weights(work, tmp_path, monkeypatch):
    """--amp bfloat16 on a CPU (here with bf16 emulated; on AVX512-BF16/AMX CPUs it is the fast path):
    bf16 products, fp32 weights and optimizer, a loss within bf16 rounding of fp32's, and it learns."""
    from nmt.train import assemble
    monkeypatch.setattr(assemble, "cpu_has_bf16", lambda: True)
    losses = {}
    for amp in ("off", "bfloat16"):
        torch.manual_seed(0)
        cfg = make_cfg(work, tmp_path / amp, stage="direct", label_smoothing=0.0, dropout=0.0, encoder_dropout=0.0,
                       lr=3e-3, warmup_steps=10, amp=amp)
        trainer = setup(cfg, print_fn=quiet)
        batch = collate(trainer.train_data, np.arange(8), trainer.src_pad_id)
        losses[amp] = []
        for _ in range(40):
            losses[amp].append(trainer.train_step([batch])[1] / batch.num_tokens)
            trainer.step += 1
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert losses["bfloat16"][0] == pytest.approx(losses["off"][0], rel=0.02)      # same start, bf16 rounding
    assert losses["bfloat16"][-1] < 0.5 * losses["bfloat16"][0]                   # and it learns
    assert losses["bfloat16"][-1] == pytest.approx(losses["off"][-1], rel=0.25)    # about as fast as fp32


@pytest.mark.parametrize("has_bf16", [True, False])
def test_amp_auto_is_bfloat16_on_a_bf16_cpu_and_off_elsewhere(work, tmp_path, monkeypatch, has_bf16):
    """The demo preset's --amp auto: resolved once at setup, printed, and recorded as what the run
    trains with (checkpoints never say "auto"); never bf16 on a GPU, where it was slower."""
    from nmt.train import assemble
    monkeypatch.setattr(assemble, "cpu_has_bf16", lambda: has_bf16)
    printed = []
    trainer = setup(make_cfg(work, tmp_path, amp="auto"), print_fn=printed.append)
    want = "bfloat16" if has_bf16 else "off"
    assert trainer.cfg.amp == want and any(line.startswith(f"--amp auto: {want}") for line in printed)
    assert assemble.resolve_amp("auto", torch.device("cuda")) == "off"
    assert assemble.resolve_amp("off", torch.device("cpu")) == "off"


def test_amp_auto_is_the_demo_presets_only():
    assert compose_config({})[0].amp == "auto"                      # the demo (no --data)
    assert compose_config({"data": "d"})[0].amp == "off"            # the paper's recipe: fp32
    assert compose_config({"amp": "off"})[0].amp == "off"           # a flag over the preset


def test_amp_the_device_cannot_run_is_refused(work, tmp_path, capsys, monkeypatch):
    from nmt.train import assemble
    monkeypatch.setattr(assemble, "cpu_has_bf16", lambda: False)
    code, err = run_cli(["--data", str(work["data"]), "--bert", str(work["bert"]), "--run-dir", str(tmp_path),
                         "--amp", "bfloat16"], capsys)
    assert code == 2 and err.startswith("error: --amp bfloat16: this CPU has no bfloat16 instructions"), err
    code, err = run_cli(["--data", str(work["data"]), "--bert", str(work["bert"]), "--run-dir", str(tmp_path),
                         "--amp", "float16"], capsys)
    assert code == 2 and "error: --amp float16 needs a CUDA device" in err, err
