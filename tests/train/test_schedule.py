"""The learning-rate schedule (mixitcli/train/schedule.py): warm-up, step decay, frozen rate."""

import pytest

from mixitcli.train.config import FinetuneConfig, PretrainConfig
from mixitcli.train.schedule import lr_factor


def test_pretraining_schedule():
    # warm-up (s - 1) / 99 (clamped at 0), decay from step 101 every 50 steps, frozen from step 300
    c = PretrainConfig(warmup_steps=100, steps_per_epoch=50, decay_factor=0.5, decay_stop_epoch=6)
    assert [lr_factor(s, c) for s in (0, 1)] == [0.0, 0.0]
    assert lr_factor(50, c) == pytest.approx(49 / 99)
    assert lr_factor(99, c) == pytest.approx(98 / 99) and lr_factor(100, c) == 1.0
    assert lr_factor(101, c) == 1.0 and lr_factor(150, c) == 1.0
    assert lr_factor(151, c) == 0.5 and lr_factor(201, c) == 0.25
    assert lr_factor(251, c) == 0.5**3 and lr_factor(300, c) == lr_factor(10_000, c) == 0.5**3  # frozen after epoch 6


def test_no_warmup_means_full_rate_from_the_first_step():
    for warmup in (0, 1):
        c = PretrainConfig(warmup_steps=warmup, steps_per_epoch=4, decay_factor=0.5, decay_stop_epoch=None)
        assert [lr_factor(s, c) for s in range(warmup + 1)] == [1.0] * (warmup + 1)
        assert lr_factor(warmup + 1 + 4, c) == 0.5


def test_finetuning_schedule_holds_then_decays_every_two_epochs():
    # as the authors' fine-tuning configs: decay_start_step = 550 epochs x 110 steps, step_size 220
    c = FinetuneConfig(warmup_steps=10, steps_per_epoch=5, decay_start_epoch=4, decay_every_epochs=2, decay_factor=0.5)
    assert [lr_factor(s, c) for s in (0, 1, 2, 10, 19)] == [0.0, 0.0, pytest.approx(1 / 9), 1.0, 1.0]
    assert [lr_factor(s, c) for s in (20, 29, 30, 40)] == [1.0, 1.0, 0.5, 0.25]
