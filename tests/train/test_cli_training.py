"""The training commands end to end through the real CLI: pretrain -> select-channels ->
finetune / freeze-finetune -> average -> plot, on tiny data and a handful of steps."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mixitcli.cli import app
from mixitcli.model import load_model
from mixitcli.model.checkpoints import load_checkpoint

runner = CliRunner()
FAST = ["--size", "tiny", "--segment-seconds", "0.5", "--warmup-steps", "1", "--workers", "0", "--device", "cpu",
        "--log-every", "1", "--no-checkpointing"]


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def pretrained(fma_prep, tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "pre"
    invoke("pretrain", "--data", fma_prep, "--out", run, *FAST, "--batch-size", "4", "--epochs", "2",
           "--steps-per-epoch", "2", "--valid-size", "4", "--valid-every", "1")
    return run


def test_pretrain_writes_a_run_folder(pretrained):
    assert (pretrained / "config.yaml").is_file() and (pretrained / "metrics.jsonl").is_file()
    assert load_checkpoint(pretrained / "checkpoints" / "last.pt")["step"] == 4
    assert len(json.loads((pretrained / "checkpoints" / "best.json").read_text())) == 2


def test_checkpointing_default_is_resolved_and_recorded(fma_prep, tmp_path):
    run = tmp_path / "run"
    fast = [a for a in FAST if a != "--no-checkpointing"]
    invoke("pretrain", "--data", fma_prep, "--out", run, *fast, "--batch-size", "2", "--max-steps", "1", "--valid-size", "2")
    assert yaml.safe_load((run / "config.yaml").read_text())["activation_checkpointing"] is False  # tiny on CPU


def test_resume_continues_and_extends(pretrained, fma_prep, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(pretrained, run)
    result = invoke("pretrain", "--out", run, "--resume", "--epochs", "3", "--data", fma_prep)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 6
    said = "".join(result.output.split())  # the line names where the weights come from: the checkpoint
    assert f"weights:{run}/checkpoints/last.pt(step4;therunstartedfromrandominitialisation)" in said
    result = runner.invoke(app, ["pretrain", "--out", str(run), "--resume", "--lr", "0.5"])
    assert result.exit_code != 0 and "lr" in result.output


def test_select_finetune_freeze_average_plot(pretrained, musdb_prep, tmp_path):
    selection = tmp_path / "selection.json"
    result = invoke("select-channels", pretrained, "--musdb", musdb_prep, "--out", selection, "--device", "cpu")
    chosen = json.loads(selection.read_text())
    assert chosen["stems"] == ["bass", "drums", "vocals", "other"] and len(set(chosen["selected"])) == 4
    assert torch.tensor(chosen["counts"]).shape == (12, 4)
    assert selection.with_suffix(".png").stat().st_size > 1000
    assert "selected" in result.output

    common = [*FAST, "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "2"]
    fine = tmp_path / "fine"
    invoke("finetune", "--data", musdb_prep, "--out", fine, "--init", pretrained, "--selection", selection, *common,
           "--stem-norm", "mean_abs")
    assert load_checkpoint(fine / "checkpoints" / "last.pt")["config"]["stem_norm"] == "mean_abs"
    model = load_model(fine / "checkpoints" / "last.pt")
    assert model.config.n_outputs == 4 and model.stems == ("bass", "drums", "vocals", "other")
    valid = [json.loads(line) for line in (fine / "metrics.jsonl").read_text().splitlines() if "usdr/valid" in line]
    assert valid and {"usdr/valid/bass", "usdr/valid/vocals"} <= valid[-1].keys()

    # freeze-finetune from the fine-tuned run: the separator must not move, the rest must
    frozen = tmp_path / "frozen"
    invoke("freeze-finetune", "--data", musdb_prep, "--out", frozen, "--init", fine / "checkpoints" / "last.pt", *common)
    assert load_checkpoint(frozen / "checkpoints" / "last.pt")["config"]["stem_norm"] == "rms"  # the default
    before = load_model(fine / "checkpoints" / "last.pt").state_dict()
    after = load_checkpoint(frozen / "checkpoints" / "last.pt")["model"]["state_dict"]
    for name, value in after.items():
        if name.startswith("separator."):
            assert torch.equal(value, before[name]), name
    assert not torch.equal(after["encoder.projs.0.weight"], before["encoder.projs.0.weight"])
    assert not torch.equal(after["decoder.heads.0.fc3.weight"], before["decoder.heads.0.fc3.weight"])

    averaged = tmp_path / "avg.pt"
    result = invoke("average", fine, "--out", averaged)
    assert "averaged" in result.output and load_model(averaged).config.n_outputs == 4
    invoke("plot", fine, "--out", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_finetune_from_12_outputs_needs_a_selection(pretrained, musdb_prep, tmp_path):
    result = runner.invoke(app, ["finetune", "--data", str(musdb_prep), "--out", str(tmp_path / "x"), "--init", str(pretrained), *FAST])
    assert result.exit_code != 0 and "--selection" in result.output


def test_bad_options_are_reported_together(tmp_path):
    result = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "r"), "--batch-size", "0", "--mixit-solver", "greedy"])
    assert result.exit_code != 0
    assert "data" in result.output and "batch_size" in result.output and "mixit_solver" in result.output


def test_missing_data_folder_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["pretrain", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), *FAST])
    assert result.exit_code != 0
    assert "nope" in result.output
