"""Which run a training command continues (mixitcli/train/resume.py): --resume and --auto-resume
find the run folder or start a new one; a run of another stage is refused with the command that
continues it. The training loop is replaced by a recorder (the fixture `trained`)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mixitcli import cli
from mixitcli.train.config import ConfigError
from mixitcli.train.resume import plan_run
from tests.builders import run_folder
from tests.builders import unboxed as flat

runner = CliRunner()


def test_plan_run_starts_or_continues(tmp_path, trained):
    run = run_folder(tmp_path, size="tiny")
    assert plan_run("pretrain", command_line={"out": str(run)}, auto_resume=True).resume
    fresh = plan_run("pretrain", command_line={"out": str(tmp_path / "other"), "data": "d"}, auto_resume=True)
    assert not fresh.resume and fresh.config.out == str(tmp_path / "other")
    with pytest.raises(ConfigError, match="--resume needs --out"):
        plan_run("pretrain", command_line={}, resume=True)
    (run / "checkpoints" / "last.pt").unlink()
    with pytest.raises(ConfigError, match="no checkpoints/last.pt"):
        plan_run("pretrain", command_line={"out": str(run)}, resume=True)


def test_resume_refuses_a_run_of_another_stage(tmp_path, trained):
    run = run_folder(tmp_path)
    musdb = tmp_path / "musdb-prep"
    (musdb / "salient").mkdir(parents=True)
    for extra in ([], ["--data", str(musdb)], ["--auto-resume"]):
        flag = [] if extra == ["--auto-resume"] else ["--resume"]
        result = runner.invoke(cli.app, ["finetune", "--out", str(run), *flag, *extra])
        said = flat(result.output).replace(" ", "")
        assert result.exit_code == 1 and not trained
        assert f"{run}holdsapretrainrun,notafinetunerun".replace(" ", "") in said
        assert f"`mixitpretrain--out{run}--resume`" in said and "--selection" in said and "index.npz" not in said
