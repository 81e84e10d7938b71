"""Training configuration: one dataclass per stage (docs/method.md §5).

Every field is a training option, declared with :func:`~mixitcli.train.options.option`: its
help text, ``--help`` panel, bounds and whether a resumed run may change it sit beside its
default, and `mixit pretrain / finetune / freeze-finetune` build their flags from the fields
(flag = field name with dashes). Adding an option is adding one field.

Precedence: the stage's defaults < a YAML recipe (``--config``) < command-line options. Every
value is checked against its field's type and bounds, and every problem is reported at once.
The resolved configuration is written to ``RUN/config.yaml`` and into every checkpoint, and
a resumed run takes its configuration from there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mixitcli.stems import STEMS
from mixitcli.train.options import (
    BATCHES,
    DATA,
    OBJECTIVE,
    OPTIMIZER,
    RUNTIME,
    VALIDATION,
    Refused,
    convert,
    option,
    options_of,
    range_problem,
)

Stage = Literal["pretrain", "finetune", "freeze-finetune"]
Size = Literal[
    "tiny", "small", "medium", "large"
]  # the presets of mixitcli.model.config.PRESETS (a test keeps them equal)


class ConfigError(Exception):
    """The configuration is invalid; the message lists every problem."""


@dataclass
class TrainConfig:
    """Everything a training run needs. Stage subclasses change the defaults only."""

    stage: Stage = option("pretrain", "The training stage (set by the command).", group=DATA, cli=False)
    # -- data and model
    data: str = option(
        "",
        "Prepared data folder: prepare-fma output for pretrain, prepare-musdb output for fine-tuning.",
        group=DATA,
        required=True,
        resume=True,
        metavar="DIR",
    )
    out: str = option(
        "",
        "Run folder: config.yaml, metrics.jsonl, checkpoints/ (last.pt and the best ones).",
        group=DATA,
        required=True,
        resume=True,
        metavar="RUN",
    )
    size: Size | None = option(None, "Model preset (default medium, or that of --init).", group=DATA)
    init: str | None = option(
        None,
        "Start from these weights: a mixit checkpoint or run folder (averaged best), an "
        "official model folder, or the name of a published model (`mixit models`; e.g. "
        "mixit.fma-large.bslocoformer-medium.12outputs). Pretrain: continue pre-training from them.",
        group=DATA,
        metavar="PATH",
    )
    selection: str | None = option(
        None,
        "select-channels JSON that picks the outputs of --init for the stems of --data "
        "(e.g. 4 of the 12 MixIT outputs).",
        group=DATA,
        metavar="JSON",
    )
    stems: tuple[str, ...] | None = option(
        None,
        "The fine-tuned model's stems in output order: those of --data (its "
        "summary.json), recorded when the run starts.",
        group=DATA,
        cli=False,
        stages=("finetune", "freeze-finetune"),
    )
    trainable: Literal["all", "encdec"] = option(
        "all", "What trains: all, or encdec (the separator stays frozen).", group=DATA
    )
    dropout: float = option(0.1, "Dropout of the model (docs/method.md §3).", group=DATA, at_least=0, below=1)
    # -- objective
    loss: Literal["mixit", "supervised"] = option(
        "mixit",
        "MixIT (pre-training) or supervised with inactive sources (fine-tuning); set by the stage.",
        group=OBJECTIVE,
        cli=False,
    )
    mixit_solver: Literal["efficient", "exact"] = option(
        "efficient",
        "MixIT assignment: efficient (least squares + argmax, the paper's) or exact (all 4096 assignments).",
        group=OBJECTIVE,
        stages=("pretrain",),
    )
    level_range_db: tuple[float, float] = option(
        (-5.0, 5.0),
        "Level difference of the two mixtures of a mixture of mixtures, in dB (low high).",
        group=OBJECTIVE,
        stages=("pretrain",),
        metavar="LOW HIGH",
    )
    stem_norm: Literal["rms", "mean_abs"] = option(
        "rms",
        "How dynamic mixing levels each stem before its random gain: rms (the paper) or mean_abs (the "
        "authors' code, which trained the published models; sparse stems come out 2-4 dB louder). docs/method.md §2.2.",
        group=OBJECTIVE,
        stages=("finetune", "freeze-finetune"),
    )
    # -- batches and length
    batch_size: int = option(
        128,
        "Global batch per optimizer step over all devices (pretrain: mixtures of mixtures).",
        group=BATCHES,
        at_least=1,
    )
    grad_accum: int = option(
        1,
        "Gradient accumulation: micro-batches per step on each device (the global batch stays "
        "--batch-size; a resumed run may change it to fit in memory).",
        group=BATCHES,
        at_least=1,
        resume=True,
    )
    segment_seconds: float = option(
        6.0, "Length of the training crops in seconds (paper: 6).", group=BATCHES, above=0.1
    )
    epochs: int = option(150, "Number of epochs.", group=BATCHES, at_least=1, resume=True)
    steps_per_epoch: int = option(
        1000, "Optimizer steps per epoch (the schedule and validation count in epochs).", group=BATCHES, at_least=1
    )
    max_steps: int | None = option(
        None,
        "Stop after this many optimizer steps (default: epochs x steps per epoch).",
        group=BATCHES,
        at_least=1,
        resume=True,
    )
    # -- optimizer and schedule (AdamW; linear warm-up, then a factor every few epochs)
    lr: float = option(1e-3, "Peak learning rate (paper: 1e-3 small/medium, 5e-4 large).", group=OPTIMIZER, above=0)
    weight_decay: float = option(1e-2, "AdamW weight decay.", group=OPTIMIZER, at_least=0)
    betas: tuple[float, float] = option(
        (0.9, 0.999),
        "AdamW betas: decay rates of the moment estimates, each in [0, 1).",
        group=OPTIMIZER,
        metavar="B1 B2",
        at_least=0,
        below=1,
    )
    clip_norm: float = option(5.0, "Gradients are clipped to this global norm.", group=OPTIMIZER, above=0)
    warmup_steps: int = option(5000, "Linear warm-up steps.", group=OPTIMIZER, at_least=0)
    decay_start_epoch: int = option(
        0,
        "First epoch of the decay (0: from step warmup_steps + 1, as the authors' pre-training).",
        group=OPTIMIZER,
        at_least=0,
    )
    decay_every_epochs: int = option(
        1, "The learning rate is multiplied by --decay-factor every so many epochs.", group=OPTIMIZER, at_least=1
    )
    decay_factor: float = option(0.965, "Factor of each decay.", group=OPTIMIZER, above=0, at_most=1)
    decay_stop_epoch: int | None = option(
        None, "The learning rate stays constant after this epoch (none: never).", group=OPTIMIZER, at_least=0
    )
    # -- validation and checkpoints
    valid_every_epochs: int = option(
        2,
        "Validate (and rank checkpoints) every N epochs; the last step is always validated.",
        group=VALIDATION,
        at_least=1,
        resume=True,
        aliases=("--valid-every",),
    )
    valid_size: int = option(
        256, "Held-out mixtures of mixtures per validation.", group=VALIDATION, at_least=1, stages=("pretrain",)
    )
    keep_best: int = option(5, "How many best checkpoints (by validation loss) to keep.", group=VALIDATION, at_least=1)
    save_every_steps: int = option(
        500,
        "Also write checkpoints/last.pt every N steps within an epoch (0: only at epoch ends).",
        group=VALIDATION,
        at_least=0,
        resume=True,
        aliases=("--save-every",),
    )
    # -- runtime
    device: str = option(
        "auto",
        "auto (GPU if any), cpu, cuda, cuda:N or mps. Under torchrun each rank takes its LOCAL_RANK GPU.",
        group=RUNTIME,
        resume=True,
    )
    bf16: bool | None = option(None, "bf16 autocast (default: on for CUDA, off on CPU).", group=RUNTIME, resume=True)
    activation_checkpointing: bool | None = option(
        None,
        "Recompute block activations in the backward pass to save memory (default: on for CUDA and for the "
        "medium and large models; off for the tiny and small models on CPU, where it only costs time).",
        group=RUNTIME,
        resume=True,
        aliases=("--checkpointing",),
    )
    workers: int = option(2, "DataLoader worker processes per device.", group=RUNTIME, at_least=0, resume=True)
    seed: int = option(0, "Seed of the initial weights, the data order and dropout.", group=RUNTIME, at_least=0)
    max_bad_steps: int = option(
        20, "Non-finite steps in a row before the run stops.", group=RUNTIME, at_least=1, resume=True
    )
    check_sync_every: int = option(
        100, "Steps between cross-rank weight checks under DDP (0: off).", group=RUNTIME, at_least=0, resume=True
    )
    log_every: int = option(10, "Log metrics every N steps.", group=RUNTIME, at_least=1, resume=True)

    @property
    def n_outputs(self) -> int:
        """12 MixIT outputs for pre-training; one per stem for fine-tuning (VDBO until the data's are known)."""
        return 12 if self.loss == "mixit" else len(self.stems or STEMS)

    @property
    def total_steps(self) -> int:
        planned = self.epochs * self.steps_per_epoch
        return min(planned, self.max_steps) if self.max_steps is not None else planned

    def problems(self) -> list[str]:
        """Every problem of this configuration: types, bounds, required options, combinations."""
        p = []
        for info in options_of(type(self)).values():
            value = getattr(self, info.name)
            try:
                convert(info, value)
            except Refused as e:
                p.append(f"{info.name} {e}")
                continue
            if info.required and not value:
                p.append(f"{info.name} is required ({info.flag} {info.placeholder()})")
            if value is not None:
                p.extend(filter(None, [range_problem(info, value)]))
        if self.selection and not self.init:
            p.append("selection needs init (the pre-trained checkpoint whose outputs it selects)")
        low, high = self.level_range_db
        if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low > high:
            p.append(f"level_range_db must be (low, high), got {self.level_range_db}")
        return p

    def validate(self) -> None:
        """Raise :class:`ConfigError` listing every problem at once."""
        raise_problems(self.problems())

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class PretrainConfig(TrainConfig):
    """MixIT pre-training on FMA with the authors' FMA-large schedule (docs/method.md §5): 12
    outputs, 128 mixtures of mixtures (256 clips) per step (their 32 clips per GPU, paired into
    MoMs, on 8 GPUs: inferred, docs/method.md "The paper, the authors' code and us", row 3),
    150 epochs of 2,038 steps, warm-up 4,000 steps, then x0.965 every epoch from step 4,001
    until epoch 75 (step 152,850)."""

    stage: Stage = "pretrain"
    loss: str = "mixit"
    batch_size: int = 128
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
    """Supervised fine-tuning on a prepared stems folder: one output per stem of the data (MUSDB18-HQ:
    bass, drums, vocals, other), batch 32,
    900 epochs x 110 steps, warm-up 5000 then constant to epoch 550, then x0.98 every 2 epochs."""

    stage: Stage = "finetune"
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

    stage: Stage = "freeze-finetune"
    trainable: str = "encdec"
    epochs: int = 200


STAGE_CONFIGS: dict[str, type[TrainConfig]] = {
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "freeze-finetune": FreezeFinetuneConfig,
}


def stage_class(stage: str) -> type[TrainConfig]:
    if stage not in STAGE_CONFIGS:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(STAGE_CONFIGS)}")
    return STAGE_CONFIGS[stage]


