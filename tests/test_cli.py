"""The `mixit` app: version, help listing every product subcommand in pipeline order."""

import re

from typer.testing import CliRunner

from mixitcli import __version__
from mixitcli.cli import app

runner = CliRunner()

PRODUCT_COMMANDS = [
    "prepare-fma",
    "prepare-musdb",
    "pretrain",
    "select-channels",
    "finetune",
    "freeze-finetune",
    "separate",
    "eval",
    "report",
    "listen",
]


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_every_subcommand():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in PRODUCT_COMMANDS:
        assert name in result.output, name


def test_help_lists_commands_in_pipeline_order():
    result = runner.invoke(app, ["--help"])
    listed = [m.group(1) for line in result.output.splitlines() if (m := re.match(r"[│|] ([a-z][a-z-]+) ", line))]
    pipeline = [*PRODUCT_COMMANDS[:6], "average", *PRODUCT_COMMANDS[6:], "make-demo-data", "plot", "models"]
    assert [name for name in listed if name in pipeline] == pipeline
