"""Stem sets as data (issue 21): a 5-stem collection of its own names end to end through the real
CLI (prepare-stems, pretrain, select-channels, finetune, separate, eval, report, listen), with the
stems travelling from the prepared folder into the run, the model, the selection, the output file
names, the scores and the pages; a resume or an evaluation on data of other stems is refused.
The 2-stem collection (guitar + rest) runs the same way in `make demo-stems` (tests/test_demo_pipeline.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from typer.testing import CliRunner

from mixitcli.cli import app
from mixitcli.model import load_model
from mixitcli.model.checkpoints import load_checkpoint
from mixitcli.stems import StemsError, check_stems, parse_stems
from tests.builders import flat, invoke

SR = 44100
STEMS5 = ("lead", "pad", "sub", "kick", "hats")  # the output order asked for (not alphabetical)
runner = CliRunner()


def instruments(seconds: float, rng: np.random.Generator, *, gated: bool = True) -> dict[str, np.ndarray]:
    """Five stereo (2, t) float32 instruments: a lead tone with vibrato, a pad chord, a sub bass,
    kick bursts and noise hats; each panned and (``gated``) switched off for some of its seconds."""
    t = np.arange(int(seconds * SR)) / SR
    beat = (t * 2) % 1.0  # two beats a second
    mono = {
        "lead": np.sin(2 * np.pi * rng.uniform(400, 700) * t + 2 * np.sin(2 * np.pi * 5 * t)),
        "pad": sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(200, 1000, 3)) / 3,
        "sub": np.sin(2 * np.pi * rng.uniform(45, 90) * t),
        "kick": np.sin(2 * np.pi * 60 * t) * np.exp(-beat * 20),
        "hats": rng.standard_normal(t.size) * np.exp(-((t * 4) % 1.0) * 30),
    }
    out = {}
    for name, x in mono.items():
        gate = np.repeat(rng.random(int(seconds) + 1) > (0.25 if gated else -1), SR)[: t.size]
        pan = rng.uniform(0.2, 0.8)
        out[name] = (np.stack([pan * x, (1 - pan) * x]) * gate * rng.uniform(0.03, 0.1)).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict:
    """ROOT/{train,test}/<song>/<stem>.wav of the five stems: 3 training songs of 8.5 s (one 8 s
    activity-detection segment each), the one `--valid-tracks 1` holds out (Song 2, by the hash of
    its name) of 2 s, and a test song of 1.2 s with only lead and kick (the others are silence in
    its references); and 4 mixtures of 10.5 s for a tiny MixIT pre-training. Short songs and few
    scored stems keep separation and museval (whose cost grows with the cube of the stems) cheap."""
    tmp = tmp_path_factory.mktemp("five")
    rng = np.random.default_rng(5)
    songs = {f"Song {k}": ("train", 2.0 if k == 2 else 8.5) for k in range(4)} | {"Song T": ("test", 1.2)}
    for name, (split, seconds) in songs.items():
        stems = instruments(seconds, rng, gated=split == "train")
        if split == "test":
            stems = {s: x for s, x in stems.items() if s in ("lead", "kick")}  # stems the song lacks: silence
        folder = tmp / "root" / split / name
        folder.mkdir(parents=True)
        for stem, x in stems.items():
            sf.write(folder / f"{stem}.wav", x.T, SR)
        sf.write(folder / "mixture.wav", sum(stems.values()).T, SR)
    (tmp / "music").mkdir()
    for k in range(4):
        sf.write(tmp / "music" / f"m{k}.wav", sum(instruments(10.5, rng).values()).T, SR)
    return {"tmp": tmp, "root": tmp / "root", "music": tmp / "music"}


def test_stem_names_are_checked_and_reported_together():
    assert parse_stems(" guitar, piano ,rest") == ("guitar", "piano", "rest")
    with pytest.raises(StemsError) as err:
        check_stems(["guitar", "mixture", "gui tar", "guitar"])
    text = str(err.value)
    assert "'gui tar': a stem name is a file name without a suffix" in text
    assert "'mixture' is the mixture's file name, not a stem" in text and "repeated: guitar" in text
    with pytest.raises(StemsError, match="13 stems; a model selects at most 12"):
        check_stems([f"s{k}" for k in range(13)])


@pytest.mark.slow
def test_five_stems_end_to_end(collection):
    tmp, root = collection["tmp"], collection["root"]
    prep, run = tmp / "prep", tmp / "run"
    fast = [
        "--size",
        "tiny",
        "--segment-seconds",
        "0.5",
        "--warmup-steps",
        "1",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-checkpointing",
    ]

    result = invoke(
        "prepare-stems",
        root,
        "--out",
        prep,
        "--stems",
        ",".join(STEMS5),
        "--valid-tracks",
        "1",
        "--workers",
        "0",
        "--no-progress",
    )
    assert "stems: lead, pad, sub, kick, hats" in flat(result.output)
    assert "silence for a stem a song lacks: pad in 1 song(s), sub in 1 song(s), hats in 1 song(s)" in flat(
        result.output
    )
    invoke(
        "prepare-fma",
        "--audio-dir",
        collection["music"],
        "--out",
        tmp / "fma",
        "--valid-fraction",
        "0.5",
        "--workers",
        "0",
        "--no-progress",
    )
    invoke(
        "pretrain",
        "--data",
        tmp / "fma",
        "--out",
        tmp / "pre",
        *fast,
        "--batch-size",
        "2",
        "--max-steps",
        "1",
        "--valid-size",
        "2",
    )

    assert (prep / "valid.txt").read_text() == "Song 2\n"
    # select-channels: 5 of the 12 outputs, from the one validation song
    selection = tmp / "selection.json"
    result = invoke(
        "select-channels", tmp / "pre", "--data", prep, "--out", selection, "--device", "cpu", "--chunk-seconds", "1"
    )
    chosen = json.loads(selection.read_text())
    assert (
        chosen["stems"] == list(STEMS5)
        and len(set(chosen["selected"])) == 5
        and torch.tensor(chosen["counts"]).shape == (12, 5)
    )
    assert [r["stem"] for r in chosen["report"]] == list(STEMS5)
    assert all(r["active_chunks"] == sum(row[j] for row in chosen["counts"]) for j, r in enumerate(chosen["report"]))
    assert "active chunks" in result.output and "runner-up" in result.output

    # finetune: 5 outputs named after the data's stems, recorded in config.yaml and the checkpoints
    invoke(
        "finetune",
        "--data",
        prep,
        "--out",
        run,
        "--init",
        tmp / "pre",
        "--selection",
        selection,
        *fast,
        "--batch-size",
        "1",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "2",
    )
    assert yaml.safe_load((run / "config.yaml").read_text())["stems"] == list(STEMS5)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["model"]["stems"] == list(STEMS5)
    model = load_model(run)
    assert model.stems == STEMS5 and model.config.n_outputs == 5
    valid = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "usdr/valid" in line]
    assert {f"usdr/valid/{s}" for s in STEMS5} <= valid[-1].keys()
    invoke("finetune", "--out", run, "--resume", "--epochs", "2")  # a resumed k-stem run goes on
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4
    invoke(
        "freeze-finetune",
        "--data",
        prep,
        "--out",
        tmp / "frozen",
        "--init",
        tmp / "pre",
        "--selection",
        selection,
        *fast,
        "--batch-size",
        "1",
        "--max-steps",
        "1",
    )
    assert load_model(tmp / "frozen").stems == STEMS5
    invoke("average", run, "--out", tmp / "model.pt")
    assert load_model(tmp / "model.pt").stems == STEMS5

    # a resume on data of other stems is refused, naming both lists
    invoke(
        "prepare-stems",
        root,
        "--out",
        tmp / "prep2",
        "--stems",
        "lead",
        "--rest",
        "rest",
        "--valid-tracks",
        "1",
        "--workers",
        "0",
        "--no-progress",
    )
    result = runner.invoke(app, ["finetune", "--out", str(run), "--resume", "--data", str(tmp / "prep2")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert f"this run fine-tunes the stems {', '.join(STEMS5)}, but --data {tmp / 'prep2'} holds lead, rest" in flat(
        result.output
    )

    # separate: one file per stem, named after it
    invoke(
        "separate", root / "test" / "Song T" / "mixture.wav", "--model", run, "--out", tmp / "sep", "--device", "cpu"
    )
    assert sorted(p.name for p in (tmp / "sep" / "mixture").iterdir()) == sorted(f"{s}.wav" for s in STEMS5)

    # eval on the prepared folder's test song: scores per stem name; the stems it lacks are left out
    result = invoke("eval", "--model", run, "--data", prep, "--out", tmp / "res", "--workers", "0", "--device", "cpu")
    summary = json.loads((tmp / "res" / "summary.json").read_text())
    assert summary["stems"] == list(STEMS5) and set(summary["csdr"]) == {*STEMS5, "average"}
    assert [s for s in STEMS5 if summary["csdr"][s] is not None] == ["lead", "kick"]
    assert summary["flagged"] == [
        {"track": "Song T", "stem": s, "flag": "silent reference"} for s in ("pad", "sub", "hats")
    ]
    assert "Lead" in result.output and "Hats" in result.output
    refused = runner.invoke(
        app, ["eval", "--model", str(tmp / "pre"), "--data", str(prep), "--out", str(tmp / "res12"), "--workers", "0"]
    )
    assert refused.exit_code == 1 and isinstance(refused.exception, SystemExit), refused.output
    assert (
        f"the model outputs the stems {', '.join(f'out{i}' for i in range(12))}, but the data's stems are {', '.join(STEMS5)}"
        in flat(refused.output)
    )

    # report: no paper tables for other stems, one generic table with a column per stem
    invoke("report", f"five={tmp / 'res'}", "--out", tmp / "report")
    report = (tmp / "report" / "report.md").read_text()
    assert "| model | cSDR Lead | cSDR Pad | cSDR Sub | cSDR Kick | cSDR Hats | cSDR Average |" in report
    assert "Table 1" not in report and (tmp / "report" / "kick.png").is_file()

    # listen: every stem of the model, with the references of the prepared folder
    invoke("listen", f"five={tmp / 'res'}", "--out", tmp / "page", "--codec", "mp3")
    page = (tmp / "page" / "index.html").read_text()
    assert all(f'<th class="stem">{s}</th>' in page for s in STEMS5)
    assert (
        page.count("<audio") == 1 + 2 + 5
    )  # the mixture, the references (lead and kick; no file for silence), the estimates
    assert "cSDR Lead" in page and "cSDR Hats" in page
