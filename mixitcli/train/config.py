"""Training configuration: one dataclass per stage (docs/method.md §5).

Precedence: the stage's defaults < a YAML recipe (``--config``) < command-line options.
The resolved configuration is written to ``RUN/config.yaml`` and into every checkpoint, and
a resumed run takes its configuration from there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAGES = ("pretrain", "finetune", "freeze-finetune")


class ConfigError(Exception):
    """The configuration is invalid; the message lists every problem."""


@dataclass
class TrainConfig:
    """Everything a training run needs. Stage subclasses change the defaults only.

    Data and model
        data: prepared data folder (``mixit prepare-fma`` or ``prepare-musdb`` output).
        out: the run folder.
        size: model preset (tiny, small, medium, large); default medium, or the
            architecture of ``init`` when it is given.
        init: checkpoint, run folder or official folder whose weights start the run.
        selection: ``mixit select-channels`` JSON, to slice 12 MixIT outputs to 4 stems.
        trainable: "all", or "encdec" (separator frozen).
        dropout: dropout of the model (docs/method.md §3: 0.1).
    Objective
        loss: "mixit" (pre-training) or "supervised" (fine-tuning with inactive sources).
        mixit_solver: "efficient" (the paper) or "exact".
        level_range_db: level difference of the two mixtures of a MoM, in dB.
        stem_norm: how dynamic mixing (fine-tuning) levels each stem before its random gain:
            "rms" (divide by the RMS, as the paper says) or "mean_abs" (divide by the mean
            absolute value, as the authors' code did for the published models; sparse stems
            come out 2-4 dB louder). docs/method.md §2.2.
    Batches and length
        batch_size: examples per optimizer step over all devices (MoMs for pre-training).
        grad_accum: micro-batches per step on each device.
        segment_seconds: training crop length.
        epochs, steps_per_epoch: schedule length; max_steps (if set) stops earlier.
    Optimizer and schedule (AdamW; linear warm-up, then decay steps)
        lr, weight_decay, betas, clip_norm, warmup_steps,
        decay_start_epoch: first epoch of the decay (0: from step warmup_steps + 1, as the
            authors' pre-training); see mixitcli/train/schedule.py;
        decay_every_epochs, decay_factor: lr *= factor every so many epochs;
        decay_stop_epoch: the lr stays constant after this epoch (None: never).
    Validation and checkpoints
        valid_every_epochs, valid_size (pre-training MoMs), keep_best.
    Runtime
        device ("auto", "cpu", "cuda", "cuda:1", "mps"), bf16 (None: on for CUDA),
        activation_checkpointing, workers (DataLoader processes per rank), seed,
        max_bad_steps (non-finite steps in a row before stopping), save_every_steps
        (``last.pt`` within an epoch; 0 = only at epoch ends), check_sync_every
        (steps between cross-rank parameter checks under DDP; 0 = off), log_every.
    """

    stage: str = "pretrain"
    data: str = ""
    out: str = ""
    size: str | None = None
    init: str | None = None
    selection: str | None = None
    trainable: str = "all"
    dropout: float = 0.1
    loss: str = "mixit"
    mixit_solver: str = "efficient"
    level_range_db: tuple[float, float] = (-5.0, 5.0)
    stem_norm: str = "rms"
    batch_size: int = 128
    grad_accum: int = 1
    segment_seconds: float = 6.0
    epochs: int = 150
    steps_per_epoch: int = 1000
    max_steps: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    clip_norm: float = 5.0
    warmup_steps: int = 5000
    decay_start_epoch: int = 0
    decay_every_epochs: int = 1
    decay_factor: float = 0.965
    decay_stop_epoch: int | None = None
    valid_every_epochs: int = 2
    valid_size: int = 256
    keep_best: int = 5
    device: str = "auto"
    bf16: bool | None = None
    activation_checkpointing: bool = True
    workers: int = 2
    seed: int = 0
    max_bad_steps: int = 20
    save_every_steps: int = 500
    check_sync_every: int = 100
    log_every: int = 10

    @property
    def n_outputs(self) -> int:
        return 12 if self.loss == "mixit" else 4

    @property
    def total_steps(self) -> int:
        planned = self.epochs * self.steps_per_epoch
        return min(planned, self.max_steps) if self.max_steps is not None else planned

    def validate(self) -> None:
        """Raise :class:`ConfigError` listing every problem at once."""
        from mixitcli.data.samplers import STEM_NORMS

        p = []
        if self.stage not in STAGES:
            p.append(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.loss not in ("mixit", "supervised"):
            p.append(f"loss must be 'mixit' or 'supervised', got {self.loss!r}")
        if self.mixit_solver not in ("efficient", "exact"):
            p.append(f"mixit_solver must be 'efficient' or 'exact', got {self.mixit_solver!r}")
        if self.stem_norm not in STEM_NORMS:
            p.append(f"stem_norm must be one of {STEM_NORMS}, got {self.stem_norm!r}")
        if self.trainable not in ("all", "encdec"):
            p.append(f"trainable must be 'all' or 'encdec', got {self.trainable!r}")
        if not self.data:
            p.append("data (the prepared data folder) is required")
        if not self.out:
            p.append("out (the run folder) is required")
        for name in ("batch_size", "grad_accum", "epochs", "steps_per_epoch", "valid_every_epochs", "keep_best", "max_bad_steps", "log_every"):
            if getattr(self, name) < 1:
                p.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            p.append(f"max_steps must be >= 1, got {self.max_steps}")
        if self.segment_seconds <= 0.1:
            p.append(f"segment_seconds must be > 0.1, got {self.segment_seconds}")
        if self.lr <= 0 or not 0 < self.decay_factor <= 1:
            p.append(f"lr must be > 0 and decay_factor in (0, 1], got {self.lr} and {self.decay_factor}")
        if min(self.warmup_steps, self.workers, self.save_every_steps, self.check_sync_every) < 0 or self.clip_norm <= 0:
            p.append("warmup_steps, workers, save_every_steps and check_sync_every must be >= 0 and clip_norm > 0")
        if self.selection and not self.init:
            p.append("selection needs init (the pre-trained checkpoint whose outputs it selects)")
        if self.level_range_db[0] > self.level_range_db[1]:
            p.append(f"level_range_db must be (low, high), got {self.level_range_db}")
        if p:
            raise ConfigError("invalid training configuration:\n  - " + "\n  - ".join(p))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


@dataclass
class PretrainConfig(TrainConfig):
    """MixIT pre-training on FMA with the authors' FMA-large schedule (docs/method.md §5): 12
    outputs, 64 mixtures of mixtures per step (their 32 clips per GPU on 4 GPUs, paired into
    MoMs), 150 epochs of 2,038 steps, warm-up 4,000 steps, then x0.965 every epoch from step
    4,001 until epoch 75 (step 152,850)."""

    stage: str = "pretrain"
    loss: str = "mixit"
    batch_size: int = 64
    epochs: int = 150
    steps_per_epoch: int = 2038
    warmup_steps: int = 4000
    decay_start_epoch: int = 0
    decay_every_epochs: int = 1
    decay_factor: float = 0.965
    decay_stop_epoch: int | None = 75
    valid_every_epochs: int = 2


@dataclass
class FinetuneConfig(TrainConfig):
    """Supervised fine-tuning on MUSDB18-HQ: 4 outputs (bass, drums, vocals, other), batch 32,
    900 epochs x 110 steps, warm-up 5000 then constant to epoch 550, then x0.98 every 2 epochs."""

    stage: str = "finetune"
    loss: str = "supervised"
    batch_size: int = 32
    epochs: int = 900
    steps_per_epoch: int = 110
    decay_start_epoch: int = 550
    decay_every_epochs: int = 2
    decay_factor: float = 0.98
    decay_stop_epoch: int | None = None
    valid_every_epochs: int = 5


@dataclass
class FreezeFinetuneConfig(FinetuneConfig):
    """Fine-tuning with the separator frozen: only encoder and decoder train, 200 epochs, with
    the fine-tuning schedule (its decay, from epoch 550, is not reached)."""

    stage: str = "freeze-finetune"
    trainable: str = "encdec"
    epochs: int = 200


STAGE_CONFIGS: dict[str, type[TrainConfig]] = {
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "freeze-finetune": FreezeFinetuneConfig,
}

_TUPLE_FIELDS = {"level_range_db", "betas"}


def _coerce(cls: type[TrainConfig], values: dict[str, Any], source: str) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return {k: tuple(v) if k in _TUPLE_FIELDS and v is not None else v for k, v in values.items()}


def build_config(stage: str, *, recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The stage's defaults, updated by a YAML recipe, then by non-None ``overrides``.

    Raises:
        ConfigError: unknown stage or keys, unreadable recipe, or invalid values.
    """
    import yaml

    if stage not in STAGE_CONFIGS:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(STAGE_CONFIGS)}")
    cls = STAGE_CONFIGS[stage]
    values: dict[str, Any] = {}
    if recipe is not None:
        path = Path(recipe)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read the recipe ({e})") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of option: value")
        if loaded.get("stage", stage) != stage:
            raise ConfigError(f"{path} is a {loaded['stage']!r} recipe, not {stage!r}")
        values.update(_coerce(cls, loaded, str(path)))
    values.update(_coerce(cls, {k: v for k, v in (overrides or {}).items() if v is not None}, "command line"))
    values["stage"] = stage
    config = cls(**values)
    config.validate()
    return config


