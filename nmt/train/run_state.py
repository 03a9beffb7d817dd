"""What a training run keeps on disk, and how ``--resume`` continues it exactly: the bookkeeping
half of the Trainer (nmt/train/trainer.py inherits :class:`RunState`), apart from the paper's loop.

Files, in the stage directory, written by the master process only (atomically, nmt/files.py):

- ``checkpoint_last.pt``: the whole state (:meth:`RunState.state_dict`) after every epoch, and when
  the loop stops early (a stop signal, ``--max-steps``) with the epoch's partial sums; it also records the
  end-of-epoch work still OWED: its snapshots without the optimizer's state, ``checkpoint_best.pt``
  (dev score improved) and ``checkpoint_epochN.pt`` (``--epoch-checkpoints``, ``--keep-last-epochs``,
  which prunes older ones), and the epoch's metrics record. :meth:`RunState.settle_owed` does that work after the save.
- ``metrics.jsonl``: one JSON record per line, events "start", "train" (every 100 updates), "epoch",
  "interrupted" / "max_steps", "lenpen" (the length penalty stored in checkpoint_best.pt at the end,
  nmt/train/end_of_stage.py); a stage started over moves the old log to ``metrics.previous.jsonl``.

A resume (:meth:`RunState.load_state`, then :meth:`RunState.repair_after_resume`) restores the
optimizer, counters, RNG and the epoch's partial sums; drops the records logged past the checkpoint
(those steps are replayed); settles what was owed; and does not choose the length penalty again.
Every step may be repeated, so a kill at any moment is repaired. Another world size continues at the
same fraction of the epoch, with the warm-up it started with (nmt/train/schedule.py).

Stop signals (:meth:`RunState.stop_signals_save`): SIGINT (Ctrl-C), SIGTERM (kill, a scheduler's stop or
pre-emption) and SIGHUP (a closed terminal) all finish the update, save checkpoint_last.pt and end the
process with 128 + the signal (130, 143, 129); under torchrun the ranks agree to stop after the same
update (:meth:`RunState.agree_on_stop`). Outside the loop they raise StopSignal (the entry points'
raise_on_stop_signals, nmt/errors.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

from nmt.data.binarized import data_content_sha256
from nmt.decode.lenpen_choice import parse_grid
from nmt.errors import StopSignal, restore_signals, signal_name
from nmt.files import atomic_write, fault_point
from nmt.model.seq2seq import count_parameters, format_parameter_counts
from nmt.train.evaluation import Totals
from nmt.weights.checkpoint import (
    FORMAT,
    bert_reference,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    save_snapshot,
    set_rng_state,
    without_bert,
)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)    # saved like Ctrl-C; ranks agree in this order


def stop_status(e: BaseException | None = None) -> int:
    """The exit status of a stop: 128 + the signal (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP) a StopSignal
    carries; Ctrl-C for a plain KeyboardInterrupt."""
    return 128 + (getattr(e, "signum", None) or signal.SIGINT)


class RunState:
    """Checkpoints, metrics.jsonl, stop signals and resume for the Trainer. It keeps ``owed``,
    ``epoch_totals``, ``epoch_seconds`` and ``cpu_seconds`` (:meth:`reset_run_state`), and reads the
    Trainer's run (``cfg``, ``out_dir``, ``model``, ``optimizer``, ...) and counters (``step``, ``epoch``, ...)."""
    _stop_requested = False                 # a stop signal (or request_stop) seen by this process
    _stop_agreed = False                    # distributed: some rank saw one by the last update
    _stopped_inside = False                 # the loop stopped inside an epoch and saved (save_stopped)
    stop_signal: int = signal.SIGINT        # the signal that stops the run: exit status 128 + it

    def reset_run_state(self) -> None:
        """A stage's start: nothing owed, no partial sums, no CPU time."""
        self.owed: dict = {}                    # end-of-epoch work recorded in checkpoint_last.pt (settle_owed)
        self.epoch_totals = Totals()            # the epoch in progress: its training sums so far
        self.epoch_seconds = 0.0                # ... and its wall time before the last resume
        self._epoch_t0: float | None = None     # when this process began (or resumed) the epoch
        self.cpu_seconds = 0.0                  # this stage's process CPU time so far (cache, updates, dev)
        self._cpu_start: tuple[float, float] | None = None   # (process_time, cpu_seconds) when fit() began

    def start_clocks(self) -> None:
        """fit() begins: CPU time counts from here, on top of what the checkpoint had."""
        self._cpu_start = (time.process_time(), self.cpu_seconds)

    def _cpu_now(self) -> float:
        """This stage's CPU seconds up to now (all threads of this process; summed over resumes)."""
        start = self._cpu_start
        return self.cpu_seconds if start is None else start[1] + time.process_time() - start[0]

    def epoch_elapsed(self) -> float:
        """Wall seconds of the epoch in progress, over resumes."""
        return self.epoch_seconds + (time.time() - self._epoch_t0 if self._epoch_t0 else 0.0)

    # -- the start of a stage, metrics.jsonl
    def announce_start(self) -> None:
        """Print what this stage trains and how; at update 0 also log it: the "start" record."""
        cfg = self.cfg
        counts = count_parameters(self.model)
        self.print(format_parameter_counts(counts))
        where = "" if self.dist is None else \
            f" on each of {self.world_size} processes ({self.dist.backend}; {self.world_size} batches per update)"
        tokens, sentences = self.batch_limits
        batching = (f"at most {sentences} sentences" if cfg.batching == "sentences" else
                    f"{tokens:,} padded tokens each, about {cfg.max_sentences} sentences on average")
        # target tokens (with EOS) per update, all processes together: each rank's share of the pairs
        # goes into the same number of updates
        per_update = int((self.train_data.tgt_lengths + 1).sum()) / self.updates_per_epoch
        self.print(f"stage {cfg.stage}: {len(self.train_data):,} training pairs in {self.batches_per_epoch} batches "
                   f"per epoch ({batching}){where}, {len(self.valid_data):,} dev pairs; {self.updates_per_epoch} "
                   f"updates per epoch of {cfg.update_freq} x {self.world_size} batches, about {per_update:,.0f} target "
                   f"tokens each; peak LR {self.peak_lr:g}, warm-up {self.warmup_steps} updates; device {self.device}; "
                   f"writing to {self.out_dir}")
        if cfg.stage == "decoder":
            frozen = counts["encoder"]["frozen"]
            self.print(f"frozen encoder: {frozen:,} parameters, saving {12 * frozen / 2**20:.0f} MiB of gradients "
                       f"+ Adam state (12 bytes per parameter)")
        if self.step == 0:
            self.start_metrics({"config": cfg.to_dict(), "parameters": counts, "warmup_steps": self.warmup_steps,
                                "batches_per_epoch": self.batches_per_epoch, "updates_per_epoch": self.updates_per_epoch,
                                "tokens_per_update": round(per_update), "world_size": self.world_size})

    def log_metrics(self, record: dict) -> None:
        if self.master_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    def logged_metrics(self) -> list[dict]:
        """The records in metrics.jsonl (a line cut short by a kill is skipped)."""
        path = self.out_dir / "metrics.jsonl"
        records = []
        for line in (path.read_text(encoding="utf-8").splitlines() if path.is_file() else []):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return records

    def start_metrics(self, record: dict) -> None:
        """A stage started from update 0: the old log (if any) kept aside, then the "start" record."""
        metrics = self.out_dir / "metrics.jsonl"
        if self.master_process and metrics.is_file():
            os.replace(metrics, metrics.with_name("metrics.previous.jsonl"))
        self.log_metrics({"event": "start", **record})

    def repair_metrics(self) -> None:
        """On resume: drop the records written after the checkpoint being resumed (steps and epochs
        that will be replayed), so metrics.jsonl never holds a step or an epoch twice."""
        path = self.out_dir / "metrics.jsonl"
        if not self.master_process or not path.is_file():
            return
        kept = [r for r in self.logged_metrics()    # a line cut short by a kill is dropped: it is replayed
                if not (r.get("event") == "train" and r.get("step", 0) > self.step)
                and not (r.get("event") == "epoch" and r.get("epoch", 0) > self.epoch)]
        with atomic_write(path, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in kept))

    def repair_after_resume(self) -> None:
        """Before training on: replayed steps must not be logged twice, and the end of an epoch that a
        kill cut short is finished."""
        if self.step > 0:
            self.repair_metrics()
        self.settle_owed()

    # -- checkpoints
    def save(self, name: str) -> Path:
        path = self.out_dir / name
        if self.master_process:
            save_checkpoint(path, self.state_dict())
            fault_point(f"{Path(name).stem}-saved", self.epoch)
        return path

    def save_stopped(self, why: str) -> str:
        """The loop stopped inside an epoch ("interrupted" or "max_steps"): checkpoint_last.pt (with the
        epoch's partial sums), the record and one line naming the signal, the file and --resume."""
        path = self.save("checkpoint_last.pt")
        self._stopped_inside = True
        signame = signal_name(self.stop_signal) if why == "interrupted" else None
        self.log_metrics({"event": why, "step": self.step, "epoch": self.epoch + 1,
                          **({"signal": signame} if signame else {})})
        self.say(f"{why}{f' by {signame}' if signame else ''}: saved {path} at update {self.step}; "
                 f"continue with --resume")
        return why

    def save_epoch(self, record: dict, improved: bool) -> None:
        """An epoch ended (the counters already count it): checkpoint_last.pt FIRST, recording what is
        owed (best and kept-epoch copies, the epoch's metrics ``record``), then that work."""
        cfg = self.cfg
        keep = self.epoch in cfg.kept_epochs() or cfg.keep_last_epochs > 0
        self.owed = {"best": improved, "epoch_checkpoint": self.epoch if keep else None, "metrics": [record]}
        self.epoch_totals, self.epoch_seconds, self._epoch_t0 = Totals(), 0.0, None
        self.save("checkpoint_last.pt")
        self.settle_owed()
        if self.dist is not None:       # rank 0's dev BLEU and files are not bounded by the update's timeout
            self.dist.wait_for_rank0()

    def settle_owed(self) -> None:
        """Do the end-of-epoch work checkpoint_last.pt records as owed: its snapshot (no optimizer
        state, weights in --snapshot-dtype; nmt/weights/checkpoint.py save_snapshot) to checkpoint_best.pt
        and checkpoint_epochN.pt, the epoch's record (unless metrics.jsonl has it). Repeatable."""
        owed, self.owed = self.owed, {}
        if not owed or not self.master_process:
            return
        last = self.out_dir / "checkpoint_last.pt"
        if owed.get("best"):
            save_snapshot(last, self.out_dir / "checkpoint_best.pt", self.cfg.snapshot_dtype)
            fault_point("best-copied", self.epoch)
        if owed.get("epoch_checkpoint"):
            save_snapshot(last, self.out_dir / f"checkpoint_epoch{owed['epoch_checkpoint']}.pt",
                          self.cfg.snapshot_dtype)
            self._prune_epoch_checkpoints()
        done = {(r.get("event"), r.get("epoch")) for r in self.logged_metrics()}
        for record in owed.get("metrics", []):
            if (record["event"], record["epoch"]) not in done:
                self.log_metrics(record)
        fault_point("metrics-written", self.epoch)

    def _prune_epoch_checkpoints(self) -> None:
        """--keep-last-epochs N: remove checkpoint_epochK.pt older than the last N epochs, except the
        epochs --epoch-checkpoints asks for."""
        n = self.cfg.keep_last_epochs
        if n <= 0:
            return
        for path in self.out_dir.glob("checkpoint_epoch*.pt"):
            k = path.stem.removeprefix("checkpoint_epoch")
            if k.isdigit() and int(k) <= self.epoch - n and int(k) not in self.cfg.kept_epochs():
                path.unlink(missing_ok=True)

    def length_penalty_stored(self, best: Path) -> bool:
        """True when ``best`` already holds the choice over this --lenpen-grid (a resumed run that had
        finished); its metrics record is written if a kill came before it."""
        done = load_checkpoint(best, required=()).get("decoding", {})
        if done.get("grid") != parse_grid(self.cfg.lenpen_grid):
            return False
        self.print(f"length penalty {done['lenpen']:g}: already chosen and stored in {best}")
        if not any(r.get("event") == "lenpen" for r in self.logged_metrics()):
            self.log_metrics({"event": "lenpen", **done})
        return True

    # -- stop signals: the update finishes, then checkpoint_last.pt is saved as at --max-steps
    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Finish the current update, save checkpoint_last.pt and return "interrupted" from fit();
        ``signum``: the signal asking (the exit status is 128 + it)."""
        self._stop_requested, self.stop_signal = True, signum

    @contextlib.contextmanager
    def stop_signals_save(self):
        """While training, SIGINT (Ctrl-C), SIGTERM (kill, a scheduler's stop or pre-emption) and SIGHUP
        (a closed terminal) request the stop. Then a second Ctrl-C aborts at once (StopSignal: the save
        in progress is dropped, atomically, and the last complete checkpoint stays); a repeated SIGTERM
        or SIGHUP changes nothing (a scheduler and torchrun may both send one; SIGKILL is the hard stop).
        A SIGTERM or SIGHUP ignored when the process started (nohup) stays ignored. A signal the loop had
        no update left to act on (it came as the last epoch ended) raises StopSignal at the end: the
        epoch is saved, and --resume does what is left (the length-penalty choice)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_requested:
                if signum == signal.SIGINT:
                    raise StopSignal(signum)
                return
            self.request_stop(signum)
            self.say(f"\n{signal_name(signum)}: finishing this update, then saving checkpoint_last.pt"
                     + (" (Ctrl-C again to abort)" if signum == signal.SIGINT else ""))

        previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS
                    if s == signal.SIGINT or signal.getsignal(s) is not signal.SIG_IGN}
        try:
            yield
        finally:
            restore_signals(previous)
        if self._stop_requested and not self._stopped_inside:
            raise StopSignal(self.stop_signal)

    def agree_on_stop(self, votes: list[float]) -> bool:
        """Distributed: ``votes`` are the sums over ranks of :meth:`stop_votes`; every rank gets the same
        answer (stop after this update?) and the same signal (the first of STOP_SIGNALS some rank saw)."""
        seen = [s for s, n in zip(STOP_SIGNALS, votes) if n > 0]
        if seen:
            self.stop_signal = seen[0]
        return bool(seen)

    def stop_votes(self) -> list[float]:
        """This rank's part of the stop agreement: 1 for the signal it saw (if any), per STOP_SIGNALS."""
        return [float(self._stop_requested and self.stop_signal == s) for s in STOP_SIGNALS]

    def say(self, msg: str) -> None:
        """Print from a signal handler or after SIGHUP: a print the handler interrupted (reentrant) or a
        terminal that is gone (EIO) must not end the run."""
        with contextlib.suppress(OSError, RuntimeError):
            self.print(msg)

    # -- the state in checkpoint_last.pt
    _bert_reference: dict | None = None     # stage 1: the frozen BERT's path and sha256 (hashed once per run)

    def data_sha256(self) -> str:
        """The training data's content sha256 (nmt.data.binarized.data_content_sha256: every data
        file's sha256, as the meta.json the data was loaded with lists them): it names the data, so
        --resume can accept it moved or prepared again from a moved corpus (assemble.check_resume)."""
        return data_content_sha256(self.train_data.meta)

    def frozen_bert(self) -> dict | None:
        """Stage 1 (BERT frozen): what its checkpoints record of the BERT instead of its weights -- the
        resumed checkpoint's reference, else the file this run loaded (--bert, or the default), hashed
        once. None for the other stages: their checkpoints hold the encoder."""
        if self.cfg.stage != "decoder" or self.spec.arch != "bert":
            return None
        if self._bert_reference is None:
            from nmt.weights.pretrained import default_bert_path
            self._bert_reference = bert_reference(self.cfg.bert or default_bert_path(), default=self.cfg.bert is None)
        return self._bert_reference

    def state_dict(self) -> dict:
        """Everything --resume needs; in stage 1 without the frozen BERT's tensors (a reference to its
        file instead: nmt/weights/checkpoint.py, bert_reference), which would be most of the file."""
        model, extra = self.model.state_dict(), {}
        reference = self.frozen_bert()
        if reference is not None:
            model, extra["bert_reference"] = without_bert(model, reference)
        return {"format": FORMAT, "stage": self.cfg.stage, "model_spec": self.spec.to_dict(), **extra,
                "model": model, "source": self.source.to_dict(), "target": self.target.to_dict(),
                "config": self.cfg.to_dict(), "data_sha256": self.data_sha256(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": {"peak_lr": self.peak_lr, "warmup_steps": self.warmup_steps},
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "best_dev_loss": self.best_dev_loss, "best_dev_bleu": self.best_dev_bleu,
                "bad_epochs": self.bad_epochs, "rng": rng_state(),
                "world_size": self.world_size, "cpu_seconds": self._cpu_now(), "owed": self.owed,
                "epoch_totals": dataclasses.asdict(self.epoch_totals), "epoch_seconds": self.epoch_elapsed()}

    def load_state(self, state: dict) -> None:
        """Continue from a checkpoint_last.pt (the model weights are already loaded; the warm-up is
        the Trainer's, nmt/train/schedule.py: warmup_steps_for)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        self.best_dev_loss, self.bad_epochs = state["best_dev_loss"], int(state["bad_epochs"])
        self.best_dev_bleu = state.get("best_dev_bleu")            # absent in older checkpoints
        self.cpu_seconds = float(state.get("cpu_seconds", 0.0))     # absent in older checkpoints
        self.owed = dict(state.get("owed") or {})                     # end-of-epoch work still to do
        # stage 1: the same BERT as before; one moved to the path given (its sha256 checked on loading)
        # is recorded anew by frozen_bert
        reference = state.get("bert_reference")
        if reference and (self.cfg.bert is None or Path(self.cfg.bert).resolve() == Path(reference["resolved"])):
            self._bert_reference = {k: v for k, v in reference.items() if k not in ("parameters", "tensor_bytes")}
        if self.batch_in_epoch > 0 and "epoch_totals" in state:      # the epoch's sums so far
            self.epoch_totals = Totals(**state["epoch_totals"])
            self.epoch_seconds = float(state.get("epoch_seconds", 0.0))
        set_rng_state(state["rng"])
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world_size and self.batch_in_epoch > 0:
            # another world size cuts the epoch into other batches: continue at the same fraction of
            # the epoch (the pairs of the skipped part are not exactly those already seen)
            before = len(self.epoch_batches(self.epoch, world_size=saved_world))
            done = min(self.batch_in_epoch * self.batches_per_epoch // max(before, 1), self.batches_per_epoch)
            done -= done % self.cfg.update_freq if done < self.batches_per_epoch else 0   # at an update boundary
            self.print(f"resuming with {self.world_size} processes a run saved with {saved_world}: epoch "
                       f"{self.epoch + 1} was {self.batch_in_epoch}/{before} batches done; continuing at "
                       f"{done}/{self.batches_per_epoch}")
            self.batch_in_epoch = done
