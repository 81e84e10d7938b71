"""`mixit prepare-fma` and `mixit prepare-musdb` through the real CLI (Typer's CliRunner)."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from mixitcli.cli import app

from .conftest import noise, write

runner = CliRunner()


def plain(text: str) -> str:
    """Help text without colours and box drawing, whitespace collapsed."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize(
    "command, options",
    [
        ("prepare-fma", ["--out", "--subset", "--audio-dir", "--metadata", "--workers", "--shard", "--valid-fraction",
                         "--silence-rule", "--silence-db", "--keep-mono", "--merge", "--progress"]),
        ("prepare-musdb", ["--out", "--workers", "--progress"]),
        ("prepare-stems", ["--out", "--stems", "--rest", "--layout", "--valid-tracks", "--test-tracks", "--workers", "--progress"]),
    ],
)
def test_help_explains_every_option(command, options):
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in options:
        assert option in plain(result.output), option


def test_prepare_fma_end_to_end(tmp_path):
    src = tmp_path / "music"
    for k in range(3):
        write(src / "album" / f"song{k}.flac", noise(12, seed=k))
    (src / "broken.mp3").write_bytes(b"ID3 garbage")
    out = tmp_path / "out"
    result = runner.invoke(app, ["prepare-fma", "--audio-dir", str(src), "--out", str(out), "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "3 kept" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["segments_kept"] == 6 and summary["files_rejected"] == {"undecodable": 1}
    again = runner.invoke(app, ["prepare-fma", "--merge", "--out", str(out), "--valid-fraction", "0.5"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "summary.json").read_text())["valid_fraction"] == 0.5


def test_prepare_fma_errors(tmp_path, fma_root):
    (tmp_path / "empty").mkdir()
    cases = [
        (["prepare-fma", str(tmp_path / "missing"), "--subset", "small"], "no such folder"),
        (["prepare-fma", "--audio-dir", str(tmp_path / "empty")], "no audio files"),
        (["prepare-fma", str(fma_root), "--subset", "huge"], "unknown subset 'huge'"),
        (["prepare-fma", str(fma_root / "fma_small"), "--subset", "large"], "does not know the subset 'large'"),
        (["prepare-fma", "--audio-dir", str(fma_root), "--shard", "2/2"], "0-based"),
        (["prepare-fma", "--audio-dir", str(fma_root), "--silence-rule", "loud"], "silence_rule"),
        (["prepare-fma", "--merge"], "no shards"),
    ]
    for args, message in cases:
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "o")])
        assert result.exit_code == 1, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
    both = runner.invoke(app, ["prepare-fma", str(fma_root), "--audio-dir", str(fma_root), "--out", str(tmp_path / "o")])
    assert both.exit_code == 2 and "either ROOT" in both.output
    mixed = runner.invoke(app, ["prepare-fma", "--audio-dir", str(fma_root), "--subset", "small", "--out", str(tmp_path / "o")])
    assert mixed.exit_code == 2 and "go with ROOT" in " ".join(mixed.output.split())


def test_prepare_musdb_end_to_end_and_errors(musdb_root, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["prepare-musdb", str(musdb_root), "--out", str(out), "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "2 train, 1 valid, 2 test" in result.output and (out / "salient" / "vocals.jsonl").is_file()
    (tmp_path / "bad" / "train" / "X - Y").mkdir(parents=True)
    result = runner.invoke(app, ["prepare-musdb", str(tmp_path / "bad"), "--out", str(out)])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    for problem in ("missing mixture.wav", "missing vocals.wav", "missing other.wav", "missing folder test/"):
        assert problem in text
