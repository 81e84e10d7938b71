"""The `mixit` app: version, help listing every product subcommand."""

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
