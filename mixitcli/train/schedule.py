"""Learning-rate schedule (docs/method.md §5): linear warm-up, then a factor every few epochs.

    lr(step) = peak * min((step + 1) / warmup, 1)                  before the decay starts
    lr(step) = peak * factor ** ((min(step, stop) - start) // every)  after

with start = max(warmup, decay_start_epoch * steps_per_epoch), every = decay_every_epochs *
steps_per_epoch and stop = decay_stop_epoch * steps_per_epoch. Pre-training decays every epoch
right after warm-up; fine-tuning holds the peak until epoch 550. (The official LambdaLR
starts its warm-up at (step - 1) / (warmup - 1), a slightly negative rate on step 0; we start
at 1 / warmup.)
"""

from __future__ import annotations

import torch

from mixitcli.train.config import TrainConfig


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    spe = config.steps_per_epoch
    start = max(config.warmup_steps, config.decay_start_epoch * spe)
    if step < start:
        return min((step + 1) / config.warmup_steps, 1.0) if config.warmup_steps else 1.0
    if config.decay_stop_epoch is not None:
        step = min(step, max(start, config.decay_stop_epoch * spe))
    return config.decay_factor ** ((step - start) // (config.decay_every_epochs * spe))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
