"""The training loop under stop signals and bad steps, through the real CLI (issue 20).

SIGTERM, SIGINT and SIGUSR1 stop `mixit pretrain` and `mixit finetune` at a step boundary
with a saved last.pt, a message that gives the command that goes on, and exit code 128 + the
signal's number; the runs then resumed reach the weights, best checkpoints and metrics of an
uninterrupted run. A signal is landed at a chosen point by wrapping a function of the loop so
that it sends the signal to this process (os.kill) when it is called for the n-th time.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from typer.testing import CliRunner

from mixitcli.cli import app
from mixitcli.model import build_model, model_to_dict
from mixitcli.model.checkpoints import load_checkpoint
from mixitcli.train import loop
from mixitcli.train.checkpoint import CheckpointManager
from tests.train.conftest import FAST, REPRO, cli_pretrain

runner = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.split())


def send_on_call(monkeypatch, owner, name: str, call: int, *signums: int, to_workers: int | None = None) -> None:
    """The ``call``-th call of ``owner.name`` first sends ``signums`` to this process (and
    ``to_workers`` to the DataLoader workers of the batches it is given, as a terminal's Ctrl-C
    reaches every process of the job), then runs as usual."""
    real, calls = getattr(owner, name), []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            if to_workers is not None:
                for worker in args[2]._workers:  # train_step(model, core, batches, ...)
                    os.kill(worker.pid, to_workers)
            for signum in signums:
                os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(run, reference):
    """Weights within 1e-6, the same best checkpoints and the same metrics, step by step."""
    got = load_checkpoint(run / "checkpoints" / "last.pt")
    want = load_checkpoint(reference / "checkpoints" / "last.pt")
    assert got["step"] == want["step"] and not got["pending_validation"]
    for name, value in want["model"]["state_dict"].items():
        assert torch.allclose(got["model"]["state_dict"][name], value, atol=1e-6, rtol=0), name
    ranked = [(e["path"], e["step"], pytest.approx(e["valid_loss"], abs=1e-6)) for e in got["best"]]
    assert ranked == [(e["path"], e["step"], e["valid_loss"]) for e in want["best"]]
    clock = ("time", "examples_per_s")
    logged = [{k: v for k, v in r.items() if k not in clock} for r in metrics(run)]
    assert logged == [{k: pytest.approx(v, abs=1e-6) for k, v in r.items() if k not in clock} for r in metrics(reference)]


def test_signals_stop_pretraining_at_a_step_and_resume_exactly(pretrain_reference, fma_prep, tmp_path, monkeypatch):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.pt"
    command = ["pretrain", "--data", str(fma_prep), "--out", str(run), *FAST, *REPRO, "--workers", "1"]

    # a second signal stops at once, before anything was saved: the same command starts again
    send_on_call(monkeypatch, loop, "train_step", 2, signal.SIGTERM, signal.SIGINT)
    result = runner.invoke(app, command)
    assert result.exit_code == 130, result.output
    assert "SIGINT again: stopped at once, without saving; run the same command again (nothing was saved yet)" in flat(result.output)
    assert not last.exists()
    monkeypatch.undo()

    # Ctrl-C within an epoch (issue 20: resumed inexactly), which reaches the DataLoader worker too
    send_on_call(monkeypatch, loop, "train_step", 1, signal.SIGINT, to_workers=signal.SIGINT)
    result = runner.invoke(app, command)
    assert result.exit_code == 130, result.output
    said = flat(result.output)
    assert f"SIGINT at step 1: saved {last}. Continue with: mixit pretrain --out {run} --resume" in said
    assert "Traceback" not in result.output and load_checkpoint(last)["step"] == 1
    monkeypatch.undo()

    # SIGUSR1 (Slurm's warning) during the validation at the end of epoch 0: dropped, made first on resume
    send_on_call(monkeypatch, loop, "validate", 1, signal.SIGUSR1)
    result = runner.invoke(app, [*command, "--auto-resume", "--workers", "0"])  # a runtime option: may change
    assert result.exit_code == 138, result.output
    assert f"SIGUSR1 at step 2: saved {last}; its validation of step 2 is made first" in flat(result.output)
    assert load_checkpoint(last)["pending_validation"] and load_checkpoint(last)["step"] == 2
    monkeypatch.undo()

    # SIGTERM while the last checkpoints are written, with the command the message gave: the save finishes
    send_on_call(monkeypatch, CheckpointManager, "save", 2, signal.SIGTERM)  # 1: step 2's validation, 2: step 3's
    result = runner.invoke(app, said.split("Continue with: mixit ")[1].split())
    assert result.exit_code == 143, result.output
    assert f"SIGTERM after the last step: the run is complete ({last}, step 3)" in flat(result.output)
    monkeypatch.undo()
    assert_same_run(run, pretrain_reference)


@pytest.fixture(scope="module")
def finetune_command(musdb_prep):
    fast = [a for i, a in enumerate(FAST) if "--valid-size" not in FAST[max(i - 1, 0) : i + 1]]  # pre-training's only
    return ["finetune", "--data", str(musdb_prep), *fast, "--max-steps", "1", "--steps-per-epoch", "1", "--valid-every", "1"]


def test_signals_in_the_final_validation_and_save_of_finetuning_lose_nothing(finetune_command, tmp_path, monkeypatch):
    """The last step's weights are final before its validation, so the resumed run, which only
    validates and saves, must end with them, as an uninterrupted run (whose exactness after a
    signal in a validation or a save the pre-training test above checks against one)."""
    run = tmp_path / "run"
    command = [*finetune_command, "--out", str(run), "--auto-resume"]
    last = run / "checkpoints" / "last.pt"

    send_on_call(monkeypatch, loop, "validate", 1, signal.SIGTERM)  # issue 20: this left no checkpoint at all
    result = runner.invoke(app, command)
    assert result.exit_code == 143, result.output
    assert f"SIGTERM at step 1: saved {last}; its validation of step 1 is made first" in flat(result.output)
    stopped = load_checkpoint(last)
    assert stopped["pending_validation"] and not (run / "checkpoints" / "best.json").exists()
    monkeypatch.undo()

    send_on_call(monkeypatch, CheckpointManager, "save", 1, signal.SIGUSR1)  # while the final checkpoints are written
    result = runner.invoke(app, command)
    assert result.exit_code == 138, result.output
    assert f"SIGUSR1 after the last step: the run is complete ({last}, step 1)" in flat(result.output)
    monkeypatch.undo()
    done = load_checkpoint(last)
    assert done["step"] == 1 and not done["pending_validation"] and [e["step"] for e in done["best"]] == [1]
    for name, value in stopped["model"]["state_dict"].items():
        assert torch.equal(done["model"]["state_dict"][name], value), name
    assert [(r["step"], "loss/valid" in r) for r in metrics(run)] == [(1, False), (1, True)]


def test_a_solver_failure_is_a_bad_step(fma_prep, tmp_path):
    """Issue 20: with a huge learning rate the weights blow up and the MixIT solver's least
    squares fail (linalg.eigh: a traceback before the non-finite-step guard had a chance; at
    step 4 with --lr 1e6, at step 2 with 1e9). Now a bad step like a non-finite loss, so
    --max-bad-steps stops the run with its message, and the checkpoints hold finite weights."""
    result = cli_pretrain(fma_prep, tmp_path / "run", "--lr", "1e9", "--max-bad-steps", "1", "--max-steps", "8",
                          "--steps-per-epoch", "8", "--save-every", "1")
    said = flat(result.output)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "1 step in a row had a non-finite loss or gradient (step 2); stopped." in said
    assert f"The last good checkpoint is {tmp_path / 'run' / 'checkpoints' / 'last.pt'}; lower --lr" in said
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["step"] == 1 and all(torch.isfinite(v).all() for v in saved["model"]["state_dict"].values())


def test_pretraining_refuses_a_4_output_model_as_init(fma_prep, tmp_path):
    fine = tmp_path / "fine.pt"
    torch.save(model_to_dict(build_model("tiny", n_outputs=4)), fine)
    result = cli_pretrain(fma_prep, tmp_path / "run", "--init", fine)
    said = flat(result.output)
    assert result.exit_code == 1, result.output
    assert (f"pre-training needs a 12-output (MixIT) model, but --init {fine} has 4 outputs (bass, drums, vocals, other)"
            in said) and "--selection" not in said


def test_weights_that_do_not_fit_their_configuration_are_one_line(musdb_prep, tmp_path):
    """Issue 20: a 4-output configuration saved with the weights of a 12-output model, given to
    `finetune --init`, was a traceback of load_state_dict."""
    model = model_to_dict(build_model("tiny", n_outputs=4))
    model["state_dict"] = model_to_dict(build_model("tiny", n_outputs=12))["state_dict"]
    init = tmp_path / "mixed.pt"
    torch.save(model, init)
    result = runner.invoke(app, ["finetune", "--data", str(musdb_prep), "--out", str(tmp_path / "run"), "--init", str(init),
                                 "--size", "tiny", "--device", "cpu"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    message = result.output.strip()
    assert "\n" not in message, message
    assert (f"--init: {init}: the weights do not fit the model configuration saved with them: 124 of another shape "
            "(decoder.heads.0.fc3.weight (12, 16, 64) for (4, 16, 64)") in message
    assert "Likely cause: the weights are of a model with 12 outputs, the configuration says 4 outputs" in message
