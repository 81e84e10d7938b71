"""The `mixit` command line: one short function per subcommand (parse, validate, call, print).

Library code lives elsewhere; this module only maps options to library calls and typed
errors to clear messages and exit codes. Heavy imports happen inside the commands, so
`mixit --help` is instant.
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console

from mixitcli import __version__

app = typer.Typer(
    name="mixit",
    help=(
        "Music source separation with MixIT pre-training (Saijo & Bando, WASPAA 2025).\n\n"
        "Pipeline: prepare-fma / prepare-musdb -> pretrain -> select-channels -> "
        "finetune / freeze-finetune -> separate / eval."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mixit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, is_flag=True, help="Print the version and exit."
    ),
) -> None:
    """mixit: BS-Locoformer music source separation with MixIT pre-training."""


def fail(message: str, code: int = 1) -> None:
    """Print an error in red and exit with ``code``."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _not_implemented(name: str) -> None:
    fail(f"`mixit {name}` is not implemented yet.", code=3)


_PENDING = {
    "prepare-fma": "Scan FMA (or any folder of music), cut 10 s clips, write a manifest.",
    "prepare-musdb": "Validate MUSDB18-HQ, run source activity detection, write manifests.",
    "pretrain": "Pre-train BS-Locoformer with MixIT (12 outputs) on prepared FMA data.",
    "select-channels": "Pick 4 of the 12 MixIT outputs for vocals, drums, bass and other.",
    "finetune": "Supervised fine-tuning on MUSDB18-HQ (from scratch or from pre-training).",
    "freeze-finetune": "Fine-tuning with the separator frozen (encoder and decoder train).",
    "separate": "Separate songs into vocals, drums, bass and other.",
    "eval": "Score separations on MUSDB18-HQ (cSDR with museval, uSDR).",
}


def _register_pending(name: str, summary: str) -> None:
    def command(ctx: typer.Context) -> None:
        _not_implemented(name)

    command.__doc__ = f"{summary} (not implemented yet)"
    app.command(name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(command)


for _name, _summary in _PENDING.items():
    _register_pending(_name, _summary)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
