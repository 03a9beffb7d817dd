import math

import pytest

from nmt.train.schedule import get_lr, warmup_epochs_for, warmup_steps_from_epochs


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
