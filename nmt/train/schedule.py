"""Learning-rate schedule: linear warm-up to the peak, then inverse square-root decay.

``get_lr(step)`` is a pure function of the update number (1 = the first update), as in nanoGPT:
the trainer sets every param group's lr to it before each optimizer step, so resuming needs only
the step count. Same shape as fairseq's ``inverse_sqrt`` with ``warmup_init_lr = 0``::

    lr(step) = peak * step / warmup             for step <= warmup
             = peak * sqrt(warmup / step)       after

>>> [round(get_lr(s, peak_lr=4e-4, warmup_steps=100), 7) for s in (1, 50, 100, 400, 10000)]
[4e-06, 0.0002, 0.0004, 0.0002, 4e-05]

How long the warm-up is, in updates, is decided here only (:func:`warmup_steps_for`). The paper gives
it in epochs (5 at LR 4e-4); for fine-tuning at LR 8e-5 (1/5 of it) it used 1 epoch, i.e. warm-up
proportional to the LR. The epochs at LR 4e-4 that other LRs scale from are the
``warmup_reference`` (train.py --warmup-reference; the paper's: 5):

>>> finetune_epochs = warmup_epochs_for(8e-5)
>>> round(finetune_epochs, 6), warmup_steps_from_epochs(finetune_epochs, batches_per_epoch=250)
(1.0, 250)
>>> warmup_steps_for(peak_lr=8e-5, updates_per_epoch=250)
250
"""
from __future__ import annotations

import math

PAPER_PEAK_LR = 4e-4            # the paper's stage-1 / baseline peak LR
PAPER_WARMUP_REFERENCE = 5.0    # ... and its warm-up at that LR, in epochs


def get_lr(step: int, *, peak_lr: float, warmup_steps: int) -> float:
    """LR for update number ``step`` (1-based); step 0 gives 0."""
    if warmup_steps < 1:
        raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}")
    if step <= 0:
        return 0.0
    if step <= warmup_steps:
        return peak_lr * step / warmup_steps
    return peak_lr * math.sqrt(warmup_steps / step)


def warmup_steps_for(*, peak_lr: float, updates_per_epoch: int, warmup_steps: int | None = None,
                     warmup_epochs: float | None = None, warmup_reference: float = PAPER_WARMUP_REFERENCE,
                     resumed: int | None = None) -> int:
    """The warm-up of a stage in updates, from train.py's flags of the same names: ``warmup_steps``
    as given; else ``warmup_epochs``; else, for a resumed run, the warm-up it started with
    (``resumed``, its checkpoint's: another world size has other updates per epoch, and the schedule
    must not change mid-run); else ``warmup_reference`` epochs scaled by ``peak_lr`` / 4e-4."""
    if warmup_steps is not None:
        return warmup_steps
    if warmup_epochs is None and resumed is not None:
        return resumed
    epochs = warmup_epochs if warmup_epochs is not None else warmup_epochs_for(peak_lr, warmup_reference)
    return warmup_steps_from_epochs(epochs, updates_per_epoch)


def warmup_epochs_for(peak_lr: float, warmup_reference: float = PAPER_WARMUP_REFERENCE) -> float:
    """Warm-up epochs that scale with the LR as the paper's did: 5 epochs at 4e-4, 1 at 8e-5."""
    return warmup_reference * peak_lr / PAPER_PEAK_LR


def warmup_steps_from_epochs(epochs: float, batches_per_epoch: int) -> int:
    """Epochs -> optimizer steps (at least 1)."""
    if epochs < 0 or batches_per_epoch < 1:
        raise ValueError(f"bad warm-up: {epochs} epochs of {batches_per_epoch} batches")
    return max(1, round(epochs * batches_per_epoch))
