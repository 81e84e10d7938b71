"""Training under faults (issues 11 and 20), through the real CLI: a run killed or interrupted
during its final validation resumes to the same best checkpoints and metrics as an
uninterrupted run; an empty or damaged last.pt is explained and the newest readable best-*.pt
offered; a full disk or a read-only --out is one message (with the command that resumes), and
no temporary checkpoint outlives its process."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mixitcli import storage
from mixitcli.cli import app
from mixitcli.train import checkpoint, loop
from mixitcli.model.checkpoints import load_checkpoint
from tests.train.conftest import cli_pretrain

runner = CliRunner()


class Killed(BaseException):
    """Stands for kill -9: nothing in the program catches it, so nothing is saved."""


def pretrain(data, run, *extra):
    return cli_pretrain(data, run, *extra)


def best(run):
    return json.loads((run / "checkpoints" / "best.json").read_text())


def steps_logged(run):
    """(step, kind) of every record of metrics.jsonl, in order."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], "valid" if "loss/valid" in r else "train") for r in records]


@pytest.fixture(scope="module")
def reference(pretrain_reference):
    return pretrain_reference


@pytest.mark.parametrize("interruption", [Killed, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_interrupted_final_validation_is_made_on_resume(reference, fma_prep, tmp_path, monkeypatch, interruption):
    run = tmp_path / "run"
    real_validate, calls = loop.validate, []

    def validate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the final validation, at step 3
            if interruption is Killed:
                raise Killed()
            os.kill(os.getpid(), interruption)  # Ctrl-C: the validation is dropped, last.pt saved at step 3
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(loop, "validate", validate)
    if interruption is Killed:
        with pytest.raises(Killed):
            pretrain(fma_prep, run)
    else:
        assert pretrain(fma_prep, run).exit_code == 130
        assert load_checkpoint(run / "checkpoints" / "last.pt")["pending_validation"]
    monkeypatch.undo()
    result = runner.invoke(app, ["pretrain", "--out", str(run), "--resume", "--data", str(fma_prep)])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3
    resumed, expected = best(run), best(reference)
    assert [(e["path"], e["step"]) for e in resumed] == [(e["path"], e["step"]) for e in expected]
    assert [e["valid_loss"] for e in resumed] == pytest.approx([e["valid_loss"] for e in expected], abs=1e-5)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert steps_logged(run) == steps_logged(reference)  # the redone steps are not logged twice


@pytest.mark.parametrize("damage, expected", [(b"", "is empty (0 bytes)"), (b"PK\x03\x04 not a zip", "is damaged")])
def test_unreadable_last_checkpoint_offers_the_newest_best(reference, tmp_path, damage, expected):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "checkpoints" / "last.pt").write_bytes(damage)
    result = runner.invoke(app, ["pretrain", "--out", str(run), "--resume"])
    flat = " ".join(result.output.split())
    assert result.exit_code == 1 and expected in flat, result.output
    newest = run / "checkpoints" / "best-epoch0001-step0000003.pt"
    assert str(newest) in result.output.replace("\n", "") and "--init" in flat and "step 3" in flat
    assert "()" not in flat  # issue 11: "unreadable checkpoint ()"


def test_full_disk_during_a_save_says_how_to_resume_and_leaves_no_temporary(fma_prep, tmp_path, monkeypatch):
    """The disk fills up at the last save (step 2); last.pt of step 1 is kept and the message
    gives the command that continues (issue 20: it said "run the same command again", which is
    refused), after which metrics.jsonl has no step twice."""
    real_save, saves = checkpoint.atomic_save, []

    def full(self, data):
        self.error = OSError(errno.ENOSPC, "No space left on device")
        raise self.error

    def atomic_save(obj, path):
        saves.append(path.name)
        if len(saves) == 2:  # step 1: last.pt (--save-every 1); step 2: the best checkpoint first
            monkeypatch.setattr(storage._Recorder, "write", full)  # torch.save writes through it
        return real_save(obj, path)

    monkeypatch.setattr(checkpoint, "atomic_save", atomic_save)
    run = tmp_path / "run"
    result = pretrain(fma_prep, run, "--max-steps", "2", "--save-every", "1")
    flat = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"no space left on the device of {run / 'checkpoints'} (writing best-epoch0001-step0000002.pt;" in flat
    assert ("needed). Free some space there or choose a folder on a larger disk, then continue from step 1 "
            f"({run / 'checkpoints' / 'last.pt'}) with: mixit pretrain --out {run} --resume") in flat
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp" in p.name]
    monkeypatch.undo()
    result = runner.invoke(app, flat.split("with: mixit ")[1].split())  # the command the message gives
    assert result.exit_code == 0, result.output
    assert steps_logged(run) == [(1, "train"), (2, "train"), (2, "valid")]  # step 2 was logged before the failure, once
    assert [e["step"] for e in best(run)] == [2] and load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2


def test_temporary_of_a_killed_save_is_removed_on_resume(reference, fma_prep, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    left = run / "checkpoints" / f".last.pt.tmp{dead}"  # what kill -9 during torch.save leaves
    left.write_bytes(b"\0" * 1000)
    result = runner.invoke(app, ["pretrain", "--out", str(run), "--resume", "--data", str(fma_prep)])  # done already
    assert result.exit_code == 0, result.output
    assert not left.exists() and load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3


def test_read_only_run_folder_is_one_message_before_training(fma_prep, tmp_path, monkeypatch):
    real_mkdir, folder = pathlib.Path.mkdir, tmp_path / "ro"

    def mkdir(self, *args, **kwargs):  # a read-only file system (root ignores chmod)
        if self.absolute().is_relative_to(folder):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(loop, "train_step", lambda *a, **k: pytest.fail("trained into a folder it cannot write"))
    result = pretrain(fma_prep, folder / "run")
    assert result.exit_code == 1 and "read-only file system" in result.output, result.output


def test_a_validation_made_again_replaces_its_first_entry(tmp_path):
    """Ctrl-C between a best checkpoint and last.pt: the resume validates that step again;
    best.json then lists it once, with the new loss."""
    from mixitcli.model import build_model
    from mixitcli.train.checkpoint import CheckpointManager
    from tests.train.test_checkpoint_selection import make_state

    model = build_model("tiny", n_outputs=2)
    manager = CheckpointManager(tmp_path, keep_best=2)
    for step, loss in ((1, 3.0), (2, 2.0)):
        manager.save(make_state(model, step=step, epoch=step), valid_loss=loss)
    manager.save(make_state(model, step=2, epoch=2), valid_loss=2.5)  # step 2 validated again
    assert [(e["step"], e["valid_loss"]) for e in best(tmp_path)] == [(2, 2.5), (1, 3.0)]
    assert len(list((tmp_path / "checkpoints").glob("best-*.pt"))) == 2
