"""Training: one loop (loop.py) for pre-training, fine-tuning and freeze fine-tuning."""

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
from mixitcli.train.loop import TrainingError, train

__all__ = [
    "STAGE_CONFIGS",
    "ConfigError",
    "FinetuneConfig",
    "FreezeFinetuneConfig",
    "PretrainConfig",
    "TrainConfig",
    "TrainingError",
    "build_config",
    "resume_config",
    "train",
]
