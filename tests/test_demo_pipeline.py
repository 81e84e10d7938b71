"""`make demo` and then `make demo-stems` at a tiny scale: every stage, chained by the real Makefile,
fits together. `make demo-stems` reuses the demo's MixIT pre-training, so both run in one test: it
is also the end-to-end run of a 2-stem collection (guitar + rest: prepare-stems, the demo's
pre-training, select-channels, finetune, separate --two-stems, eval, report, listen; issue 21)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mixitcli.model import load_model
from tests.builders import REPO


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is part of the documented set-up")
def test_make_demo_runs_every_stage(tmp_path):
    demo = tmp_path / "demo"
    variables = {
        "DEMO": demo,
        "DEMO_MIXIT": f"{sys.executable} -m mixitcli",
        "DEMO_SONGS": 6,
        "DEMO_TRAIN": 4,
        "DEMO_TEST": 1,
        "DEMO_SECONDS": 11,
        "DEMO_PRE_STEPS": 2,
        "DEMO_FT_STEPS": 2,
        "DEMO_VALID_FRACTION": 0.5,
        "DEMO_ARGS": "--segment-seconds 1 --batch-size 2 --workers 0",
    }
    cmd = ["make", "-C", str(REPO), "demo", *[f"{k}={v}" for k, v in variables.items()]]
    # two test processes share the machine's cores (tests/conftest.py): one thread per command
    env = dict(os.environ, OMP_NUM_THREADS="1") if os.environ.get("PYTEST_XDIST_WORKER") else None
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
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
    assert (
        "tiny-from-scratch" in page and "tiny-mixit-pretrained" in page and page.count("<audio") == 1 + 3 * 4
    )  # mixture, references, two models
    summary = json.loads((demo / "results" / "finetune-mixit" / "summary.json").read_text())
    assert summary["tracks"] == 1 and set(summary["csdr"]) >= {"vocals", "bass", "drums", "other"}

    # `make demo-stems` on top: a guitar learnt from 2 training songs, as 2 of the 12 outputs and from scratch
    scale = {
        "DEMO_STEMS_TRAIN": 3,
        "DEMO_STEMS_TEST": 1,
        "DEMO_STEMS_SECONDS": 8.5,
        "DEMO_STEMS_STEPS": 2,
        "DEMO_EVAL_WORKERS": 0,
    }
    stems_cmd = cmd[:3] + ["demo-stems"] + cmd[4:] + [f"{k}={v}" for k, v in scale.items()]
    proc = subprocess.run(stems_cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    guitar = demo / "guitar"
    assert "pretrain --config" not in proc.stdout  # the demo's pre-training is reused as it is
    assert (
        "| guitar-mixit-pretrained |" in proc.stdout and "cSDR Guitar" in proc.stdout and "Table 1" not in proc.stdout
    )
    assert json.loads((guitar / "prep" / "summary.json").read_text())["stems"] == ["guitar", "rest"]
    selection = json.loads((guitar / "selection.json").read_text())
    assert selection["stems"] == ["guitar", "rest"] and len(set(selection["selected"])) == 2
    for run in ("mixit", "scratch"):
        assert load_model(guitar / "runs" / run).stems == ("guitar", "rest")
        assert json.loads((guitar / "results" / run / "summary.json").read_text())["stems"] == ["guitar", "rest"]
    song = Path((guitar / "separated" / "DONE").read_text().strip())
    assert sorted(p.name for p in song.iterdir()) == ["guitar.wav", "no_guitar.wav"]
    page = (guitar / "listen" / "index.html").read_text()
    assert page.count("<audio") == 1 + 2 + 2 * 2 and "cSDR Guitar" in page  # mixture, references, two models

    # a second `make demo demo-stems` finds everything done and trains nothing again
    again = subprocess.run(
        stems_cmd[:3] + ["demo", *stems_cmd[3:]], capture_output=True, text=True, timeout=300, env=env
    )
    assert again.returncode == 0 and "pretrain" not in again.stdout.replace("tiny-mixit-pretrained", "").replace(
        "guitar-mixit-pretrained", ""
    )
    assert "finetune" not in again.stdout and "| guitar-mixit-pretrained |" in again.stdout
