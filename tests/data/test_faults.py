"""prepare-fma under faults (issue 11): a full disk stops the run with a clear message and
loses nothing; the journal stays whole after a short write; the shard lock is held through
the merge, so a second run on the same folder cannot pull done.json away from under it.

The full disk is injected: the store files are opened through a quota that raises ENOSPC
once a byte budget is spent (as a 20 MB tmpfs does), so the test runs anywhere."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixitcli.cli import app
from mixitcli.data import clips, fma
from mixitcli.data import manifest as mf
from mixitcli.data.errors import PrepareError
from mixitcli.data.manifest import Journal, read_jsonl
from tests.data.conftest import noise, write

runner = CliRunner()
STORE_BYTES = 11 * 44100 * 4  # one 11 s stereo file kept whole, as int16


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    """Four good 11 s stereo WAV files."""
    folder = tmp_path_factory.mktemp("songs")
    for k in range(4):
        write(folder / f"song{k}.wav", noise(11, seed=k))
    return folder


class _Quota:
    """open() for the store files with a shared byte budget: a write past it fails with ENOSPC."""

    def __init__(self, budget: int) -> None:
        self.left = budget

    def __call__(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return _QuotaFile(f, self) if "w" in mode else f


class _QuotaFile:
    def __init__(self, f, quota: _Quota) -> None:
        self.f, self.quota = f, quota

    def write(self, data) -> int:
        self.quota.left -= len(data)
        if self.quota.left < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def _prepare(songs: Path, out: Path):
    return runner.invoke(app, ["prepare-fma", "--audio-dir", str(songs), "--out", str(out), "--workers", "0", "--no-progress"])


def test_full_disk_stops_the_run_and_the_rerun_keeps_every_file(songs, tmp_path, monkeypatch):
    out = tmp_path / "prep"
    monkeypatch.setattr(clips, "open", _Quota(int(2.5 * STORE_BYTES)), raising=False)  # room for two files
    result = _prepare(songs, out)
    shard = out / "shards" / "0-of-1"
    text = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "no space left on the device" in text and "needed" in text
    assert str(shard / "audio") in result.output.replace("\n", "")  # the folder, however the console wraps it
    assert "2 of 4 files are finished" in text and "Traceback" not in result.output
    journal = Journal(shard / "journal.jsonl").load()
    assert sorted(journal) == ["song0.wav", "song1.wav"]  # a good file is never rejected for our disk
    assert all(r["status"] == "kept" for r in journal.values())
    assert not list(shard.rglob("*.partial")) and not (out / "manifest.jsonl").exists()

    monkeypatch.undo()  # space was freed
    result = _prepare(songs, out)
    assert result.exit_code == 0, result.output
    assert "4 seen, 4 kept" in result.output
    done = json.loads((shard / "done.json").read_text())
    assert (done["resumed"], done["processed"]) == (2, 2)
    assert _prepare(songs, tmp_path / "ref").exit_code == 0  # the same files on a roomy disk
    assert read_jsonl(out / "manifest.jsonl") == read_jsonl(tmp_path / "ref" / "manifest.jsonl")


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


def test_the_shard_lock_is_held_through_the_merge(songs, tmp_path, monkeypatch):
    """A second run started while the first merges is refused instead of deleting done.json
    under it (issue 11: FileNotFoundError .../done.json in 3 of 10 racing tries)."""
    out = tmp_path / "prep"
    assert _prepare(songs, out).exit_code == 0
    source = fma.locate_audio_dir(songs)
    real_write_jsonl = mf.write_jsonl
    competitor = []

    def write_jsonl(path, rows):
        if not competitor:  # the first merge write: a second run on the same folder starts now
            competitor.append("started")
            try:
                fma.prepare_fma(source, fma.PrepareConfig(out=out, workers=0, progress=False))
                competitor.append("ran to the end")
            except PrepareError as e:
                competitor.append(str(e))
        return real_write_jsonl(path, rows)

    monkeypatch.setattr(mf, "write_jsonl", write_jsonl)
    result = _prepare(songs, out)  # the finished folder again: nothing to decode, then the merge
    assert result.exit_code == 0, result.output
    assert "being prepared by another running process" in competitor[1]
    assert (out / "shards" / "0-of-1" / "done.json").is_file() and len(read_jsonl(out / "manifest.jsonl")) == 4 * 2