RUNTIME_KEYS = frozenset({
    "out", "data",  # a run folder or the data may move to another machine or disk
    "max_steps", "epochs", "device", "workers", "bf16", "activation_checkpointing", "log_every",
    "check_sync_every", "max_bad_steps", "valid_every_epochs", "save_every_steps",
})
"""Options a resumed run may change; the others define the run and must stay as they were."""


def resume_config(saved: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The saved configuration of a run, with the runtime options given on the command line.

    Raises:
        ConfigError: an override would change what the run is (data, model, schedule, ...).
    """
    config = config_from_dict(saved)
    changes = {}
    refused = []
    cls = type(config)
    for key, value in _coerce(cls, {k: v for k, v in (overrides or {}).items() if v is not None}, "command line").items():
        if value == getattr(config, key):
            continue
        if key in RUNTIME_KEYS:
            changes[key] = value
        else:
            refused.append(f"{key} (run: {getattr(config, key)!r}, given: {value!r})")
    if refused:
        raise ConfigError(
            "a resumed run keeps its configuration; these options differ: " + "; ".join(refused)
            + f". Only {', '.join(sorted(RUNTIME_KEYS))} may change when resuming."
        )
    config = config.replace(**changes)
    config.validate()
    return config


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Rebuild the configuration saved in a run folder or checkpoint."""
    stage = d.get("stage")
    if stage not in STAGE_CONFIGS:
        raise ConfigError(f"saved configuration has an unknown stage {stage!r}")
    cls = STAGE_CONFIGS[stage]
    return cls(**_coerce(cls, d, "saved configuration"))

