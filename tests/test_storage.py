"""Safe writes and OS errors (issue 11): atomic writes leave nothing behind on failure, stale
temporaries of dead processes are removed (live ones kept), and every command turns an OS
error into one message instead of a traceback.

Full disks and read-only folders are injected (an OSError raised by the write call), so the
tests run the same as root or not and need no mount; bench/faults.py repeats the
cases on real small tmpfs mounts where the machine allows it."""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from mixitcli import storage
from mixitcli.cli import app
from mixitcli.train.checkpoint import atomic_save

runner = CliRunner()


def test_atomic_write_leaves_old_file_and_no_temporary_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    storage.atomic_write_text(path, '{"a": 1}\n')
    assert path.read_text() == '{"a": 1}\n'

    def full(self, data):  # the disk fills up in the middle of the write
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage._Recorder, "write", full)
    with pytest.raises(OSError) as info:
        storage.atomic_write_with(tmp_path / "last.pt", lambda f: torch.save({"w": torch.zeros(1000)}, f))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no .last.pt.tmp* left


def test_torch_save_failure_is_reported_as_the_os_error(tmp_path, monkeypatch):
    """torch.save turns a failed write into 'RuntimeError: [enforce fail ...]'; the cause comes back."""
    real_write = storage._Recorder.write
    budget = {"left": 5000}

    def small_disk(self, data):
        budget["left"] -= len(data)
        if budget["left"] < 0:
            self.error = OSError(errno.ENOSPC, "No space left on device")
            raise self.error
        return real_write(self, data)

    monkeypatch.setattr(storage._Recorder, "write", small_disk)
    with pytest.raises(storage.StorageError, match=r"no space left .* about 40\.0 kB needed"):
        atomic_save({"w": torch.zeros(10000)}, tmp_path / "best.pt")  # 40 kB of float32
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    names = {
        f".last.pt.tmp{dead_pid}": False,  # checkpoint of a killed save
        f".manifest.jsonl.{dead_pid}.partial": False,  # data stage
        f".index.npz.{dead_pid}.partial.npz": False,
        f".last.pt.tmp{os.getpid()}": True,  # this (live) process is writing it
        "last.pt": True,
        "notes.tmp123": True,  # not hidden: not ours
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = storage.remove_stale_temporaries(tmp_path, tmp_path / "missing")
    assert sorted(p.name for p in removed) == sorted(n for n, keep in names.items() if not keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, keep in names.items() if keep)


@pytest.mark.parametrize(
    "code, expected",
    [
        (errno.ENOSPC, "no space left on the device of"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
        (errno.EIO, "input/output error"),
    ],
)
def test_each_os_error_has_one_clear_message(tmp_path, code, expected):
    message = storage.describe_os_error(OSError(code, os.strerror(code), str(tmp_path / "out" / "x.wav")))
    assert expected in message and str(tmp_path) in message


# -- every command: a read-only --out is a message, not a traceback -------------------------


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder whose creation fails as on a read-only file system (root ignores chmod)."""
    folder = tmp_path / "ro"
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.absolute().is_relative_to(folder):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    return folder


def _song(path, seconds=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = 0.1 * np.random.default_rng(0).standard_normal((int(seconds * 44100), 2))
    sf.write(path, x.astype(np.float32), 44100)
    return path


def _musdb(root):
    for subset, name in (("train", "A - One"), ("test", "B - Two")):
        for stem in ("mixture", "vocals", "drums", "bass", "other"):
            _song(root / subset / name / f"{stem}.wav")
    return root


@pytest.mark.parametrize("command", ["prepare-fma", "prepare-musdb", "eval", "separate"])
def test_read_only_output_folder_is_one_message(tmp_path, read_only, command, monkeypatch, request):
    if command == "prepare-fma":
        args = [
            "prepare-fma",
            "--audio-dir",
            str(_song(tmp_path / "music" / "a.wav").parent),
            "--workers",
            "0",
            "--no-progress",
        ]
    elif command == "prepare-musdb":
        args = ["prepare-musdb", str(_musdb(tmp_path / "musdb")), "--workers", "0", "--no-progress"]
    elif command == "eval":
        monkeypatch.setattr("mixitcli.evaluate.require_ffmpeg", lambda needs: None)
        musdb = _musdb(tmp_path / "musdb")
        args = ["eval", "--musdb", str(musdb), "--estimates", str(musdb / "test"), "--workers", "0"]
    else:
        from mixitcli.model import model_to_dict
        from mixitcli.model.official import load_official

        official = request.getfixturevalue("official")
        torch.save(
            model_to_dict(load_official(official.weights("tiny4"), official.config("tiny4"))), tmp_path / "tiny.pt"
        )
        args = ["separate", str(_song(tmp_path / "a.wav")), "-m", str(tmp_path / "tiny.pt"), "--device", "cpu"]
    result = runner.invoke(app, args + ["--out", str(read_only / "out")])
    assert result.exit_code == 1, result.output
    assert "read-only file system" in result.output and str(read_only) in result.output.replace("\n", "")
    assert not isinstance(result.exception, OSError)  # handled: SystemExit, no traceback
