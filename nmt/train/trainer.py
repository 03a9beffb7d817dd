"""The training loop: updates, epochs, dev loss, early stopping, checkpoints, resume, Ctrl-C.

:func:`setup` turns a :class:`~nmt.train.config.TrainConfig` into a ready :class:`Trainer` over the run
nmt/train/assemble.py puts together (data, pipelines, the model the stage starts from);
:meth:`Trainer.fit` trains. The dev BLEU and the length-penalty choice are nmt/train/end_of_stage.py's. The
dev loss is summed as any checkpoint is scored (nmt/train/evaluation.py: ``sum_losses``), so both agree.

Stages (see docs/design.md and the paper):

- ``decoder`` (stage 1): BERT frozen -- ``requires_grad_(False)``, kept in eval mode, run under
  ``no_grad`` -- and the optimizer holds only decoder parameters. Because the frozen encoder's
  outputs never change, they are computed once (nmt/train/encoder_cache.py) unless ``--encoder-cache off``.
- ``finetune`` (stage 2): starts from the stage-1 best checkpoint, everything trainable, dropout on
  both sides, a NEW Adam over all parameters, LR 8e-5.
- ``direct``: BERT + a fresh decoder trained end to end (the paper's failing baseline).
- ``scratch``: the Transformer baselines.

Per epoch: the shuffled length-bucketed batches of this process's shard, one tqdm bar, a dev
evaluation (loss and perplexity from the NLL, in nats), ``checkpoint_last.pt`` and, when the dev
loss improved, ``checkpoint_best.pt`` (and ``checkpoint_epochN.pt`` for the epochs listed in
``--epoch-checkpoints``); training stops after ``patience`` epochs without improvement. Then, with
``--lenpen-grid``, the best checkpoint translates the dev set once per length penalty and keeps the
best by BLEU as translate.py's default (nmt/decode/length_penalty.py).
Everything that writes files or prints goes through ``master_process``.

Data-parallel training (torchrun; nmt/train/distributed.py) is on only when a ``DistContext`` is given:
the model is wrapped in DistributedDataParallel after ``set_stage`` (DDP registers the parameters
that require grad when it is built; :meth:`Trainer.set_stage` re-wraps), each rank trains on its own
share of the pairs (:meth:`Trainer.epoch_batches`) and caches only those encoder outputs, the loss is
normalised by the GLOBAL token count (so N ranks x their batches = 1 process x the union batch),
dev sums, Ctrl-C and NaN decisions are reduced over ranks, and only rank 0 prints and writes.
Without a DistContext none of this runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nmt.cpu.gemm import use_onednn
from nmt.data.binarized import collate, split_text, token_budget
from nmt.decode.length_penalty import LengthPenaltyChoice, parse_grid
from nmt.errors import DivergedError, TrainingError
from nmt.files import atomic_copy, atomic_write, fault_point, remove_stale_temporaries
from nmt.model.seq2seq import count_parameters, format_parameter_counts
from nmt.train.assemble import Run, assemble_run, resolve_amp, resolve_device
from nmt.train.config import TrainConfig, default_run_dir
from nmt.train.distributed import DistContext, rank_seed, shard_batches, shard_pairs
from nmt.train.encoder_cache import EncoderCache, plan_cache, remove_cache_file
from nmt.train.end_of_stage import DevText, greedy_dev_bleu, store_length_penalty_choice
from nmt.train.evaluation import Totals, dev_batches, sum_losses
from nmt.train.schedule import get_lr, warmup_epochs_for, warmup_steps_from_epochs
from nmt.weights.checkpoint import (
    FORMAT,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    stage_dir,
)

# ----------------------------------------------------------------------------------------------
# setup: from a config to a Trainer

def setup(cfg: TrainConfig, print_fn: Callable[[str], None] = print, master_process: bool = True,
          dist: DistContext | None = None) -> "Trainer":
    """Validate the config, assemble the run (nmt/train/assemble.py) and wrap it in a Trainer.

    ``dist``: this process's place in a torchrun job (nmt.train.distributed.init_from_env); rank 0 prepares
    shared files (demo data, converted BERT) before the other ranks read them.
    """
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if dist is not None:
        device, master_process = dist.device, dist.master_process
        print_fn = print_fn if master_process else (lambda *_: None)
    else:
        device = resolve_device(cfg.device)
    amp = resolve_amp(cfg.amp, device)
    if cfg.amp == "auto" and master_process:
        print_fn(f"--amp auto: {'bfloat16 autocast, this CPU has bf16 instructions' if amp == 'bfloat16' else 'off'}"
                 f" (--amp off or bfloat16 to choose)")
    cfg = dataclasses.replace(cfg, amp=amp)     # checkpoints record what the run trained with
    with dist.rank0_first() if dist is not None else contextlib.nullcontext():
        if master_process:                      # before any rank writes there: what a killed run left
            for path in remove_stale_temporaries(stage_dir(default_run_dir(cfg), cfg.stage)):
                print_fn(f"removed {path}, left behind by an interrupted run")
        run = assemble_run(cfg, print_fn)
    # after rank0_first: building the Trainer wraps the model in DDP, a collective of all ranks
    return Trainer(cfg, run, device=device, print_fn=print_fn, master_process=master_process, dist=dist)


# ----------------------------------------------------------------------------------------------
# the trainer

class Trainer:
    def __init__(self, cfg: TrainConfig, run: Run, *, device: torch.device | str = "cpu",
                 print_fn: Callable[[str], None] = print, master_process: bool = True,
                 dist: DistContext | None = None):
        self.cfg, self.spec, self.source, self.target = cfg, run.spec, run.source, run.target
        self.train_data, self.valid_data, self.out_dir = run.train, run.valid, Path(run.out_dir)
        model, source, train, valid, resume_state = run.model, run.source, run.train, run.valid, run.resume_state
        self.device = torch.device(device)
        # the plain model: state dicts, evaluation, encoder cache. On the CPU its linear layers use
        # oneDNN's GEMMs (nmt/cpu/gemm.py: same parameters and state dict, faster than MKL's on some
        # CPUs, docs/speed.md; plain F.linear under torch.distributed)
        self.model = use_onednn(model.to(self.device))
        self.dist = dist
        self.rank, self.world_size = (dist.rank, dist.world_size) if dist is not None else (0, 1)
        self.master_process = dist.master_process if dist is not None else master_process
        self._print = print_fn
        self.src_pad_id = source.pad_id
        self.peak_lr = cfg.peak_lr()
        self.batch_limits = self._batch_limits()
        self.batches_per_epoch = len(self.epoch_batches(0))
        self.updates_per_epoch = math.ceil(self.batches_per_epoch / cfg.update_freq)   # the schedule counts these
        if self.batches_per_epoch == 0:
            raise TrainingError(f"{train.directory}: no training batches for shard {self.rank} of {self.world_size}")
        self.warmup_steps = self._warmup_steps()
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0     # updates done; epoch in progress; its batches done
        self.best_dev_loss: float | None = None
        self.best_dev_bleu: float | None = None   # with --dev-bleu
        self.bad_epochs = 0
        self.cpu_seconds = 0.0                  # this stage's process CPU time so far (cache, updates, dev)
        self._cpu_start: tuple[float, float] | None = None   # (process_time, cpu_seconds) when fit() began
        self.owed: dict = {}                    # end-of-epoch work recorded in checkpoint_last.pt (settle_owed)
        self.epoch_totals = Totals()            # the epoch in progress: its training sums so far
        self.epoch_seconds = 0.0                # ... and its wall time before the last resume
        self._epoch_t0: float | None = None     # when this process began (or resumed) the epoch
        self.cache: EncoderCache | None = None
        self._cache_file: Path | None = None
        self._stop_requested = False            # Ctrl-C seen by this process
        self._stop_agreed = False               # distributed: some rank saw Ctrl-C by the last update
        self.ddp: torch.nn.Module | None = None   # DistributedDataParallel(self.model) when distributed
        # dev BLEU after each epoch and the length-penalty choice need the dev set's original text
        # (read once, checked up front)
        wants_text = (cfg.dev_bleu or bool(cfg.lenpen_grid)) and self.master_process
        self.dev_text = DevText(*split_text(valid.directory, "valid")[:2]) if wants_text else None
        self.set_stage(cfg.stage)
        amp = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.amp)
        # CPU or CUDA autocast: fp32 master weights and optimizer; products in bf16/fp16; the fused
        # loss keeps its softmax statistics in fp32 (nmt/model/loss.py)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=amp)) if amp else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler("cuda") if cfg.amp == "float16" and self.device.type == "cuda" else None
        if resume_state is not None:
            self.load_state(resume_state)
        if dist is not None:        # dropout masks differ between ranks, and after a resume
            torch.manual_seed(rank_seed(cfg.seed, self.rank, self.step))

    def _batch_limits(self) -> tuple[int | None, int]:
        """(max_tokens, max_sentences) of a training batch: --batching tokens turns --max-sentences
        into a token budget (nmt.data.binarized.token_budget), capped by --max-tokens when given."""
        cfg = self.cfg
        if cfg.batching == "sentences":
            return cfg.max_tokens, cfg.max_sentences
        budget, cap = token_budget(self.train_data.src_lengths, self.train_data.tgt_lengths, cfg.max_sentences)
        return (budget if cfg.max_tokens is None else min(budget, cfg.max_tokens)), cap

    def _warmup_steps(self) -> int:
        cfg = self.cfg
        if cfg.warmup_steps is not None:
            return cfg.warmup_steps
        epochs = cfg.warmup_epochs if cfg.warmup_epochs is not None else \
            warmup_epochs_for(self.peak_lr, cfg.warmup_reference)
        return warmup_steps_from_epochs(epochs, self.updates_per_epoch)

    def set_stage(self, stage: str) -> None:
        """Freeze/unfreeze for ``stage``, then a NEW optimizer over the parameters that now require
        grad and, when distributed, a NEW DDP wrapper: DDP only syncs the gradients of the parameters
        that required grad when it was built, so a stage change must re-wrap (after set_stage).

        Changing the stage of a live trainer (like train.py --stage finetune after stage 1) starts
        the new stage's own run: its directory, LR, warm-up, step count and early stopping.
        """
        if stage != self.cfg.stage:
            self.cfg = dataclasses.replace(self.cfg, stage=stage)
            self.out_dir = stage_dir(self.out_dir.parent, stage)
            self.peak_lr = self.cfg.peak_lr()
            self.warmup_steps = self._warmup_steps()
            self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
            self.best_dev_loss, self.best_dev_bleu, self.bad_epochs = None, None, 0
            self.cpu_seconds, self._cpu_start = 0.0, None
            self.owed, self.epoch_totals, self.epoch_seconds = {}, Totals(), 0.0
            self._release_cache()
        cfg = self.cfg
        self.model.set_stage(stage)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if stage == "decoder":
            assert not any(p.requires_grad for p in self.model.encoder.parameters()), "stage 1: encoder must be frozen"
        # fused: one kernel over all parameters instead of several per tensor, much faster per update
        # on the CPU (docs/speed.md); same arithmetic
        self.optimizer = torch.optim.Adam(params, lr=0.0, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                          weight_decay=cfg.weight_decay,
                                          fused=True if self.device.type in ("cpu", "cuda") else None)
        if self.dist is not None:
            self.ddp = None                     # the old wrapper's hooks go with it
            self.ddp = self.dist.wrap(self.model)

    # -- output, gated on master_process
    def print(self, msg: str) -> None:
        if self.master_process:
            self._print(msg)

    def log_metrics(self, record: dict) -> None:
        if self.master_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    def _logged(self) -> list[dict]:
        """The records in metrics.jsonl (a line cut short by a kill is skipped)."""
        path = self.out_dir / "metrics.jsonl"
        records = []
        for line in (path.read_text(encoding="utf-8").splitlines() if path.is_file() else []):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return records

    def repair_metrics(self) -> None:
        """On resume: drop the records written after the checkpoint being resumed (steps and epochs
        that will be replayed), so metrics.jsonl never holds a step or an epoch twice."""
        path = self.out_dir / "metrics.jsonl"
        if not self.master_process or not path.is_file():
            return
        kept = [r for r in self._logged()       # a line cut short by a kill is dropped: it is replayed
                if not (r.get("event") == "train" and r.get("step", 0) > self.step)
                and not (r.get("event") == "epoch" and r.get("epoch", 0) > self.epoch)]
        with atomic_write(path, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in kept))

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

    def settle_owed(self) -> None:
        """Finish the end of an epoch as recorded in checkpoint_last.pt's ``owed`` entry: the best and
        kept-epoch copies of it, and the epoch's metrics record. Saving the last checkpoint first
        and doing this after makes every step repeatable: a run killed anywhere in between redoes
        them on --resume (copies again; appends a record only if metrics.jsonl lacks it)."""
        owed, self.owed = self.owed, {}
        if not owed or not self.master_process:
            return
        last = self.out_dir / "checkpoint_last.pt"
        if owed.get("best"):
            atomic_copy(last, self.out_dir / "checkpoint_best.pt")
            fault_point("best-copied", self.epoch)
        if owed.get("epoch_checkpoint"):
            atomic_copy(last, self.out_dir / f"checkpoint_epoch{owed['epoch_checkpoint']}.pt")
            self._prune_epoch_checkpoints()
        done = {(r.get("event"), r.get("epoch")) for r in self._logged()}
        for record in owed.get("metrics", []):
            if (record["event"], record["epoch"]) not in done:
                self.log_metrics(record)
        fault_point("metrics-written", self.epoch)

    # -- data
    def epoch_batches(self, epoch: int, world_size: int | None = None) -> list[np.ndarray]:
        """This rank's batches (pair-index arrays) for an epoch: the one place batches are made.
        Ranks own fixed disjoint shares of the pairs (nmt.train.distributed.shard_batches); same count on every rank.
        ``world_size``: rank 0's batches in a job of that size (to locate a checkpoint of another job)."""
        world_size = self.world_size if world_size is None else world_size
        return shard_batches(self.train_data.src_lengths, self.train_data.tgt_lengths,
                             max_tokens=self.batch_limits[0], max_sentences=self.batch_limits[1],
                             seed=self.cfg.seed, epoch=epoch, num_shards=world_size,
                             shard=self.rank if world_size == self.world_size else 0)

    def valid_batches(self) -> list[np.ndarray]:
        return dev_batches(self.valid_data, self.cfg.max_sentences, self.cfg.max_tokens)

    # -- state
    def state_dict(self) -> dict:
        return {"format": FORMAT, "stage": self.cfg.stage, "model_spec": self.spec.to_dict(),
                "model": self.model.state_dict(), "source": self.source.to_dict(), "target": self.target.to_dict(),
                "config": self.cfg.to_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": {"peak_lr": self.peak_lr, "warmup_steps": self.warmup_steps},
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "best_dev_loss": self.best_dev_loss, "best_dev_bleu": self.best_dev_bleu,
                "bad_epochs": self.bad_epochs, "rng": rng_state(),
                "world_size": self.world_size, "cpu_seconds": self._cpu_now(), "owed": self.owed,
                "epoch_totals": dataclasses.asdict(self.epoch_totals),
                "epoch_seconds": self.epoch_seconds + (time.time() - self._epoch_t0 if self._epoch_t0 else 0.0)}

    def load_state(self, state: dict) -> None:
        """Continue from a checkpoint_last.pt (the model weights are already loaded)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        self.best_dev_loss, self.bad_epochs = state["best_dev_loss"], int(state["bad_epochs"])
        self.best_dev_bleu = state.get("best_dev_bleu")            # absent in older checkpoints
        self.cpu_seconds = float(state.get("cpu_seconds", 0.0))     # absent in older checkpoints
        self.owed = dict(state.get("owed") or {})                     # end-of-epoch work still to do
        if self.batch_in_epoch > 0 and "epoch_totals" in state:      # the epoch's sums so far
            self.epoch_totals = Totals(**state["epoch_totals"])
            self.epoch_seconds = float(state.get("epoch_seconds", 0.0))
        if self.cfg.warmup_steps is None and self.cfg.warmup_epochs is None:
            self.warmup_steps = int(state["schedule"]["warmup_steps"])    # same schedule as before the break
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

    def save(self, name: str) -> Path:
        path = self.out_dir / name
        if self.master_process:
            save_checkpoint(path, self.state_dict())
            fault_point(f"{Path(name).stem}-saved", self.epoch)
        return path

    # -- encoder cache
    def maybe_build_cache(self) -> None:
        """Stage 1: encode the training pairs once; a rank caches only its own pairs (and, on disk,
        in its own temporary file, the one file other ranks than 0 write; removed at the end)."""
        if self.cfg.stage != "decoder":
            return
        cfg = self.cfg
        hidden = self.model.encoder.config.hidden_size
        pairs = shard_pairs(len(self.train_data), self.world_size, self.rank, cfg.seed) if self.world_size > 1 else None
        nbytes = EncoderCache.size_bytes(self.train_data, hidden, cfg.cache_dtype, pairs)
        name = f"encoder_cache.{cfg.cache_dtype}.npy" if pairs is None else \
            f"encoder_cache.rank{self.rank}.{cfg.cache_dtype}.npy"
        self._cache_file = self.out_dir / name
        where, reason = plan_cache(cfg.encoder_cache, nbytes, cfg.cache_max_gb * 2**30, self.out_dir)
        tokens = int(self.train_data.src_lengths.sum() if pairs is None else self.train_data.src_lengths[pairs].sum())
        self.print(f"encoder cache{'' if pairs is None else ' (rank 0, its share of the pairs)'}: {tokens:,} source "
                   f"tokens x {hidden} x {np.dtype(cfg.cache_dtype).itemsize} bytes ({cfg.cache_dtype}) = {reason}")
        if where == "off":
            return
        self.cache = EncoderCache.build(self.model, self.train_data, self.src_pad_id, dtype=cfg.cache_dtype,
                                        path=self._cache_file if where == "disk" else None, device=self.device,
                                        print_fn=self.print, progress=cfg.progress and self.master_process,
                                        pairs=pairs)

    def _release_cache(self) -> None:
        if self.cache is not None and self._cache_file is not None and self.cache.values.__class__ is np.memmap:
            self.cache = None
            remove_cache_file(self._cache_file)
        self.cache = None

    # -- one step and the dev set
    def forward_loss(self, batch, model: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss_sum, nll_sum) of a collated batch on this device; ``model``: the DDP wrapper in training."""
        encoder_out = None
        if self.cache is not None and self.model.training:
            encoder_out = self.cache.gather(batch.indices, batch.src_mask).to(self.device, non_blocking=True)
        with self.autocast():
            return (model or self.model)(batch.src_ids, batch.src_mask, batch.prev_tokens, encoder_out=encoder_out,
                                         target=batch.target, label_smoothing=self.cfg.label_smoothing)

    def train_step(self, batches: list) -> tuple[float, float, float]:
        """One update from the collated ``batches`` (``--update-freq`` of them; gradients accumulated:
        the same update as one batch holding them all); returns (loss_sum, nll_sum, lr). Raises
        DivergedError on a non-finite loss, before the parameters change."""
        self.model.train()
        tokens = sum(b.num_tokens for b in batches)
        scale = 1.0 / tokens
        if self.dist is not None:
            # DDP AVERAGES gradients over ranks; scaling each rank's loss sum by world_size / global
            # tokens makes that average the gradient of (global loss sum / global tokens), i.e. one
            # process training on the union of the ranks' batches. The same reduction tells every
            # rank about Ctrl-C on any rank (all stop together).
            global_tokens, stop = self.dist.all_reduce_sum([tokens, float(self._stop_requested)])
            scale = self.world_size / global_tokens
            self._stop_agreed = stop > 0
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = nll_value = 0.0
        for i, batch in enumerate(batches):
            # under DDP the gradients are synchronised once, with the last batch of the update
            last = i == len(batches) - 1
            with self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext():
                loss_sum, nll_sum = self.forward_loss(batch, self.ddp)
                loss = loss_sum * scale
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            loss_value += loss_sum.item()
            nll_value += nll_sum.item()
        if self.dist is not None:       # a non-finite loss on any rank stops every rank
            global_loss, = self.dist.all_reduce_sum([loss_value])
            loss_value = loss_value if math.isfinite(global_loss) else global_loss
        if not math.isfinite(loss_value):
            raise DivergedError(f"non-finite training loss ({loss_value}) at update {self.step + 1} (epoch "
                                f"{self.epoch + 1}, batch {self.batch_in_epoch + 1}); nothing was saved from this "
                                f"point; {self.out_dir / 'checkpoint_last.pt'} is the last good state. Try a lower "
                                f"--lr, --clip-norm 1, or --amp off")
        lr = get_lr(self.step + 1, peak_lr=self.peak_lr, warmup_steps=self.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], self.cfg.clip_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss_value, nll_value, lr

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Dev loss and perplexity (nats; ppl = exp(NLL per token)) with dropout off.
        Distributed: each rank scores every world_size-th dev batch, the sums are reduced."""
        self.model.eval()
        totals = sum_losses(self.valid_data, self.valid_batches()[self.rank::self.world_size], self.src_pad_id,
                            self.device, self.forward_loss)
        return self.reduce_totals(totals).summary()

    def dev_bleu(self) -> float | None:
        """Greedy dev BLEU (nmt/train/end_of_stage.py); None without --dev-bleu or on ranks other than 0."""
        if self.dev_text is None or not self.cfg.dev_bleu:
            return None
        return greedy_dev_bleu(self.model, self.source, self.target, self.device, self.dev_text)

    def choose_length_penalty(self) -> LengthPenaltyChoice | None:
        """--lenpen-grid: the dev-set choice of the length penalty, stored in checkpoint_best.pt (rank 0;
        nmt/train/end_of_stage.py). None when off or on other ranks."""
        best = self.out_dir / "checkpoint_best.pt"
        if not self.cfg.lenpen_grid or self.dev_text is None or not best.is_file():
            return None
        done = load_checkpoint(best, required=()).get("decoding", {})
        if done.get("grid") == parse_grid(self.cfg.lenpen_grid):       # a resumed run that had finished
            self.print(f"length penalty {done['lenpen']:g}: already chosen and stored in {best}")
            if not any(r.get("event") == "lenpen" for r in self._logged()):   # killed before its record
                self.log_metrics({"event": "lenpen", **done})
            return None
        t0 = time.time()
        choice = store_length_penalty_choice(best, self.device, self.dev_text, self.cfg.lenpen_grid)
        fault_point("lenpen-stored", self.epoch)
        self.log_metrics({"event": "lenpen", **choice.to_dict(), "seconds": round(time.time() - t0, 2)})
        self.print(f"{choice.summary()}; stored in {best} ({time.time() - t0:.0f} s)")
        return choice

    def reduce_totals(self, totals: Totals) -> Totals:
        """Sums over all ranks (the same on every rank); the totals themselves in one process."""
        if self.dist is None:
            return totals
        loss, nll, tokens, sentences = self.dist.all_reduce_sum([totals.loss, totals.nll, totals.tokens,
                                                                 totals.sentences])
        return Totals(loss, nll, int(round(tokens)), int(round(sentences)))

    # -- Ctrl-C
    def request_stop(self) -> None:
        """Finish the current update, save checkpoint_last.pt and return from fit()."""
        self._stop_requested = True

    @contextlib.contextmanager
    def _sigint_saves(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self.print("\ninterrupted: finishing this update, then saving checkpoint_last.pt (Ctrl-C again to abort)")
            self.request_stop()

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    # -- the loop
    def fit(self) -> str:
        """Train until early stopping, --max-epochs or --max-steps; returns why it stopped:
        "converged" | "max_epochs" | "max_steps" | "cpu_budget" | "interrupted"."""
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
            metrics = self.out_dir / "metrics.jsonl"
            if self.master_process and metrics.is_file():     # a stage started over: keep the old log aside
                os.replace(metrics, metrics.with_name("metrics.previous.jsonl"))
            self.log_metrics({"event": "start", "config": cfg.to_dict(), "parameters": counts,
                              "warmup_steps": self.warmup_steps, "batches_per_epoch": self.batches_per_epoch,
                              "updates_per_epoch": self.updates_per_epoch, "tokens_per_update": round(per_update),
                              "world_size": self.world_size})
        if self.step > 0:                       # resumed: replayed steps must not be logged twice, and
            self.repair_metrics()               # the end of an epoch that a kill cut short is finished
        self.settle_owed()
        if cfg.max_steps is not None and self.step >= cfg.max_steps:
            return "max_steps"
        self._cpu_start = (time.process_time(), self.cpu_seconds)
        self.maybe_build_cache()
        try:
            with self._sigint_saves():
                why = self._loop()
            if why in ("converged", "max_epochs", "cpu_budget"):
                self.choose_length_penalty()
            if self.dist is not None:
                self.dist.barrier()     # no rank leaves before rank 0's last checkpoint is written
            return why
        finally:
            self._release_cache()

    def _cpu_now(self) -> float:
        """This stage's CPU seconds up to now (all threads of this process; summed over resumes)."""
        start = self._cpu_start
        return self.cpu_seconds if start is None else start[1] + time.process_time() - start[0]

    def _loop(self) -> str:
        while True:
            why = self._stop_reason() or self._train_epoch()
            if why:
                return why
            self._end_epoch()

    def _stop_reason(self) -> str | None:
        """Why the stage is over, checked between epochs (and so right after a resume, too)."""
        cfg = self.cfg
        best = self.best_dev_bleu if cfg.best_metric == "bleu" else self.best_dev_loss
        best = f"best dev {cfg.best_metric} {'none' if best is None else f'{best:.3f}'}"
        if self.epoch > 0 and self.bad_epochs >= cfg.patience:
            self.print(f"early stop: no dev improvement for {cfg.patience} epochs; {best} in "
                       f"{self.out_dir / 'checkpoint_best.pt'}")
            return "converged"
        if cfg.max_cpu_minutes is not None and self.cpu_seconds >= 60 * cfg.max_cpu_minutes:
            self.print(f"CPU budget reached: {self.cpu_seconds / 60:.1f} of --max-cpu-minutes "
                       f"{cfg.max_cpu_minutes:g}; {best}")
            return "cpu_budget"
        if self.epoch >= cfg.max_epochs:
            self.print(f"reached --max-epochs {cfg.max_epochs}; {best}")
            return "max_epochs"
        return None

    def _train_epoch(self) -> str | None:
        """The updates of the epoch in progress; "interrupted" or "max_steps" when it stops early
        (checkpoint_last.pt then holds the epoch's partial sums, so its record will cover it all)."""
        cfg, totals = self.cfg, self.epoch_totals
        batches = self.epoch_batches(self.epoch)
        bar = self._progress_bar(len(batches))
        self._epoch_t0, tokens_since = time.time(), 0
        while self.batch_in_epoch < len(batches):
            group = [collate(self.train_data, idx, self.src_pad_id).to(self.device)
                     for idx in batches[self.batch_in_epoch:self.batch_in_epoch + cfg.update_freq]]
            loss_sum, nll_sum, lr = self.train_step(group)
            self.step += 1
            self.batch_in_epoch += len(group)
            tokens = sum(b.num_tokens for b in group)
            totals.add(loss_sum, nll_sum, tokens, sum(len(b) for b in group))
            tokens_since += tokens
            if bar is not None:
                s = totals.summary()
                bar.set_postfix(loss=f"{s['loss']:.3f}", ppl=f"{s['ppl']:.1f}", lr=f"{lr:.2e}",
                                tok_s=f"{tokens_since / max(time.time() - self._epoch_t0, 1e-9):.0f}", refresh=False)
                bar.update(len(group))
            if self.step % 100 == 0:
                self.log_metrics({"event": "train", "step": self.step, "epoch": self.epoch + 1, "lr": lr,
                                  **self.reduce_totals(totals).summary()})
            stop = self._stop_requested if self.dist is None else self._stop_agreed
            if stop or (cfg.max_steps is not None and self.step >= cfg.max_steps):
                if bar is not None:
                    bar.close()
                path = self.save("checkpoint_last.pt")
                why = "interrupted" if stop else "max_steps"
                self.log_metrics({"event": why, "step": self.step, "epoch": self.epoch + 1})
                self.print(f"{why}: saved {path} at update {self.step}; continue with --resume")
                return why
        if bar is not None:
            bar.close()
        return None

    def _end_epoch(self) -> None:
        """Dev loss, early-stopping state, then the epoch's files: checkpoint_last.pt FIRST, recording
        what is owed (best and kept-epoch copies, the metrics record), then those (settle_owed)."""
        cfg = self.cfg
        elapsed = self.epoch_seconds + time.time() - self._epoch_t0
        train_stats = self.reduce_totals(self.epoch_totals).summary()
        dev = self.evaluate()
        if not math.isfinite(dev["loss"]):
            raise DivergedError(f"non-finite dev loss ({dev['loss']}) after epoch {self.epoch + 1}; nothing saved "
                                f"for this epoch. Try a lower --lr or --clip-norm 1")
        bleu = self.dev_bleu()
        if cfg.best_metric == "bleu":           # --best-metric: which dev score picks the best checkpoint
            improved = bleu is not None and (self.best_dev_bleu is None or bleu > self.best_dev_bleu)
        else:
            improved = self.best_dev_loss is None or dev["loss"] < self.best_dev_loss
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        if self.best_dev_loss is None or dev["loss"] < self.best_dev_loss:
            self.best_dev_loss = dev["loss"]
        if bleu is not None and (self.best_dev_bleu is None or bleu > self.best_dev_bleu):
            self.best_dev_bleu = bleu
        self.epoch += 1
        self.batch_in_epoch = 0
        self.cpu_seconds = self._cpu_now()
        record = {"time": round(time.time(), 3), "event": "epoch", "epoch": self.epoch, "step": self.step,
                  "seconds": round(elapsed, 2), "cpu_seconds": round(self.cpu_seconds, 3), "train": train_stats,
                  "dev": dev, **({"dev_bleu": round(bleu, 2), "dev_bleu_search": "greedy"} if bleu is not None else {}),
                  "best_dev_loss": self.best_dev_loss, "best_dev_bleu": self.best_dev_bleu,
                  "best_metric": cfg.best_metric, "improved": improved}
        keep = self.epoch in cfg.kept_epochs() or cfg.keep_last_epochs > 0
        self.owed = {"best": improved, "epoch_checkpoint": self.epoch if keep else None, "metrics": [record]}
        self.epoch_totals, self.epoch_seconds, self._epoch_t0 = Totals(), 0.0, None
        self.save("checkpoint_last.pt")
        self.settle_owed()
        self.print(f"epoch {self.epoch}: train loss {train_stats['loss']:.3f} ppl {train_stats['ppl']:.2f} | "
                   f"dev loss {dev['loss']:.3f} ppl {dev['ppl']:.2f}{' (best)' if improved else ''}"
                   f"{'' if bleu is None else f' BLEU {bleu:.2f} (greedy)'} | "
                   f"{train_stats['tokens'] / max(elapsed, 1e-9):.0f} tok/s, {elapsed:.0f} s")

    def _progress_bar(self, total: int):
        if not (self.cfg.progress and self.master_process):
            return None
        from tqdm import tqdm
        return tqdm(total=total, initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}", unit="batch",
                    dynamic_ncols=True, leave=False)

