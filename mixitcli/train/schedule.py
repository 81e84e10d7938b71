"""Learning-rate schedule (docs/method.md §5): linear warm-up, then a factor every few epochs.

The multiplier of the peak rate at optimizer step s (0-based) is the authors' ``WarmUpStepLR``
(b-sigpro/mixit-mss, ``mixit_mss/common/lr_schedulers/warmup.py``), written in our epochs:

    before start:  max(0, min((s - 1) / (warmup - 1), 1))        (warm-up; 1 once s >= warmup)
    from start on: factor ** ((min(s, stop) - start) // every)

    start = max(warmup + 1, decay_start_epoch * steps_per_epoch)   their decay_start_step
    every = decay_every_epochs * steps_per_epoch                    their step_size
    stop  = decay_stop_epoch * steps_per_epoch (no stop: None)      their decay_stop_step

So pre-training (decay_start_epoch 0) decays first ``every`` steps after step warmup + 1, as
their pre-training configs (``decay_start_step: 4001``); fine-tuning holds the peak until
epoch 550 (their ``decay_start_step: 60500``). The rate equals theirs at every step but one:
their formula gives step 0 a negative rate (-peak / (warmup - 1)), one step up the gradient;
we clamp it to 0. A warm-up of 0 or 1 step means none.
"""

from __future__ import annotations

import torch

from mixitcli.train.config import TrainConfig


def decay_start_step(config: TrainConfig) -> int:
    """First optimizer step of the decay branch (the official ``decay_start_step``)."""
    return max(config.warmup_steps + 1, config.decay_start_epoch * config.steps_per_epoch)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    spe, warmup = config.steps_per_epoch, config.warmup_steps
    start = decay_start_step(config)
    if step < start:
        if warmup <= 1:
            return 1.0
        return max(0.0, min((step - 1) / (warmup - 1), 1.0))
    if config.decay_stop_epoch is not None:
        step = min(step, max(start, config.decay_stop_epoch * spe))
    return config.decay_factor ** ((step - start) // (config.decay_every_epochs * spe))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
