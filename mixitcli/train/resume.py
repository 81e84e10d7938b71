"""Start a run or continue one: which, and with what configuration.

``--resume`` continues the run in ``--out``; ``--auto-resume`` continues it when ``--out``
holds one (``checkpoints/last.pt``) and starts it otherwise. A continued run takes its
configuration from ``RUN/config.yaml``; the command's stage must be the run's, and a
``--config`` recipe and options given again may change only what
:func:`~mixitcli.train.config.resumable` lists (checked by
:func:`~mixitcli.train.config.resume_config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixitcli.train.config import ConfigError, TrainConfig, build_config, resume_config


@dataclass(frozen=True)
class RunPlan:
    """What a training command does: start ``config`` afresh, or continue the run it describes."""

    config: TrainConfig
    resume: bool


def plan_run(
    stage: str,
    *,
    command_line: dict[str, Any] | None = None,
    recipe: str | Path | None = None,
    resume: bool = False,
    auto_resume: bool = False,
) -> RunPlan:
    """Decide between a new run and a continued one, and resolve its configuration.

    Args:
        command_line: option values as typed (None: not given); ``out`` is the run folder.

    Raises:
        ConfigError: every problem of the configuration; for a continued run also a run of
            another stage, a missing run folder, or a change to what defines the run.
    """
    out = (command_line or {}).get("out")
    if resume or auto_resume:
        if not out:
            raise ConfigError(f"--{'resume' if resume else 'auto-resume'} needs --out RUN, the run folder to continue")
        run = Path(out)
        if resume or (run / "checkpoints" / "last.pt").is_file():
            saved = saved_config(run)
            check_stage(run, saved.get("stage"), stage)
            if not (run / "checkpoints" / "last.pt").is_file():
                raise ConfigError(
                    f"--resume: {run} has no checkpoints/last.pt (it stopped before its first save); "
                    "start it again without --resume (or with --auto-resume)"
                )
            return RunPlan(resume_config(saved, recipe=recipe, command_line=command_line), resume=True)
    return RunPlan(build_config(stage, recipe=recipe, command_line=command_line), resume=False)


def saved_config(run: Path) -> dict[str, Any]:
    """The configuration a run folder was started with (``RUN/config.yaml``).

    Raises:
        ConfigError: the folder is not a run folder, or its configuration is unreadable.
    """
    import yaml

    path = run / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"--resume: {path} does not exist; is {run} a run folder? (to start a new run, drop --resume)"
        )
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"--resume: cannot read {path} ({e})") from e
    if not isinstance(saved, dict):
        raise ConfigError(f"--resume: {path} is not a run configuration")
    return saved


def check_stage(run: Path, saved_stage: Any, stage: str) -> None:
    """Refuse to continue a run of another stage, and say which command continues it.

    Raises:
        ConfigError: ``saved_stage`` is not ``stage``.
    """
    if saved_stage == stage:
        return
    start = f"`mixit {stage} --init {run} --out NEW_RUN"
    if saved_stage == "pretrain":
        start += " --selection SELECTION.json` (the selection from `mixit select-channels`)"
    else:
        start += "`"
    raise ConfigError(
        f"{run} holds a {saved_stage} run, not a {stage} run. Continue it with `mixit {saved_stage} --out {run} --resume`; "
        f"to start {stage} from its weights, use a new folder: {start}"
    )
