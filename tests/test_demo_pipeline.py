"""`make demo` at a tiny scale: every stage, chained by the real Makefile, fits together."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is part of the documented set-up")
def test_make_demo_runs_every_stage(tmp_path):
    demo = tmp_path / "demo"
    variables = {
        "DEMO": demo, "DEMO_MIXIT": f"{sys.executable} -m mixitcli", "DEMO_SONGS": 6, "DEMO_TRAIN": 4,
        "DEMO_TEST": 1, "DEMO_SECONDS": 11, "DEMO_PRE_STEPS": 2, "DEMO_FT_STEPS": 2, "DEMO_VALID_FRACTION": 0.5,
        "DEMO_ARGS": "--segment-seconds 1 --batch-size 2 --workers 0",
    }
    cmd = ["make", "-C", str(REPO), "demo", *[f"{k}={v}" for k, v in variables.items()]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (demo / "report" / "report.md").read_text()
    assert "tiny-from-scratch" in report and "tiny-mixit-pretrained" in report
    assert "| tiny-mixit-pretrained |" in proc.stdout  # the table is printed at the end
    song = Path((demo / "stems" / "DONE").read_text().strip())
    assert sorted(p.name for p in song.iterdir()) == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    selection = json.loads((demo / "runs" / "pretrain" / "selection.json").read_text())
    assert len(set(selection["selected"])) == 4
    for run in ("pretrain", "finetune-mixit", "finetune-scratch"):
        assert (demo / "runs" / run / "curves.png").is_file()
    page = (demo / "listen" / "index.html").read_text()
    assert "tiny-from-scratch" in page and "tiny-mixit-pretrained" in page and page.count("<audio") == 1 + 3 * 4  # mixture, references, two models
    summary = json.loads((demo / "results" / "finetune-mixit" / "summary.json").read_text())
    assert summary["tracks"] == 1 and set(summary["csdr"]) >= {"vocals", "bass", "drums", "other"}

    # a second `make demo` finds everything done and trains nothing again
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "pretrain" not in again.stdout.replace("tiny-mixit-pretrained", "")
