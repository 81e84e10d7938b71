#!/usr/bin/env python3
"""Write docs/commands.md, the reference of every `mixit` subcommand and option, from the
Typer app itself, so that the page cannot drift from the code.

    python scripts/commands_doc.py            # rewrite docs/commands.md
    python scripts/commands_doc.py --check    # exit 1 when docs/commands.md is stale

tests/test_docs.py runs the check. Everything printed comes from the commands' own help
texts, option declarations and defaults (a default that depends on the machine, such as a
worker count, declares the text to show with ``show_default="..."``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "commands.md"

HEADER = """# Command reference

Every `mixit` subcommand with every option, in the order of `mixit --help`. This page is
generated from the command-line app by `scripts/commands_doc.py` (`make docs`); a test fails
when it is out of date, so edit the help texts in `mixitcli/cli.py` (and, for the training
commands, the fields of `mixitcli/train/config.py`), not this page. `mixit COMMAND --help`
prints the same in a terminal.
"""


def _cell(text: str) -> str:
    """Text for one Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(param) -> str:
    show = getattr(param, "show_default", None)
    if isinstance(show, str):
        return show
    if getattr(param, "is_flag", False) and getattr(param, "secondary_opts", None):
        return param.opts[0] if param.default else param.secondary_opts[0]
    default = param.default
    if default is None or default == () or getattr(param, "required", False) or callable(default):
        return ""
    if isinstance(default, (list, tuple)):
        return " ".join(str(v) for v in default)
    if isinstance(default, bool) and getattr(param, "is_flag", False):
        return "off" if not default else "on"
    return str(default.value if hasattr(default, "value") else default)


def _usage(command, ctx) -> str:
    return " ".join(["mixit", ctx.info_name, *command.collect_usage_pieces(ctx)])


def _name(param, ctx) -> str:
    """The flags (or argument name) with the value's placeholder, as `--help` writes them."""
    return param.get_help_record(ctx)[0]


def _help(param) -> str:
    text = _cell(param.help or "")
    return f"{text} (required)" if param.required and param.param_type_name == "option" else text


def _option_rows(command, ctx) -> dict[str, list[str]]:
    """Table rows of the visible options, grouped by their help panel ("Options": no panel)."""
    panels: dict[str, list[str]] = {}
    for param in command.params:
        if param.param_type_name != "option" or param.hidden:
            continue
        row = f"| `{_cell(_name(param, ctx))}` | {_cell(_default(param))} | {_help(param)} |"
        panels.setdefault(param.rich_help_panel or "Options", []).append(row)
    return panels


def render(app: typer.Typer) -> str:
    """The whole page for ``app``."""
    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="mixit")  # Typer carries its own click
    out = [HEADER]
    names = group.list_commands(root)
    out.append("| command | what it does |\n|---|---|")
    for name in names:
        command = group.get_command(root, name)
        summary = (command.help or "").strip().split("\n")[0]
        out.append(f"| [`{name}`](#mixit-{name}) | {_cell(summary)} |")
    for name in names:
        command = group.get_command(root, name)
        ctx = command.context_class(command, info_name=name, parent=root)
        out.append(f"\n## mixit {name}\n")
        out.append(f"```\n{_usage(command, ctx)}\n```\n")
        out.append((command.help or "").strip().replace("\b\n", "") + "\n")
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        if arguments:
            out.append("| argument | description |\n|---|---|")
            for arg in arguments:
                out.append(f"| `{_cell(_name(arg, ctx))}` | {_help(arg)} |")
            out.append("")
        for panel, rows in _option_rows(command, ctx).items():
            out.append(f"{panel}:\n\n| option | default | description |\n|---|---|---|")
            out.extend(rows)
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that docs/commands.md is up to date")
    args = parser.parse_args(argv)
    from mixitcli.cli import app

    text = render(app)
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run `make docs` (python scripts/commands_doc.py)", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
