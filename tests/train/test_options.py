"""Training options are stage dataclass fields (mixitcli/train/options.py): one declaration gives
the flag, its help, the type and range check of recipe and command-line values, and the resume
rule. Every problem is listed at once, without a traceback.

The training loop is replaced by a recorder here (the fixture `trained`): these tests check what
reaches it. Which run is continued: tests/train/test_resume.py.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import pytest
import typer
import yaml
from typer.testing import CliRunner

from mixitcli import cli
from mixitcli.train.config import STAGE_CONFIGS, ConfigError, PretrainConfig, build_config
from mixitcli.train.options import OBJECTIVE, RUNTIME, option, options_of
from tests.builders import run_folder
from tests.builders import unboxed as flat

runner = CliRunner()
WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}


@dataclass
class MadeUpConfig(PretrainConfig):
    """Pre-training with two options that exist only in this test."""

    made_up_gain_db: float = option(
        0.0, "A made-up gain, for this test only.", group=OBJECTIVE, at_least=-20, at_most=20
    )
    made_up_patience: int = option(3, "A made-up patience, for this test only.", group=RUNTIME, at_least=1, resume=True)


def test_a_made_up_field_is_one_declaration(monkeypatch, trained, tmp_path):
    monkeypatch.setitem(STAGE_CONFIGS, "pretrain", MadeUpConfig)
    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("pretrain")(cli.training_command("pretrain", "Pre-training with made-up options."))

    # its flag, help text and default
    shown = flat(runner.invoke(app, ["pretrain", "--help"], env=WIDE).output)
    assert "--made-up-gain-db FLOAT A made-up gain, for this test only. (default 0.0)" in shown
    assert "--made-up-patience INTEGER A made-up patience, for this test only. (default 3)" in shown

    # its type check (command line and recipe) and range check, all problems at once
    base = ["pretrain", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "new")]
    result = runner.invoke(app, [*base, "--made-up-gain-db", "loud", "--made-up-patience", "2.5", "--lr", "fast"])
    assert result.exit_code == 1 and not trained
    said = flat(result.output)
    assert "made_up_gain_db (--made-up-gain-db) must be a number, got 'loud'" in said
    assert "made_up_patience (--made-up-patience) must be a whole number, got '2.5'" in said
    assert "lr (--lr) must be a number, got 'fast'" in said and "Traceback" not in result.output
    result = runner.invoke(app, [*base, "--made-up-gain-db", "30"])
    assert result.exit_code == 1 and "made_up_gain_db must be <= 20, got 30.0" in flat(result.output)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("made_up_patience: '4'\n")
    with pytest.raises(ConfigError, match=r"made_up_patience \(recipe .*\) must be a whole number, got '4'"):
        build_config("pretrain", recipe=recipe, overrides={"data": "d", "out": "o"})

    # a good value reaches the configuration
    assert runner.invoke(app, [*base, "--made-up-gain-db", "-6", "--made-up-patience", "5"]).exit_code == 0
    config, resume = trained.pop()
    assert (type(config), config.made_up_gain_db, config.made_up_patience, resume) == (MadeUpConfig, -6.0, 5, False)

    # its resume rule: the patience may change, the gain defines the run
    run = run_folder(tmp_path)
    assert runner.invoke(app, ["pretrain", "--out", str(run), "--resume", "--made-up-patience", "7"]).exit_code == 0
    config, resume = trained.pop()
    assert (config.made_up_patience, config.made_up_gain_db, resume) == (7, 0.0, True)
    result = runner.invoke(app, ["pretrain", "--out", str(run), "--resume", "--made-up-gain-db", "2"])
    said = flat(result.output)
    assert result.exit_code == 1 and not trained
    assert "made_up_gain_db (run: 0.0, --made-up-gain-db: 2.0)" in said
    assert re.search(r"Only .*made_up_patience.* may change when resuming", said)


def test_a_field_without_a_declaration_is_refused():
    @dataclass
    class Undeclared(PretrainConfig):
        plain: int = 3

    with pytest.raises(TypeError, match="Undeclared.plain is not declared with option"):
        options_of(Undeclared)


def test_every_stage_field_is_described():
    from mixitcli.model.config import PRESETS

    for stage, cls in STAGE_CONFIGS.items():
        infos = options_of(cls)
        assert list(infos) == [f.name for f in dataclasses.fields(cls)]
        for info in infos.values():
            assert info.help.endswith(".") and info.group, (stage, info.name)
            assert info.default == getattr(cls(), info.name)
    assert options_of(PretrainConfig)["size"].choices == tuple(PRESETS)  # the presets of the model
    assert options_of(STAGE_CONFIGS["freeze-finetune"])["trainable"].default == "encdec"  # a stage's own default


BAD_RECIPE = {
    "lr": "fast",
    "batch_size": "2",
    "grad_accum": True,
    "epochs": 3.7,
    "size": "huge",
    "level_range_db": [1, "x"],
}


def test_recipe_values_are_checked_against_their_types(tmp_path, trained):
    ok = tmp_path / "ok.yaml"
    ok.write_text("stage: pretrain\nlr: 1e-3\nwarmup_steps: 10\nbetas: [0.8, 0.99]\n")  # YAML 1.1 reads 1e-3 as text
    config = build_config("pretrain", recipe=ok, overrides={"data": "d", "out": "o"})
    assert (config.lr, config.warmup_steps, config.betas) == (0.001, 10, (0.8, 0.99))

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stage": "pretrain", **BAD_RECIPE}))
    result = runner.invoke(
        cli.app,
        [
            "pretrain",
            "--config",
            str(bad),
            "--out",
            str(tmp_path / "r"),
            "--size",
            "huge",
            "--batch-size",
            "0",
            "--betas",
            "0.9",
            "high",
        ],
    )
    said = flat(result.output)
    assert result.exit_code == 1 and not trained and "Traceback" not in result.output
    for expected in (
        "lr (recipe {}) must be a number, got 'fast'",
        "batch_size (recipe {}) must be a whole number, got '2' (write numbers without quotes)",
        "grad_accum (recipe {}) must be a whole number, got True",
        "epochs (recipe {}) must be a whole number, got 3.7",
        "size (recipe {}) must be one of tiny, small, medium, large; got 'huge'",
        "level_range_db (recipe {}) must be a number, got 'x'",
        "size (--size) must be one of tiny, small, medium, large; got 'huge'",
        "betas (--betas) must be a number, got 'high'",
        "batch_size must be >= 1, got 0",
        "data is required (--data DIR)",
    ):
        assert expected.format(bad) in said, expected


def test_betas_outside_0_1_are_refused_with_the_other_problems(tmp_path, trained):
    """Issue 20: `betas: [2, 2]` reached AdamW, whose ValueError was a traceback."""
    recipe = tmp_path / "betas.yaml"
    recipe.write_text("stage: pretrain\nbetas: [2, 2]\ndropout: 1.5\n")
    result = runner.invoke(cli.app, ["pretrain", "--config", str(recipe), "--data", "d", "--out", str(tmp_path / "r")])
    said = flat(result.output)
    assert result.exit_code == 1 and not trained and "Traceback" not in result.output, result.output
    assert "betas must each be < 1, got 2.0 2.0" in said and "dropout must be < 1, got 1.5" in said
    result = runner.invoke(
        cli.app, ["finetune", "--data", "d", "--out", str(tmp_path / "r"), "--betas", "-0.1", "0.999"]
    )
    assert result.exit_code == 1 and "betas must each be >= 0, got -0.1 0.999" in flat(result.output)


def test_command_line_values_reach_the_configuration(tmp_path, trained):
    args = [
        "finetune",
        "--data",
        str(tmp_path / "d"),
        "--out",
        str(tmp_path / "r"),
        "--size",
        "tiny",
        "--lr",
        "2e-4",
        "--betas",
        "0.8",
        "0.95",
        "--decay-stop-epoch",
        "none",
        "--valid-every",
        "3",
        "--no-checkpointing",
        "--save-every",
        "7",
        "--trainable",
        "encdec",
        "--no-bf16",
    ]
    assert runner.invoke(cli.app, args).exit_code == 0
    config, resume = trained.pop()
    assert (config.stage, config.size, config.lr, config.betas, config.decay_stop_epoch) == (
        "finetune",
        "tiny",
        2e-4,
        (0.8, 0.95),
        None,
    )
    assert (config.valid_every_epochs, config.activation_checkpointing, config.save_every_steps) == (3, False, 7)
    assert (config.trainable, config.bf16, resume) == ("encdec", False, False)
    # pre-training's options are not offered by fine-tuning
    result = runner.invoke(cli.app, [*args, "--mixit-solver", "exact"])
    assert result.exit_code == 2 and "No such option" in result.output
