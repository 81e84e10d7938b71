"""The paper's recipes: every YAML is a valid configuration that states only what differs from
its stage's defaults, and `make -n tableN` prints a
plan with every run of the table, chained prepare -> pretrain -> select -> finetune -> eval -> report."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mixitcli.train.config import STAGE_CONFIGS, ConfigError, build_config
from mixitcli.train.config import TrainConfig as Config
from mixitcli.train.loop import micro_batch
from mixitcli.train.options import convert, options_of
from mixitcli.train.schedule import lr_factor
from tests.builders import REPO

RECIPES = sorted((REPO / "recipes").glob("*/*.yaml"))


def stage_of(recipe: Path) -> str:
    return recipe.parent.name if recipe.parent.name != "demo" else recipe.stem


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_is_a_valid_configuration(recipe):
    stage = stage_of(recipe)
    config = build_config(stage, recipe=recipe, overrides={"data": "d", "out": "o"})
    if recipe.parent.name != "demo":
        size = recipe.stem.split("-")[0]  # medium-fma-small.yaml: the medium model on FMA small
        assert config.size == size
        assert config.lr == (5e-4 if size == "large" else 1e-3)
        assert config.batch_size == (128 if stage == "pretrain" else 32)  # pre-training: 128 MoMs = 256 clips
        assert config.stem_norm == ("mean_abs" if stage != "pretrain" else "rms")  # as the published models


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_states_only_what_differs_from_the_stage_defaults(recipe):
    infos = options_of(STAGE_CONFIGS[stage_of(recipe)])
    values = yaml.safe_load(recipe.read_text())
    assert values.get("stage") == stage_of(recipe)
    restated = [k for k, v in values.items() if k != "stage" and convert(infos[k], v) == infos[k].default]
    assert not restated, f"{recipe.name} restates the stage's defaults of {restated}; leave them out"


def plan(target: str, **variables: object) -> str:
    settings = {"FMA": "/data/fma", "MUSDB": "/data/musdb18hq", "GPUS": 8, "WORK": "w"} | variables
    cmd = [
        "make",
        "-n",
        "--no-print-directory",
        "-C",
        str(REPO),
        *target.split(),
        *(f"{k}={v}" for k, v in settings.items()),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is part of the documented set-up")
def test_table1_plan_has_every_run_in_order():
    text = plan("table1")
    lines = text.splitlines()
    for size in ("small", "medium", "large"):
        pre = next(i for i, l in enumerate(lines) if f"pretrain --config recipes/pretrain/{size}.yaml" in l)
        select = next(i for i, l in enumerate(lines) if f"select-channels w/runs/pre-{size}-large " in l)
        fine = next(
            i for i, l in enumerate(lines) if f"--out w/runs/ft-{size}-large --init w/runs/pre-{size}-large" in l
        )
        evaluation = next(i for i, l in enumerate(lines) if f"eval --model w/runs/ft-{size}-large " in l)
        assert pre < select < fine < evaluation
        assert f"--out w/runs/ft-{size}-scratch" in text
    assert "torchrun --standalone --nproc_per_node=8 -m mixitcli pretrain" in text
    assert lines[-1].startswith("mixit report S1=w/results/ft-small-scratch")
    assert "prepare-fma /data/fma --subset large" in text and "prepare-musdb /data/musdb18hq" in text


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is part of the documented set-up")
def test_tables_2_and_3_plans():
    two = plan("table2")
    assert "freeze-finetune --config recipes/freeze-finetune/medium.yaml" in two
    random_run = next(l for l in two.splitlines() if "--out w/runs/fz-medium-random" in l)
    assert "--init" not in random_run and "--auto-resume" in random_run  # the control: random frozen separator
    three = plan("table3")
    for subset in ("small", "medium", "large", "full"):
        assert f"prepare-fma /data/fma --subset {subset}" in three
        assert f"eval --model w/runs/ft-medium-{subset} " in three


def authors_lr(
    step: int,
    *,
    peak: float,
    warmup: int = 4000,
    decay_start: int = 4001,
    decay_stop: int = 152_850,
    step_size: int = 2038,
    decay: float = 0.965,
) -> float:
    """The authors' WarmUpStepLR (mixit_mss/common/lr_schedulers/warmup.py) at optimizer step
    ``step``, with the values of their FMA configs, written out from its formula."""
    if step < decay_start:
        return peak * min((step - 1) / (warmup - 1), 1.0)
    return peak * decay ** ((min(step, decay_stop) - decay_start) // step_size)


# The authors' FMA pre-training runs (recipes/fma/models/*/config.yaml): FMA large 150 epochs
# of 2,038 steps; FMA small and medium max_steps 152,850. FMA full: see medium-fma-full.yaml.
AUTHORS_STEPS = {"large": 150 * 2038, "small": 152_850, "medium": 152_850, "full": 150 * 2038}


def pretraining_runs(text: str) -> dict[str, Config]:
    """Each pre-training run of a `make -n` plan: its --out and the configuration its command
    line gives (the recipe, then the options the plan passes), as `mixit pretrain` builds it."""
    runs = {}
    for line in text.splitlines():
        if " pretrain --config " in line:
            words = line.split()
            given = {"data": "d", "out": "o"}
            for flag, field in (("--batch-size", "batch_size"), ("--grad-accum", "grad_accum")):
                if flag in words:
                    given[field] = int(words[words.index(flag) + 1])
            runs[words[words.index("--out") + 1]] = build_config(
                "pretrain", recipe=REPO / words[words.index("--config") + 1], overrides=given
            )
    return runs


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is part of the documented set-up")
@pytest.mark.parametrize("gpus", [8, 4, 1])
def test_every_pretraining_run_steps_with_128_mixtures_of_mixtures(gpus):
    """The authors' batch (128 MoMs = 256 clips per step; docs/method.md, row 3 of the
    differences table) in every pre-training run of the three tables, whatever the GPU count:
    the plan shows it, and --grad-accum keeps each GPU's forward at their 16 MoMs."""
    text = plan("table1 table2 table3", GPUS=gpus)
    runs = pretraining_runs(text)
    assert len(runs) == 6 and text.count(" pretrain --config ") == 6  # one line per run
    for out, config in runs.items():
        assert config.batch_size == 128, out
        assert micro_batch(config, gpus) == 16 and config.grad_accum == 8 // gpus, out
    # the 4-GPU reading of the authors' files comes back with one variable
    four = pretraining_runs(plan("table1", GPUS=4, PRETRAIN_BATCH=64))
    assert all(c.batch_size == 64 and micro_batch(c, 4) == 16 and c.grad_accum == 1 for c in four.values())


