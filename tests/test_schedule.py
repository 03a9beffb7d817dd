import math

import pytest

from nmt.train.schedule import get_lr, warmup_epochs_for, warmup_steps_for, warmup_steps_from_epochs


def test_values_at_chosen_steps():
    peak, w = 4e-4, 1000
    assert get_lr(0, peak_lr=peak, warmup_steps=w) == 0.0
    assert get_lr(1, peak_lr=peak, warmup_steps=w) == pytest.approx(4e-7)
    assert get_lr(500, peak_lr=peak, warmup_steps=w) == pytest.approx(2e-4)
    assert get_lr(1000, peak_lr=peak, warmup_steps=w) == pytest.approx(4e-4)   # the peak
    assert get_lr(4000, peak_lr=peak, warmup_steps=w) == pytest.approx(2e-4)   # sqrt(1000/4000) = 1/2
    assert get_lr(9000, peak_lr=peak, warmup_steps=w) == pytest.approx(4e-4 / 3)


def test_shape_is_continuous_and_monotone_on_each_side():
    lrs = [get_lr(s, peak_lr=1.0, warmup_steps=50) for s in range(1, 500)]
    peak_at = max(range(len(lrs)), key=lrs.__getitem__) + 1
    assert peak_at == 50
    assert all(a < b for a, b in zip(lrs[:49], lrs[1:50]))
    assert all(a > b for a, b in zip(lrs[49:], lrs[50:]))
    assert get_lr(51, peak_lr=1.0, warmup_steps=50) == pytest.approx(math.sqrt(50 / 51))


def test_warmup_conversion_and_finetune_scaling():
    assert warmup_epochs_for(4e-4) == pytest.approx(5.0)
    assert warmup_epochs_for(8e-5) == pytest.approx(1.0)
    assert warmup_steps_from_epochs(5, 37) == 185
    assert warmup_steps_from_epochs(0, 37) == 1
    with pytest.raises(ValueError):
        get_lr(3, peak_lr=1.0, warmup_steps=0)
    with pytest.raises(ValueError):
        warmup_steps_from_epochs(1, 0)


def test_warmup_steps_for_is_the_one_rule():
    """--warmup-steps, else --warmup-epochs, else a resumed run's own warm-up, else --warmup-reference
    epochs scaled by LR / 4e-4 (the paper: 5 epochs at 4e-4, 1 at 8e-5)."""
    assert warmup_steps_for(peak_lr=4e-4, updates_per_epoch=10) == 50
    assert warmup_steps_for(peak_lr=8e-5, updates_per_epoch=10) == 10
    assert warmup_steps_for(peak_lr=4e-4, updates_per_epoch=10, warmup_reference=2.0) == 20
    assert warmup_steps_for(peak_lr=4e-4, updates_per_epoch=10, warmup_epochs=0.5) == 5
    assert warmup_steps_for(peak_lr=4e-4, updates_per_epoch=10, warmup_steps=7, warmup_epochs=0.5) == 7
    # resumed (another world size: other updates per epoch): the schedule it started with ...
    assert warmup_steps_for(peak_lr=4e-4, updates_per_epoch=20, resumed=50) == 50
    # ... unless the warm-up is given explicitly
    assert warmup_steps_for(peak_lr=4e-4, updates_per_epoch=20, warmup_epochs=1.0, resumed=50) == 20
    assert warmup_steps_for(peak_lr=4e-4, updates_per_epoch=20, warmup_steps=3, resumed=50) == 3
