"""A prepared stems folder is checked when a run starts (issue 20): a malformed salient line, a
wrong path in it, a segment past its file's end, a validation song listed twice and a song whose
files do not have the recorded length (or none) are each one clear error naming the file and
line, through the real CLI, before any training; exit code 1 and no traceback."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from mixitcli.cli import app
from tests.builders import flat

from .conftest import SR

runner = CliRunner()


def rewrite(path, change) -> None:
    """Rewrite a JSON-lines file line by line: ``change(i, row)`` returns the new line's text."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(change(i, r) + "\n" for i, r in enumerate(rows)))


@pytest.mark.parametrize("case", ["salient", "validation", "lengths"])
def test_a_damaged_prepared_folder_is_refused_when_the_run_starts(musdb_prepared, tmp_path, case):
    data = tmp_path / "prep"
    shutil.copytree(musdb_prepared, data)
    if case == "salient":  # every damaged line of the file is named at once
        first = json.loads((data / "salient" / "vocals.jsonl").read_text().splitlines()[0])
        path = first["path"]
        lines = [
            json.dumps(first),
            "{not json",
            json.dumps(dict(first, path="/nowhere/vocals.wav")),
            json.dumps(dict(first, start=20 * SR)),
            json.dumps([first["track"], first["start"]]),
        ]
        (data / "salient" / "vocals.jsonl").write_text("\n".join(lines) + "\n")
        expected = [
            "salient/vocals.jsonl is damaged (4 problem(s))",
            "salient/vocals.jsonl line 2: not JSON",
            "salient/vocals.jsonl line 3: /nowhere/vocals.wav does not exist or is not readable audio",
            f"salient/vocals.jsonl line 4: the segment [{20 * SR}, {28 * SR}) ends past the end of {path} ({20 * SR} samples)",
            "salient/vocals.jsonl line 5: not a segment",
        ]
    elif case == "validation":
        (data / "valid.txt").write_text("Actions - One Minute Smile\nActions - One Minute Smile\n")
        expected = [
            "valid.txt lists a track twice",
            "valid.txt line 2: 'Actions - One Minute Smile' again (first on line 1)",
        ]
    else:
        rewrite(
            data / "tracks.jsonl",
            lambda i, r: json.dumps(dict(r, frames=r["frames"] - 1 if r["subset"] == "valid" else r["frames"])),
        )
        expected = [
            "the valid songs do not match their files",
            f"has {12 * SR} samples, tracks.jsonl says {12 * SR - 1}",
        ]
    result = runner.invoke(
        app,
        [
            "finetune",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--size",
            "tiny",
            "--device",
            "cpu",
            "--workers",
            "0",
        ],
    )
    text = flat(result.output)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output  # handled: no traceback
    for part in expected:
        assert part in text, (part, text)
    assert (
        f"prepare it again: mixit prepare-musdb {json.loads((data / 'summary.json').read_text())['root']} --out {data}"
        in text
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_song_of_no_samples_is_refused(musdb_prepared, tmp_path):
    data = tmp_path / "prep"
    shutil.copytree(musdb_prepared, data)
    rewrite(
        data / "tracks.jsonl", lambda i, r: json.dumps(dict(r, frames=0 if r["subset"] == "valid" else r["frames"]))
    )
    result = runner.invoke(
        app, ["select-channels", str(tmp_path / "any.pt"), "--data", str(data), "--out", str(tmp_path / "s.json")]
    )
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Actions - One Minute Smile: no samples (an empty track)" in flat(result.output)
