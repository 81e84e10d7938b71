"""Stage configurations (mixitcli/train/config.py): the paper's defaults, recipes, every problem
reported at once (also through `mixit pretrain`), resume rules, a recipe compared with the run it
resumes."""

import pytest
import yaml
from typer.testing import CliRunner

from mixitcli import cli
from mixitcli.cli import app
from mixitcli.train.config import (
    ConfigError,
    FinetuneConfig,
    FreezeFinetuneConfig,
    PretrainConfig,
    build_config,
    resume_config,
)
from tests.builders import run_folder
from tests.builders import unboxed as flat

runner = CliRunner()


def test_stage_defaults_follow_the_paper():
    pre, fine, freeze = PretrainConfig(), FinetuneConfig(), FreezeFinetuneConfig()
    assert (pre.n_outputs, pre.batch_size, pre.epochs, pre.steps_per_epoch, pre.decay_factor, pre.loss) == (
        12,
        128,
        150,
        2038,
        0.965,
        "mixit",
    )
    assert (pre.warmup_steps, pre.decay_stop_epoch * pre.steps_per_epoch) == (
        4000,
        152_850,
    )  # the authors' FMA-large config
    assert (fine.n_outputs, fine.batch_size, fine.epochs, fine.steps_per_epoch, fine.decay_start_epoch) == (
        4,
        32,
        900,
        110,
        550,
    )
    assert (freeze.trainable, freeze.epochs) == ("encdec", 200)
    assert pre.weight_decay == fine.weight_decay == 1e-2 and pre.clip_norm == 5.0 and fine.warmup_steps == 5000
    assert pre.stem_norm == fine.stem_norm == "rms"  # the paper's; the table recipes choose mean_abs


def test_recipe_then_command_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"stage": "pretrain", "size": "small", "lr": 5e-4, "batch_size": 64}))
    config = build_config("pretrain", recipe=recipe, overrides={"data": "d", "out": "o", "batch_size": 16, "lr": None})
    assert (config.size, config.lr, config.batch_size) == ("small", 5e-4, 16)


def test_recipe_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: pretrain\nlearning_rate: 1\n")
    with pytest.raises(ConfigError, match="unknown option.*learning_rate"):
        build_config("pretrain", recipe=bad, overrides={"data": "d", "out": "o"})
    other = tmp_path / "other.yaml"
    other.write_text("stage: finetune\n")
    with pytest.raises(ConfigError, match="is a 'finetune' recipe"):
        build_config("pretrain", recipe=other, overrides={"data": "d", "out": "o"})


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        build_config("finetune", overrides={"batch_size": 0, "selection": "s.json", "mixit_solver": "greedy"})
    message = str(e.value)
    for part in ("data", "out", "batch_size", "selection needs init", "mixit_solver"):
        assert part in message


def test_resume_allows_only_runtime_changes():
    saved = build_config("pretrain", overrides={"data": "d", "out": "o", "max_steps": 10}).to_dict()
    assert resume_config(saved, {"max_steps": 20, "data": "d"}).max_steps == 20
    with pytest.raises(ConfigError, match="lr"):
        resume_config(saved, {"lr": 0.1})


def test_bad_options_are_reported_together(tmp_path):
    result = runner.invoke(
        app, ["pretrain", "--out", str(tmp_path / "r"), "--batch-size", "0", "--mixit-solver", "greedy"]
    )
    assert result.exit_code != 0
    assert "data" in result.output and "batch_size" in result.output and "mixit_solver" in result.output


def test_resume_compares_a_recipe_with_the_run(tmp_path, trained):
    run = run_folder(tmp_path, size="tiny", lr=2e-3)
    other = tmp_path / "other.yaml"
    other.write_text("stage: pretrain\nsize: small\nlr: 0.002\nepochs: 3\n")
    result = runner.invoke(cli.app, ["pretrain", "--out", str(run), "--resume", "--config", str(other)])
    said = flat(result.output).replace(" ", "")
    assert result.exit_code == 1 and not trained
    assert f"size(run:'tiny',recipe{other}:'small')" in said and "lr(run:" not in said  # 0.002 is the run's 2e-3
    assert "aresumedrunneedsno--config" in said
    same = tmp_path / "same.yaml"
    same.write_text(
        "stage: pretrain\nsize: tiny\nlr: 2.0e-3\nepochs: 3\n"
    )  # restates the run; changes a runtime option
    assert runner.invoke(cli.app, ["pretrain", "--out", str(run), "--resume", "--config", str(same)]).exit_code == 0
    config, resume = trained.pop()
    assert (config.size, config.lr, config.epochs, resume) == ("tiny", 2e-3, 3, True)
