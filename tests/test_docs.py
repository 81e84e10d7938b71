"""The documentation stays true to the code: docs/commands.md is what the app generates, every
link of the README and of docs/ leads somewhere, and the README stays a five-minute read."""

from __future__ import annotations

import importlib.util
import re
import unicodedata
from pathlib import Path

import pytest

from tests.builders import REPO

PAGES = sorted([REPO / "README.md", REPO / "CHANGELOG.md", REPO / "tests" / "README.md", *(REPO / "docs").glob("*.md")])
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)")  # [text](target), not images
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_commands_reference_is_generated_from_the_app(tmp_path, monkeypatch):
    doc = load_script("commands_doc")
    assert doc.main(["--check"]) == 0, "docs/commands.md is stale: run `make docs`"
    # the check does fail on a stale page, and every command has its section
    monkeypatch.setattr(doc, "DOC", tmp_path / "commands.md")
    (tmp_path / "commands.md").write_text("old\n")
    assert doc.main(["--check"]) == 1
    from mixitcli.cli import COMMAND_ORDER

    text = (REPO / "docs" / "commands.md").read_text()
    for name in COMMAND_ORDER:
        assert f"\n## mixit {name}\n" in text


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\*|_(?=\w)|(?<=\w)_", lambda m: "_" if m.group(0) == "_" else "", heading.strip().lower())
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            out.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return out


@pytest.mark.parametrize("page", [p for p in PAGES if p.exists()], ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves(page):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...: not ours to check
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading with that anchor in {dest.relative_to(REPO)})")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_slugs_follow_github():
    assert slug("Reproducing Tables 1–3") == "reproducing-tables-13"
    assert slug("§2 Data") == "2-data"
    assert slug("The paper, the authors' code and us") == "the-paper-the-authors-code-and-us"
    assert slug("`mixit separate`: songs in, stems out") == "mixit-separate-songs-in-stems-out"


def test_readme_is_a_five_minute_read():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= 300, f"README.md has {lines} lines: move reference material to docs/"


def test_the_version_is_the_newest_changelog_section():
    from typer.testing import CliRunner

    from mixitcli.cli import app

    newest = re.search(r"^## (\S+)", (REPO / "CHANGELOG.md").read_text(), re.M).group(1)
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"mixit {newest}"
