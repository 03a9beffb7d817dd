"""The training loop of Imamura & Sumita (2019), to be read top to bottom with the paper open.

:meth:`Trainer.fit` runs epochs (:meth:`Trainer.train_epoch`) of updates (:meth:`Trainer.train_step`:
LR schedule, forward, loss, backward, clip, Adam step), each followed by the dev loss and the
early-stopping count (:meth:`Trainer.end_epoch`). :func:`setup` builds a Trainer from a TrainConfig
over the run nmt/train/assemble.py puts together. Elsewhere: checkpoints, metrics.jsonl and
``--resume`` (nmt/train/run_state.py, which the Trainer inherits), the warm-up (nmt/train/schedule.py),
dev BLEU and the length-penalty choice (nmt/train/end_of_stage.py), dev loss sums (nmt/train/evaluation.py).

Stages (see docs/design.md and the paper):

- ``decoder`` (stage 1): BERT frozen -- ``requires_grad_(False)``, kept in eval mode, run under
  ``no_grad`` -- and the optimizer holds only decoder parameters. Because the frozen encoder's
  outputs never change, they are computed once (nmt/train/encoder_cache.py) unless ``--encoder-cache off``.
- ``finetune`` (stage 2): starts from the stage-1 best checkpoint, everything trainable, dropout on
  both sides, a NEW Adam over all parameters, LR 8e-5.
- ``direct``: BERT + a fresh decoder trained end to end (the paper's failing baseline).
- ``scratch``: the Transformer baselines.

Data-parallel training (torchrun; nmt/train/distributed.py) is on only when a ``DistContext`` is given:
the model is wrapped in DistributedDataParallel after freezing (DDP registers the parameters that
require grad when it is built), each rank trains on its own share of the pairs
(:meth:`Trainer.epoch_batches`), the loss is normalised by the GLOBAL token count (so N ranks x their
batches = 1 process x the union batch), dev sums, stop signals and NaN decisions are reduced over ranks,
and only rank 0 prints and writes (``master_process``). Without a DistContext none of this runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nmt.cpu.gemm import use_onednn
from nmt.data.binarized import collate, split_text, token_budget
from nmt.decode.lenpen_choice import LengthPenaltyChoice
from nmt.errors import DivergedError, TrainingError
from nmt.files import fault_point, stage_dir
from nmt.train.assemble import Run, prepare_run
from nmt.train.config import TrainConfig
from nmt.train.distributed import DistContext, rank_seed, shard_batches, shard_pairs
from nmt.train.encoder_cache import EncoderCache, plan_cache, remove_cache_file
from nmt.train.end_of_stage import DevText, greedy_dev_bleu, store_length_penalty_choice
from nmt.train.evaluation import Totals, dev_batches, sum_losses
from nmt.train.run_state import RunState
from nmt.train.schedule import get_lr, warmup_steps_for


def setup(cfg: TrainConfig, print_fn: Callable[[str], None] = print, master_process: bool = True,
          dist: DistContext | None = None) -> "Trainer":
    """Validate the config, assemble the run (nmt/train/assemble.py: prepare_run) and wrap it in a Trainer.

    ``dist``: this process's place in a torchrun job (nmt.train.distributed.init_from_env); rank 0 prepares
    shared files (demo data, converted BERT) before the other ranks read them.
    """
    if dist is not None:
        master_process = dist.master_process
        print_fn = print_fn if master_process else (lambda *_: None)
    cfg, run, device = prepare_run(cfg, print_fn, master_process, dist)
    # after rank0_first: building the Trainer wraps the model in DDP, a collective of all ranks
    return Trainer(cfg, run, device=device, print_fn=print_fn, master_process=master_process, dist=dist)


class Trainer(RunState):
    def __init__(self, cfg: TrainConfig, run: Run, *, device: torch.device | str = "cpu",
                 print_fn: Callable[[str], None] = print, master_process: bool = True,
                 dist: DistContext | None = None):
        self.cfg, self.spec, self.source, self.target = cfg, run.spec, run.source, run.target
        self.train_data, self.valid_data, self.out_dir = run.train, run.valid, Path(run.out_dir)
        self.src_pad_id = run.source.pad_id
        self.device = torch.device(device)
        # the plain model: state dicts, evaluation, encoder cache. On the CPU its linear layers use
        # oneDNN's GEMMs (nmt/cpu/gemm.py: same parameters and state dict, faster than MKL's on some
        # CPUs, docs/speed.md)
        self.model = use_onednn(run.model.to(self.device))
        self.dist, self.ddp = dist, None        # ddp: DistributedDataParallel(self.model) when distributed
        self.rank, self.world_size = (dist.rank, dist.world_size) if dist is not None else (0, 1)
        self.master_process = dist.master_process if dist is not None else master_process
        self._print = print_fn
        self.batch_limits = self._batch_limits()
        self.batches_per_epoch = len(self.epoch_batches(0))
        if self.batches_per_epoch == 0:
            raise TrainingError(f"{run.train.directory}: no training batches for shard {self.rank} of {self.world_size}")
        self.updates_per_epoch = math.ceil(self.batches_per_epoch / cfg.update_freq)   # the schedule counts these
        self.cache: EncoderCache | None = None
        self._cache_file: Path | None = None
        # dev BLEU after each epoch and the length-penalty choice need the dev set's original text
        # (read once, checked up front)
        wants_text = (cfg.dev_bleu or bool(cfg.lenpen_grid)) and self.master_process
        self.dev_text = DevText(*split_text(run.valid.directory, "valid")[:2]) if wants_text else None
        amp = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.amp)
        # CPU or CUDA autocast: fp32 master weights and optimizer; products in bf16/fp16; the fused
        # loss keeps its softmax statistics in fp32 (nmt/model/loss.py)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=amp)) if amp else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler("cuda") if cfg.amp == "float16" and self.device.type == "cuda" else None
        self.start_stage(run.resume_state)
        if dist is not None:        # dropout masks differ between ranks, and after a resume
            torch.manual_seed(rank_seed(cfg.seed, self.rank, self.step))

    def start_stage(self, resume_state: dict | None = None) -> None:
        """The stage's optimizer, LR and counters: no update done yet -- or, with ``resume_state``
        (checkpoint_last.pt's contents), where it stopped -- and its warm-up in updates."""
        cfg = self.cfg
        self._freeze_and_optimize()
        self.peak_lr = cfg.peak_lr()
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0     # updates done; epoch in progress; its batches done
        self.best_dev_loss: float | None = None
        self.best_dev_bleu: float | None = None   # with --dev-bleu
        self.bad_epochs = 0                     # epochs since the dev score (--best-metric) last improved
        self.reset_run_state()                  # nmt/train/run_state.py: nothing owed, no partial sums
        if resume_state is not None:
            self.load_state(resume_state)
        self.warmup_steps = warmup_steps_for(
            peak_lr=self.peak_lr, updates_per_epoch=self.updates_per_epoch, warmup_steps=cfg.warmup_steps,
            warmup_epochs=cfg.warmup_epochs, warmup_reference=cfg.warmup_reference,
            resumed=None if resume_state is None else int(resume_state["schedule"]["warmup_steps"]))

    def _freeze_and_optimize(self) -> None:
        """Freeze/unfreeze for the stage (stage 1: the encoder), then a NEW Adam over the parameters
        that now require grad and, when distributed, a NEW DDP wrapper: DDP only syncs the gradients
        of the parameters that required grad when it was built."""
        stage, cfg = self.cfg.stage, self.cfg
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

    def set_stage(self, stage: str) -> None:
        """Switch this live trainer to ``stage`` (tests/distributed_worker.py does; train.py --stage
        finetune is a new process that starts from the stage-1 BEST checkpoint): the new stage's own
        directory, LR, warm-up, counters and early stopping, from the weights the model has now.
        Always a new optimizer and, when distributed, a new DDP wrapper (after the freezing)."""
        if stage == self.cfg.stage:
            self._freeze_and_optimize()
            return
        self.cfg = dataclasses.replace(self.cfg, stage=stage)
        self.out_dir = stage_dir(self.out_dir.parent, stage)
        self._release_cache()
        self.start_stage()

    # -- the loop
    def fit(self) -> str:
        """Train until early stopping, --max-epochs or --max-steps; returns why it stopped:
        "converged" | "max_epochs" | "max_steps" | "cpu_budget" | "interrupted"."""
        self.announce_start()                   # printed; at update 0 also logged (run_state.py)
        self.repair_after_resume()              # nmt/train/run_state.py (nothing to do on a fresh start)
        if self.cfg.max_steps is not None and self.step >= self.cfg.max_steps:
            return "max_steps"
        self.start_clocks()
        self.maybe_build_cache()
        try:
            with self.stop_signals_save():      # Ctrl-C, SIGTERM, SIGHUP: save, then stop (run_state.py)
                while not (why := self._stop_reason() or self.train_epoch()):
                    self.end_epoch()
            if why in ("converged", "max_epochs", "cpu_budget"):
                self.choose_length_penalty()
            if self.dist is not None:
                self.dist.wait_for_rank0()      # no rank leaves before rank 0's last checkpoint is written
            return why
        finally:
            self._release_cache()

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

    def train_epoch(self) -> str | None:
        """The updates of the epoch in progress (from ``batch_in_epoch``, after a resume); "interrupted"
        or "max_steps" when it stops early (checkpoint_last.pt then holds the epoch's partial sums)."""
        cfg, totals = self.cfg, self.epoch_totals
        batches = self.epoch_batches(self.epoch)
        from tqdm import tqdm                   # disabled without --progress and off rank 0: silent
        bar = tqdm(total=len(batches), initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}", unit="batch",
                   dynamic_ncols=True, leave=False, disable=not (cfg.progress and self.master_process))
        self._epoch_t0 = t0 = time.time()
        tokens_since = 0                        # by this process in this epoch: the bar's tokens/s
        while self.batch_in_epoch < len(batches):
            group = [collate(self.train_data, idx, self.src_pad_id).to(self.device)
                     for idx in batches[self.batch_in_epoch:self.batch_in_epoch + cfg.update_freq]]
            loss_sum, nll_sum, lr = self.train_step(group)
            self.step += 1
            self.batch_in_epoch += len(group)
            tokens = sum(b.num_tokens for b in group)
            totals.add(loss_sum, nll_sum, tokens, sum(len(b) for b in group))
            tokens_since += tokens
            s = totals.summary()
            bar.set_postfix(loss=f"{s['loss']:.3f}", ppl=f"{s['ppl']:.1f}", lr=f"{lr:.2e}",
                            tok_s=f"{tokens_since / max(time.time() - t0, 1e-9):.0f}", refresh=False)
            bar.update(len(group))
            if self.step % 100 == 0:
                self.log_metrics({"event": "train", "step": self.step, "epoch": self.epoch + 1, "lr": lr,
                                  **self.reduce_totals(totals).summary()})
            stop = self._stop_requested if self.dist is None else self._stop_agreed
            if stop or (cfg.max_steps is not None and self.step >= cfg.max_steps):
                bar.close()
                return self.save_stopped("interrupted" if stop else "max_steps")
            if (cfg.save_interval_updates and self.step % cfg.save_interval_updates == 0
                    and self.batch_in_epoch < len(batches)):      # the epoch's end saves anyway
                self.save("checkpoint_last.pt")     # with the epoch's partial sums, as a stop signal's save
        bar.close()
        return None

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
            # rank about a stop signal on any rank (all stop after this update).
            global_tokens, *stop_votes = self.dist.all_reduce_sum([tokens, *self.stop_votes()])
            scale = self.world_size / global_tokens
            self._stop_agreed = self.agree_on_stop(stop_votes)
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

    def forward_loss(self, batch, model: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss_sum, nll_sum) of a collated batch on this device; ``model``: the DDP wrapper in training."""
        encoder_out = None
        if self.cache is not None and self.model.training:
            encoder_out = self.cache.gather(batch.indices, batch.src_mask).to(self.device, non_blocking=True)
        with self.autocast():
            return (model or self.model)(batch.src_ids, batch.src_mask, batch.prev_tokens, encoder_out=encoder_out,
                                         target=batch.target, label_smoothing=self.cfg.label_smoothing)

    def end_epoch(self) -> None:
        """Dev loss (and BLEU), the best scores and the early-stopping count, then the epoch's
        checkpoints and metrics record (nmt/train/run_state.py: save_epoch)."""
        cfg = self.cfg
        elapsed = self.epoch_elapsed()
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
        self.save_epoch({"time": round(time.time(), 3), "event": "epoch", "epoch": self.epoch, "step": self.step,
                         "seconds": round(elapsed, 2), "cpu_seconds": round(self.cpu_seconds, 3),
                         "train": train_stats, "dev": dev,
                         **({"dev_bleu": round(bleu, 2), "dev_bleu_search": "greedy"} if bleu is not None else {}),
                         "best_dev_loss": self.best_dev_loss, "best_dev_bleu": self.best_dev_bleu,
                         "best_metric": cfg.best_metric, "improved": improved}, improved)
        self.print(f"epoch {self.epoch}: train loss {train_stats['loss']:.3f} ppl {train_stats['ppl']:.2f} | "
                   f"dev loss {dev['loss']:.3f} ppl {dev['ppl']:.2f}{' (best)' if improved else ''}"
                   f"{'' if bleu is None else f' BLEU {bleu:.2f} (greedy)'} | "
                   f"{train_stats['tokens'] / max(elapsed, 1e-9):.0f} tok/s, {elapsed:.0f} s")

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
        nmt/train/end_of_stage.py). None when off, on other ranks, or already stored (a resumed run)."""
        best = self.out_dir / "checkpoint_best.pt"
        if not self.cfg.lenpen_grid or self.dev_text is None or not best.is_file() or self.length_penalty_stored(best):
            return None
        t0 = time.time()
        choice = store_length_penalty_choice(best, self.device, self.dev_text, self.cfg.lenpen_grid)
        fault_point("lenpen-stored", self.epoch)
        self.log_metrics({"event": "lenpen", **choice.to_dict(), "seconds": round(time.time() - t0, 2)})
        self.print(f"{choice.summary()}; stored in {best} ({time.time() - t0:.0f} s)")
        return choice

    # -- data
    def _batch_limits(self) -> tuple[int | None, int]:
        """(max_tokens, max_sentences) of a training batch: --batching tokens turns --max-sentences
        into a token budget (nmt.data.binarized.token_budget), capped by --max-tokens when given."""
        cfg = self.cfg
        if cfg.batching == "sentences":
            return cfg.max_tokens, cfg.max_sentences
        budget, cap = token_budget(self.train_data.src_lengths, self.train_data.tgt_lengths, cfg.max_sentences)
        return (budget if cfg.max_tokens is None else min(budget, cfg.max_tokens)), cap

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

    def reduce_totals(self, totals: Totals) -> Totals:
        """Sums over all ranks (the same on every rank); the totals themselves in one process."""
        return totals if self.dist is None else self.dist.reduce_totals(totals)

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
        on_disk = self.cache is not None and self.cache.values.__class__ is np.memmap
        self.cache = None
        if on_disk and self._cache_file is not None:
            remove_cache_file(self._cache_file)

    # -- output, gated on master_process
    def print(self, msg: str) -> None:
        if self.master_process:
            self._print(msg)
