"""The paper's recipes: every YAML is a valid configuration that states only what differs from
its stage's defaults, and `make -n tableN` prints a
plan with every run of the table, chained prepare -> pretrain -> select -> finetune -> eval -> report."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mixitcli.train.config import STAGE_CONFIGS, build_config
from mixitcli.train.options import convert, options_of

REPO = Path(__file__).resolve().parents[1]


RECIPES = sorted((REPO / "recipes").glob("*/*.yaml"))


def stage_of(recipe: Path) -> str:
    return recipe.parent.name if recipe.parent.name != "demo" else recipe.stem


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_is_a_valid_configuration(recipe):
    stage = stage_of(recipe)
    config = build_config(stage, recipe=recipe, overrides={"data": "d", "out": "o"})
    if recipe.parent.name != "demo":
        assert config.size == recipe.stem
        assert config.lr == (5e-4 if recipe.stem == "large" else 1e-3)
        assert config.batch_size == (128 if stage == "pretrain" else 32)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_states_only_what_differs_from_the_stage_defaults(recipe):
    infos = options_of(STAGE_CONFIGS[stage_of(recipe)])
    values = yaml.safe_load(recipe.read_text())
    assert values.get("stage") == stage_of(recipe)
    restated = [k for k, v in values.items() if k != "stage" and convert(infos[k], v) == infos[k].default]
    assert not restated, f"{recipe.name} restates the stage's defaults of {restated}; leave them out"


def plan(target: str) -> str:
    cmd = ["make", "-n", "--no-print-directory", "-C", str(REPO), target, "FMA=/data/fma", "MUSDB=/data/musdb18hq", "GPUS=8", "WORK=w"]
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
        fine = next(i for i, l in enumerate(lines) if f"--out w/runs/ft-{size}-large --init w/runs/pre-{size}-large" in l)
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