def raise_problems(problems: list[str]) -> None:
    """Raise one :class:`ConfigError` that lists ``problems``, if there are any."""
    if problems:
        raise ConfigError("invalid training configuration:\n  - " + "\n  - ".join(problems))


def read_recipe(path: str | Path, stage: str) -> dict[str, Any]:
    """The option: value mapping of a YAML recipe for ``stage`` (values not checked yet).

    Raises:
        ConfigError: unreadable, not a mapping, or a recipe of another stage.
    """
    import yaml

    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the recipe ({e})") from e
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of option: value")
    if loaded.get("stage", stage) != stage:
        raise ConfigError(f"{path} is a {loaded['stage']!r} recipe, not {stage!r}")
    return loaded


def check_values(
    cls: type[TrainConfig],
    values: dict[str, Any] | None,
    source: str,
    problems: list[str],
    *,
    text: bool = False,
    unset: bool = False,
) -> dict[str, Any]:
    """``values`` converted to the types of ``cls``'s fields. Each refused or unknown value adds
    a line to ``problems`` and is left out.

    Args:
        source: where the values come from, for the messages ("command line", a recipe path, ...).
        text: the values are command-line text (numbers are parsed; ``none`` clears an option).
        unset: None means "not given" (options and overrides), not the value None (recipes).
    """
    infos = options_of(cls)
    given = {k: v for k, v in (values or {}).items() if not (unset and v is None)}
    unknown = sorted(str(k) for k in given if k not in infos)
    if unknown:
        problems.append(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(infos))}")
    checked = {}
    for name, value in given.items():
        if name not in infos:
            continue
        info = infos[name]
        try:
            checked[name] = convert(info, value, text=text)
        except Refused as e:
            problems.append(f"{name} ({info.flag if text else source}) {e}")
    return checked


