"""The loss and perplexity of a model on a prepared split: :func:`sum_losses` (the trainer's dev
evaluation) and :func:`checkpoint_perplexity` (the same for a saved checkpoint).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nmt.data.binarized import ParallelData, collate, make_batches, read_meta
from nmt.errors import EvaluationError
from nmt.model.loss import perplexity
from nmt.text.pipeline import SourcePipeline, TargetPipeline
from nmt.weights.checkpoint import (
    check_vocabularies,
    load_checkpoint,
    model_from_checkpoint,
)


@dataclass
class Totals:
    """Sums over batches; per-token values are sums / tokens."""
    loss: float = 0.0           # label-smoothed loss, nats
    nll: float = 0.0            # negative log-likelihood, nats
    tokens: int = 0             # real target tokens (with EOS)
    sentences: int = 0

    def add(self, loss: float, nll: float, tokens: int, sentences: int) -> None:
        self.loss += loss
        self.nll += nll
        self.tokens += tokens
        self.sentences += sentences

    def summary(self) -> dict:
        t = max(self.tokens, 1)
        return {"loss": self.loss / t, "nll": self.nll / t, "ppl": perplexity(self.nll, self.tokens),
                "tokens": self.tokens, "sentences": self.sentences}


def dev_batches(data: ParallelData, max_sentences: int, max_tokens: int | None) -> list[np.ndarray]:
    """The fixed (seed 0, epoch 0) length-bucketed batches a dev/test split is scored in."""
    return make_batches(data.src_lengths, data.tgt_lengths, max_sentences=max_sentences, max_tokens=max_tokens,
                        seed=0, epoch=0)


@torch.no_grad()
def sum_losses(data: ParallelData, batches, src_pad_id: int, device, loss_fn) -> Totals:
    """Loss and NLL sums of ``loss_fn(batch) -> (loss_sum, nll_sum)`` over the given batches of a split
    (the caller puts the model in eval mode). One loop for the trainer's dev evaluation and
    :func:`checkpoint_perplexity`, so the two give the same numbers."""
    totals = Totals()
    for idx in batches:
        batch = collate(data, idx, src_pad_id).to(device)
        loss_sum, nll_sum = loss_fn(batch)
        totals.add(loss_sum.item(), nll_sum.item(), batch.num_tokens, len(batch))
    return totals


def checkpoint_perplexity(checkpoint: str | Path, data_dir: str | Path, split: str = "valid", *,
                          device: str = "cpu", max_sentences: int | None = None, max_batches: int | None = None,
                          dropout: bool = False, bert: str | Path | None = None) -> dict:
    """Label-smoothed loss, NLL per token and perplexity of a checkpoint on a prepared split.

    The trainer's dev evaluation (nmt/train/trainer.py ``Trainer.evaluate``): dropout off, the same
    length-bucketed batches (seed 0) and the checkpoint's own label smoothing; perplexity is
    exp(NLL per target token, EOS included), so it equals the ``dev.ppl`` the trainer logged for
    that checkpoint. Returns {"loss", "nll", "ppl", "tokens", "sentences"}.

    A diagnostic of a model whose dev loss rises while its training loss falls: ``dropout=True``
    scores with dropout on, as in training (dropout masks from seed 0), and ``max_batches`` scores
    only the first batches (a quick look at the training split): if the model does much better with
    dropout than without, on the training data itself, it has learned to depend on dropout's noise.
    ``bert``: the BERT of a stage-1 checkpoint, which holds only a reference to it, when it is not
    where the checkpoint says (nmt/weights/checkpoint.py).
    """
    data_dir, checkpoint = Path(data_dir), Path(checkpoint)
    splits = read_meta(data_dir).get("splits", {})
    if split not in splits:
        raise EvaluationError(f"{data_dir}: no split {split!r} (has {', '.join(sorted(splits)) or 'none'}); "
                              f"prepare it with tools/prepare_data.py (--valid-prefix / --test-prefix)")
    ckpt = load_checkpoint(checkpoint, bert=bert)
    data = ParallelData(data_dir, split)
    source = SourcePipeline.from_dict(data.source_config, what=str(data_dir / "source.json"))
    target = TargetPipeline.from_dict(data.target_config, what=str(data_dir / "target.json"))
    check_vocabularies(ckpt, source, target, checkpoint, data_dir)
    config = ckpt.get("config", {})
    epsilon = float(config.get("label_smoothing", 0.1))
    max_sentences = max_sentences or int(config.get("max_sentences", 500))
    batches = dev_batches(data, max_sentences, config.get("max_tokens"))[:max_batches]
    # the caller's RNG untouched (building the model draws its throw-away initial weights from it),
    # and the same dropout masks on every call
    with torch.random.fork_rng(devices=[] if torch.device(device).type != "cuda" else None):
        model, _ = model_from_checkpoint(ckpt, checkpoint)
        model.to(device).train(dropout)
        torch.manual_seed(0)

        def loss_fn(batch):
            return model(batch.src_ids, batch.src_mask, batch.prev_tokens, target=batch.target,
                         label_smoothing=epsilon)

        return sum_losses(data, batches, source.pad_id, device, loss_fn).summary()
