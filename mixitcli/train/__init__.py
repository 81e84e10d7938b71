"""Training: one loop (loop.py) for pre-training, fine-tuning and freeze fine-tuning.

The configuration names are imported at once (they are light: `mixit --help` builds the
training flags from them); the loop, which needs torch, is imported on first use.
"""

from mixitcli.train.config import (
    STAGE_CONFIGS,
    ConfigError,
    FinetuneConfig,
    FreezeFinetuneConfig,
    PretrainConfig,
    TrainConfig,
    build_config,
    resume_config,
)

_FROM_LOOP = ("TrainingError", "train")
_FROM_RESUME = ("RunPlan", "plan_run")


def __getattr__(name: str):
    if name in _FROM_LOOP:
        from mixitcli.train import loop

        return getattr(loop, name)
    if name in _FROM_RESUME:
        from mixitcli.train import resume

        return getattr(resume, name)
    raise AttributeError(f"module 'mixitcli.train' has no attribute {name!r}")


__all__ = [
    "STAGE_CONFIGS",
    "ConfigError",
    "FinetuneConfig",
    "FreezeFinetuneConfig",
    "PretrainConfig",
    "RunPlan",
    "TrainConfig",
    "TrainingError",
    "build_config",
    "plan_run",
    "resume_config",
    "train",
]
