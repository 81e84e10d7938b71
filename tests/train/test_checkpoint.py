"""Checkpoints of a run (mixitcli/train/checkpoint.py): the manager keeps last.pt and the best k,
atomically, and a validation made again replaces its entry; an empty or damaged last.pt is
explained and the newest readable best-*.pt offered (issue 11).

Checksums (written here, verified by mixitcli/model/checkpoints.py): bytes that changed on the
disk are found when `--resume`, `--init` and `mixit average` read a file, before any step runs;
the message names the file, the newest good checkpoint and the command that goes on. Files saved
before checksums existed still load."""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mixitcli.cli import app
from mixitcli.model import ModelLoadError, build_model, load_model
from mixitcli.model.checkpoints import CheckpointError, load_checkpoint
from mixitcli.train import build_config, loop
from mixitcli.train.checkpoint import CheckpointManager
from tests.builders import best, flat, make_state
from tests.train.conftest import cli_pretrain

runner = CliRunner()


# ----------------------------------------------------------------------------- the manager, an unreadable last.pt


def test_manager_keeps_last_and_best_k(tmp_path):
    model = build_model("tiny", n_outputs=2)
    manager = CheckpointManager(tmp_path, keep_best=2)
    losses = [5.0, 3.0, 4.0, 1.0, 6.0]
    for epoch, loss in enumerate(losses):
        manager.save(make_state(model, step=10 * epoch, epoch=epoch), valid_loss=loss)
    kept = json.loads((tmp_path / "checkpoints" / "best.json").read_text())
    assert [e["valid_loss"] for e in kept] == [1.0, 3.0]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("best-*.pt")) == [
        e["path"] for e in sorted(kept, key=lambda e: e["path"])
    ]
    assert load_checkpoint(manager.last)["epoch"] == 4
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))  # no temporary files left


def test_a_validation_made_again_replaces_its_first_entry(tmp_path):
    """Ctrl-C between a best checkpoint and last.pt: the resume validates that step again;
    best.json then lists it once, with the new loss."""
    from mixitcli.model import build_model
    from mixitcli.train.checkpoint import CheckpointManager
    from tests.builders import make_state

    model = build_model("tiny", n_outputs=2)
    manager = CheckpointManager(tmp_path, keep_best=2)
    for step, loss in ((1, 3.0), (2, 2.0)):
        manager.save(make_state(model, step=step, epoch=step), valid_loss=loss)
    manager.save(make_state(model, step=2, epoch=2), valid_loss=2.5)  # step 2 validated again
    assert [(e["step"], e["valid_loss"]) for e in best(tmp_path)] == [(2, 2.5), (1, 3.0)]
    assert len(list((tmp_path / "checkpoints").glob("best-*.pt"))) == 2


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


# ----------------------------------------------------------------------------- checksums


def flip_bytes(path: Path, n: int = 3) -> None:
    """Flip a bit in ``n`` bytes in the middle of the file's largest tensor: the zip archive
    that torch.save writes stays readable (torch does not check the archive's CRCs)."""
    with zipfile.ZipFile(path) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(entry.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
        middle = entry.header_offset + 30 + name_length + extra_length + entry.file_size // 2
        f.seek(middle)
        flipped = bytes(b ^ 0x04 for b in f.read(n))
        f.seek(middle)
        f.write(flipped)


def saved_run(folder: Path, data: Path) -> Path:
    """A run folder as a pre-training run leaves it after validations at steps 2 and 3:
    config.yaml, last.pt and both best checkpoints (a tiny 2-output model; these tests never train)."""
    config = build_config("pretrain", overrides=dict(data=str(data), out=str(folder), size="tiny", device="cpu"))
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
    manager = CheckpointManager(folder, keep_best=2)
    model = build_model("tiny", n_outputs=2)
    for step, loss in ((2, -0.5), (3, -0.8)):
        manager.save(make_state(model, step=step, epoch=1), valid_loss=loss)
    return folder


def test_damaged_checkpoints_are_found_by_resume_average_and_init(fma_prep, tmp_path, monkeypatch):
    run = saved_run(tmp_path / "run", fma_prep)
    folder = run / "checkpoints"
    last, best2, best3 = (
        folder / "last.pt",
        folder / "best-epoch0001-step0000002.pt",
        folder / "best-epoch0001-step0000003.pt",
    )
    flip_bytes(last)
    torch.load(last, weights_only=True)  # issue 20: torch reads it without complaint
    monkeypatch.setattr(loop, "train_step", lambda *a, **k: pytest.fail("trained from a damaged checkpoint"))
    result = runner.invoke(app, ["pretrain", "--out", str(run), "--resume", "--max-steps", "5"])
    said = flat(result.output)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"{last} is damaged: its contents do not match the checksum saved with it" in said
    assert f"The newest readable checkpoint is {best3} (step 3, epoch 1)" in said
    assert f"mixit pretrain --init {best3} --out NEW_RUN" in said

    flip_bytes(best3)
    result = runner.invoke(app, ["average", str(run), "--out", str(tmp_path / "avg.pt")])
    said = flat(result.output)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"{best3} is damaged" in said and f"The newest good checkpoint of its run is {best2} (step 2)" in said
    assert f"move it away and run the same command again: mv {best3} {best3}.damaged" in said
    with pytest.raises(ModelLoadError, match="is damaged"):  # separate and eval, given the run folder
        load_model(run)

    moved = best3.with_name(best3.name + ".damaged")
    best3.rename(moved)  # as the message says
    result = runner.invoke(app, ["average", str(run), "--out", str(tmp_path / "avg.pt")])
    assert result.exit_code == 0 and f"averaged 1 checkpoint(s): {best2.name}" in result.output, result.output

    result = cli_pretrain(fma_prep, tmp_path / "new", "--init", moved)
    said = flat(result.output)
    assert result.exit_code == 1 and f"--init: {moved} is damaged" in said, result.output
    assert f"The newest good checkpoint of its run is {best2} (step 2): use that file instead" in said


def test_model_files_carry_a_checksum_and_old_ones_still_load(tmp_path):
    manager = CheckpointManager(tmp_path, keep_best=1)
    manager.save(make_state(build_model("tiny", n_outputs=2), step=7, epoch=1))
    ckpt = load_checkpoint(manager.last)
    assert ckpt["checksum"].startswith("crc32:")
    old = tmp_path / "old.pt"  # as written before checksums
    torch.save({k: v for k, v in ckpt.items() if k != "checksum"}, old)
    assert load_checkpoint(old)["step"] == 7 and load_model(old).config.n_outputs == 2
    changed = tmp_path / "changed.pt"  # not a tensor: the step count
    torch.save(dict(ckpt, step=8), changed)
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        load_checkpoint(changed)

    averaged = tmp_path / "avg.pt"  # what `mixit average` writes
    assert runner.invoke(app, ["average", str(tmp_path), "--out", str(averaged)]).exit_code == 0
    assert torch.load(averaged, weights_only=True)["checksum"].startswith("crc32:")
    flip_bytes(averaged)
    with pytest.raises(ModelLoadError, match=r"avg\.pt is damaged"):
        load_model(averaged)