def test_grad_accum_reaches_the_global_batch_on_fewer_devices():
    config = build_config("pretrain", overrides={"data": "d", "out": "o"})
    assert config.batch_size == 128  # the stage's default is the authors' batch too
    for world, accum in ((8, 1), (4, 2), (2, 4), (1, 8), (1, 128)):
        assert micro_batch(config.replace(grad_accum=accum), world) * world * accum == 128
    with pytest.raises(ConfigError, match="keep the batch with --grad-accum 1 or 2 or 4 or 8"):  # 3 does not divide 128
        micro_batch(config.replace(grad_accum=3), 8)


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is part of the documented set-up")
def test_pretraining_runs_follow_the_authors_schedule():
    runs = pretraining_runs(plan("table1") + plan("table3"))
    assert sorted(runs) == [
        f"w/runs/pre-{r}"
        for r in ("large-large", "medium-full", "medium-large", "medium-medium", "medium-small", "small-large")
    ]
    for out, config in runs.items():
        size, subset = out.split("/pre-")[1].split("-")
        assert config.total_steps == AUTHORS_STEPS[subset], out
        assert config.batch_size == 128 and config.decay_stop_epoch * config.steps_per_epoch == 152_850
        last = config.total_steps - 1
        for step in (4000, 50_000, 152_850, last, 1, 2, 3999, 4001, 6038, 6039, 152_849, 152_851):
            assert config.lr * lr_factor(step, config) == pytest.approx(
                authors_lr(step, peak=config.lr), rel=1e-12, abs=0
            ), (out, step)
        # Step 0: their formula gives a negative rate (-peak / 3999), a step up the gradient; ours is 0.
        assert authors_lr(0, peak=config.lr) < 0 and lr_factor(0, config) == 0.0
        assert config.lr * lr_factor(last, config) == pytest.approx(config.lr * 0.965**73)