def build_config(
    stage: str,
    *,
    recipe: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    command_line: dict[str, Any] | None = None,
) -> TrainConfig:
    """The stage's defaults, updated by a YAML recipe, then by non-None ``overrides`` (Python
    values), then by non-None ``command_line`` values (text as typed, booleans from flags).

    Raises:
        ConfigError: unknown stage, unreadable recipe, or every unknown, mistyped and invalid value.
    """
    cls = stage_class(stage)
    problems: list[str] = []
    values: dict[str, Any] = {}
    if recipe is not None:
        values.update(check_values(cls, read_recipe(recipe, stage), f"recipe {recipe}", problems))
    values.update(check_values(cls, overrides, "overrides", problems, unset=True))
    values.update(check_values(cls, command_line, "command line", problems, text=True, unset=True))
    values["stage"] = stage
    config = cls(**values)  # a refused value was left out: its default stands in, so the rest is still checked
    raise_problems(problems + config.problems())
    return config


def resumable(cls: type[TrainConfig]) -> list[str]:
    """The options a resumed run may change; the others define the run."""
    return [name for name, info in options_of(cls).items() if info.resume]


def resume_config(
    saved: dict[str, Any],
    overrides: dict[str, Any] | None = None,
    *,
    recipe: str | Path | None = None,
    command_line: dict[str, Any] | None = None,
) -> TrainConfig:
    """The saved configuration of a run, with the runtime options given again (by a recipe,
    ``overrides`` or ``command_line``, in that order of precedence).

    Raises:
        ConfigError: a value would change what the run is (data kind, model, schedule, ...),
            or values are unknown, mistyped or invalid.
    """
    config = config_from_dict(saved)
    cls = type(config)
    problems: list[str] = []
    given: dict[str, tuple[Any, str]] = {}
    if recipe is not None:
        for k, v in check_values(cls, read_recipe(recipe, config.stage), f"recipe {recipe}", problems).items():
            given[k] = (v, f"recipe {recipe}")
    for k, v in check_values(cls, overrides, "overrides", problems, unset=True).items():
        given[k] = (v, "given")
    for k, v in check_values(cls, command_line, "command line", problems, text=True, unset=True).items():
        given[k] = (v, options_of(cls)[k].flag)
    changes, refused = {}, []
    for name, (value, where) in given.items():
        current = getattr(config, name)
        if value == current:
            continue
        if options_of(cls)[name].resume:
            changes[name] = value
        else:
            refused.append(f"{name} (run: {current!r}, {where}: {value!r})")
    if refused:
        problems.append(
            "a resumed run keeps its configuration; these options differ: "
            + "; ".join(refused)
            + f". Only {', '.join(resumable(cls))} may change when resuming; to change the others start a new run "
            "in another --out (--init RUN starts from this run's weights)"
            + (
                "; a resumed run needs no --config: its configuration is in RUN/config.yaml"
                if recipe is not None
                else ""
            )
        )
    config = config.replace(**changes)
    raise_problems(problems + config.problems())
    return config


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Rebuild the configuration saved in a run folder or checkpoint.

    Raises:
        ConfigError: unknown stage, or unknown or mistyped values.
    """
    if not isinstance(d, dict) or d.get("stage") not in STAGE_CONFIGS:
        raise ConfigError(f"saved configuration has an unknown stage {d.get('stage') if isinstance(d, dict) else d!r}")
    cls = STAGE_CONFIGS[d["stage"]]
    problems: list[str] = []
    values = check_values(cls, d, "saved configuration", problems)
    raise_problems(problems)
    return cls(**values)
