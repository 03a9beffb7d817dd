"""Learning-rate schedule: linear warm-up to the peak, then inverse square-root decay.

``get_lr(step)`` is a pure function of the update number (1 = the first update), as in nanoGPT:
the trainer sets every param group's lr to it before each optimizer step, so resuming needs only
the step count. Same shape as fairseq's ``inverse_sqrt`` with ``warmup_init_lr = 0``::

    lr(step) = peak * step / warmup             for step <= warmup
             = peak * sqrt(warmup / step)       after

>>> [round(get_lr(s, peak_lr=4e-4, warmup_steps=100), 7) for s in (1, 50, 100, 400, 10000)]
[4e-06, 0.0002, 0.0004, 0.0002, 4e-05]

The paper gives warm-up in epochs (5 at LR 4e-4); for fine-tuning at LR 8e-5 (1/5 of it) it used
1 epoch, i.e. warm-up proportional to the LR:

>>> finetune_epochs = warmup_epochs_for(8e-5)
>>> round(finetune_epochs, 6), warmup_steps_from_epochs(finetune_epochs, batches_per_epoch=250)
(1.0, 250)
"""
from __future__ import annotations

import math

PAPER_PEAK_LR = 4e-4           # the paper's stage-1 / baseline peak LR
PAPER_WARMUP_EPOCHS = 5.0      # ... and its warm-up at that LR


def get_lr(step: int, *, peak_lr: float, warmup_steps: int) -> float:
    """LR for update number ``step`` (1-based); step 0 gives 0."""
    if warmup_steps < 1:
        raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}")
    if step <= 0:
        return 0.0
    if step <= warmup_steps:
        return peak_lr * step / warmup_steps
    return peak_lr * math.sqrt(warmup_steps / step)


def warmup_epochs_for(peak_lr: float, epochs_at_paper_lr: float = PAPER_WARMUP_EPOCHS) -> float:
    """Warm-up epochs that scale with the LR as the paper's did: 5 epochs at 4e-4, 1 at 8e-5."""
    return epochs_at_paper_lr * peak_lr / PAPER_PEAK_LR


def warmup_steps_from_epochs(epochs: float, batches_per_epoch: int) -> int:
    """Epochs -> optimizer steps (at least 1)."""
    if epochs < 0 or batches_per_epoch < 1:
        raise ValueError(f"bad warm-up: {epochs} epochs of {batches_per_epoch} batches")
    return max(1, round(epochs * batches_per_epoch))
