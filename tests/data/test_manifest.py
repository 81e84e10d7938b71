"""A prepared FMA folder is checked when a run starts (mixitcli/data/manifest.py, issue 20):
index.npz carries its manifest's hash, so an edited manifest is no longer ignored (the index is
rebuilt from it, or refused naming the line), and a truncated audio store is an error naming
the file and the command that decodes it again, not a traceback in the middle of training.
The journal of a shard stays whole after a short write (issue 11)."""

from __future__ import annotations

import errno
import json
import shlex
import shutil
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixitcli.cli import app
from mixitcli.data import fma
from mixitcli.data.manifest import Journal, SegmentIndex, read_jsonl
from mixitcli.lock import LOCK_NAME
from tests.builders import noise, write

runner = CliRunner()
PRETRAIN = [
    "--size",
    "tiny",
    "--segment-seconds",
    "0.2",
    "--warmup-steps",
    "1",
    "--workers",
    "0",
    "--device",
    "cpu",
    "--no-checkpointing",
    "--batch-size",
    "1",
    "--max-steps",
    "1",
    "--valid-size",
    "1",
]  # one step, as cheap as it gets


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """4 tracks of 10.5 s (2 clips each), 2 of them held out for validation."""
    root = tmp_path_factory.mktemp("manifest")
    for k in range(4):
        write(root / "music" / f"song{k}.wav", noise(10.5, amp=0.05 * (k + 1), seed=k))
    out = root / "prep"
    fma.prepare_fma(fma.locate_audio_dir(root / "music"), fma.PrepareConfig(out=out, workers=0, progress=False))
    return out


def command_in(output: str, start: str) -> list[str]:
    """The arguments of the `mixit ...` command quoted in a message (after ``start``)."""
    line = next(line for line in output.splitlines() if start in line)
    return shlex.split(line[line.index(start) :].removeprefix("mixit "))


def test_an_edited_manifest_rebuilds_the_index_or_is_refused_by_its_line(prepared, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    lines = (data / "manifest.jsonl").read_text().splitlines(keepends=True)
    (data / "manifest.jsonl").write_text("".join(lines[:-1]))  # one clip taken out by hand
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "--data", str(data), "--out", str(run), *PRETRAIN])
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert (
        f"warning: {data}: manifest.jsonl was changed after index.npz was written; rebuilt index.npz from manifest.jsonl ({len(lines) - 1} clips)"
        in said
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the saved index matches now: no second rebuild
        assert len(SegmentIndex.load(data)) == len(lines) - 1
    assert not (run / LOCK_NAME).exists()  # the run released its folder

    with open(data / "manifest.jsonl", "a") as f:
        f.write(
            '{"track": "song9", "store": "shards/0-of-1/audio/song9.wav.s16", "store_offset": -5, "length": 441000}\n'
        )
    result = runner.invoke(app, ["pretrain", "--data", str(data), "--out", str(tmp_path / "run2"), *PRETRAIN])
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{data / 'manifest.jsonl'} line {len(lines)}: store_offset -5; no 'split'" in said
    restore = command_in(result.output, "mixit prepare-fma --merge")
    assert runner.invoke(app, restore).exit_code == 0  # the command in the message works
    assert len(read_jsonl(data / "manifest.jsonl")) == len(lines) and len(SegmentIndex.load(data)) == len(lines)


def test_a_truncated_store_is_an_error_and_prepare_fma_decodes_it_again(prepared, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    row = next(r for r in read_jsonl(data / "manifest.jsonl") if r["split"] == "train")
    store = data / row["store"]
    size = store.stat().st_size
    with open(store, "r+b") as f:
        f.truncate(size // 3)  # a disk that failed, a copy cut short
    result = runner.invoke(app, ["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), *PRETRAIN])
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"{store}: {size // 3} bytes, but manifest.jsonl needs {size} bytes (line" in said
    again = command_in(result.output, "mixit prepare-fma --audio-dir")
    result = runner.invoke(app, again)
    assert result.exit_code == 0, result.output
    assert "1 store file(s) are damaged, so their sources are decoded again" in " ".join(result.output.split())
    assert store.stat().st_size == size
    index = SegmentIndex.load(data)
    index.check_stores(index.in_split("train"))
    assert json.loads((data / "summary.json").read_text())["files_kept"] == 4


def test_a_short_journal_write_is_cut_back_to_whole_lines(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    journal.append({"file": "a", "status": "kept"})
    real = journal._file

    class Short:  # a nearly full disk: write() takes only part of the line
        def write(self, data):
            return real.write(data[:5])

        def fileno(self):
            return real.fileno()

    journal._file = Short()
    with pytest.raises(OSError) as info:
        journal.append({"file": "b", "status": "kept"})
    assert info.value.errno == errno.ENOSPC
    journal._file = real
    journal.append({"file": "c", "status": "kept"})  # space again
    journal.close()
    assert sorted(Journal(tmp_path / "journal.jsonl").load()) == ["a", "c"]
