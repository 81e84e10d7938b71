"""The `mixit` app (mixitcli/cli.py): version, help listing every product subcommand in pipeline
order, the data commands' help explaining every option, a stop signal mapped to exit code 128 +
its number."""

import re
import signal

import pytest
import typer
from typer.testing import CliRunner

from mixitcli import __version__
from mixitcli.cli import app
from mixitcli.signals import Interrupted

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


def plain(text: str) -> str:
    """Help text without colours and box drawing, whitespace collapsed."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize(
    "command, options",
    [
        (
            "prepare-fma",
            [
                "--out",
                "--subset",
                "--audio-dir",
                "--metadata",
                "--workers",
                "--shard",
                "--valid-fraction",
                "--silence-rule",
                "--silence-db",
                "--keep-mono",
                "--merge",
                "--progress",
            ],
        ),
        ("prepare-musdb", ["--out", "--workers", "--progress"]),
        (
            "prepare-stems",
            ["--out", "--stems", "--rest", "--layout", "--valid-tracks", "--test-tracks", "--workers", "--progress"],
        ),
    ],
)
def test_help_explains_every_option(command, options):
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in options:
        assert option in plain(result.output), option


def test_the_cli_exits_with_128_plus_the_signal_number():
    from mixitcli import cli

    app = typer.Typer(cls=cli._Commands)

    @app.command()
    def work() -> None:
        raise Interrupted(signal.SIGUSR1, "SIGUSR1: saved step 7 to RUN/checkpoints/last.pt")

    @app.command()
    def other() -> None:
        pass

    result = CliRunner().invoke(app, ["work"])
    assert result.exit_code == 128 + signal.SIGUSR1
    assert "saved step 7" in result.output and "Traceback" not in result.output
