"""Summaries and `mixit report` (mixitcli/report.py): medians and means with missing values, the
paper's tables and the charts."""

import json

import pytest
from typer.testing import CliRunner

from mixitcli.cli import app
from mixitcli.report import SUMMARY_JSON, TABLE_STEMS, summarise

runner = CliRunner()


def test_summary_medians_means_and_missing_values():
    def rec(name, c, u):
        return {
            "track": name,
            "csdr": dict(zip(TABLE_STEMS, c)),
            "usdr": dict(zip(TABLE_STEMS, u)),
            "usdr_mdx": dict(zip(TABLE_STEMS, u)),
            "flags": {},
        }

    records = [
        rec("a", [1, 2, 3, 4], [1, 1, 1, 1]),
        rec("b", [3, 2, 1, None], [2, 2, 2, None]),
        rec("c", [8, 2, 2, 6], [6, 3, 3, 3]),
    ]
    summary = summarise(records)
    assert summary["csdr"] == {"vocals": 3.0, "bass": 2.0, "drums": 2.0, "other": 5.0, "average": 3.0}
    assert summary["usdr"]["vocals"] == pytest.approx(3.0) and summary["usdr"]["other"] == pytest.approx(2.0)
    assert summary["tracks"] == 3


def test_report_tables_and_charts(tmp_path):
    def summary(c, u):
        stems = {s: c for s in TABLE_STEMS} | {"average": c}
        ustems = {s: u for s in TABLE_STEMS} | {"average": u}
        return {"model": None, "tracks": 50, "csdr": stems, "usdr": ustems, "usdr_mdx": ustems, "flagged": []}

    paths = []
    for name, c in (
        ("sup.musdb18hq.bslocoformer-medium", 8.0),
        ("sup.musdb18hq.bslocoformer-medium.mixit-fma-large-pretrained", 8.5),
        ("mine", 7.0),
    ):
        folder = tmp_path / name
        folder.mkdir()
        s = summary(c, c - 0.3)
        s["model"] = name
        (folder / SUMMARY_JSON).write_text(json.dumps(s))
        paths.append(str(folder))
    result = runner.invoke(app, ["report", *paths, f"M2={paths[1]}", "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Table 1" in md and "## Table 3" in md and "## Table 2" not in md
    row = next(line for line in md.splitlines() if line.startswith("| M1: medium"))
    assert row.count("8.00") == 5 and row.count("7.70") == 5  # cSDR and uSDR for 4 stems + average
    assert "| mine |" in md and "BSRNN" in md
    assert all(
        (tmp_path / "report" / f"{c}.png").stat().st_size > 1000
        for c in ("vocals", "bass", "drums", "other", "average")
    )
    result = runner.invoke(app, ["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "not a readable summary" in " ".join(result.output.split())
