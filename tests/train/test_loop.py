"""The training loop (mixitcli/train/loop.py) and the training commands through the real CLI.

The step's loss: MixIT through the outputs' spectra equals MixIT of their waveforms. The loop
learns, resumes exactly, accumulates gradients, skips non-finite steps and stops after too many;
pretrain -> select-channels -> finetune / freeze-finetune -> average -> plot on tiny data and a
handful of steps; the data, --init and options a stage refuses.

Stop signals (issue 20): SIGTERM, SIGINT and SIGUSR1 stop `mixit pretrain` and `mixit finetune`
at a step boundary with a saved last.pt, a message that gives the command that goes on, and exit
code 128 + the signal's number; the runs then resumed reach the weights, best checkpoints and
metrics of an uninterrupted run. A signal is landed at a chosen point by wrapping a function of
the loop so that it sends the signal to this process (os.kill) when it is called for the n-th time.

Faults (issues 11 and 20): a run killed or interrupted during its final validation resumes to the
same best checkpoints and metrics as an uninterrupted run; a full disk or a read-only --out is one
message (with the command that resumes), and no temporary checkpoint outlives its process.

DDP: two CPU processes (gloo) under torchrun train in lockstep, and stop together: a SIGTERM that
only one rank receives stops both after the same step (before the validation that ends its
epoch), with one checkpoint that holds both ranks' random state, written by rank 0, and one
message.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mixitcli import build_model, cli, storage
from mixitcli.cli import app
from mixitcli.losses import mixit_loss
from mixitcli.model import load_model, model_to_dict
from mixitcli.model.checkpoints import load_checkpoint
from mixitcli.train import TrainingError, build_config, checkpoint, loop, train
from mixitcli.train import loop as loop_module
from mixitcli.train.checkpoint import CheckpointManager
from mixitcli.train.config import PretrainConfig
from mixitcli.train.loop import compute_loss
from tests.builders import REPO, best, flat, invoke
from tests.builders import prepare_musdb_cli as prepare
from tests.train.conftest import FAST, REPRO, cli_pretrain

runner = CliRunner()
FAST_CONFIG = dict(
    size="tiny",
    segment_seconds=0.5,
    warmup_steps=1,
    workers=0,
    device="cpu",
    log_every=1,
    activation_checkpointing=False,
)
"""Tiny training, as values of a configuration (for `train` called directly)."""
FAST_CLI = [
    "--size",
    "tiny",
    "--segment-seconds",
    "0.5",
    "--warmup-steps",
    "1",
    "--workers",
    "0",
    "--device",
    "cpu",
    "--log-every",
    "1",
    "--no-checkpointing",
]
"""Tiny training, as command-line options (without the batch and validation sizes of FAST)."""


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- the step's loss


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny", n_outputs=12, dropout=0.0).train()  # no dropout: two passes agree


def batch(seed: int = 0) -> torch.Tensor:
    """(b, m, c, t) two mixtures per item, 0.5 s stereo."""
    return torch.randn(2, 2, 2, 22050, generator=torch.Generator().manual_seed(seed)) * 0.1


def waveform_mixit(model, batch, solver):
    """The loss as computed before the spectral remix: every output synthesised, then remixed."""
    mixture = batch.sum(1)
    scale = model.input_scale(mixture)
    return mixit_loss(model(mixture / scale), batch / scale.unsqueeze(1), solver=solver)[0]


@pytest.mark.parametrize("solver", ["efficient", "exact"])
def test_mixit_step_equals_the_waveform_loss(model, solver):
    config = PretrainConfig(data="-", out="-", size="tiny", mixit_solver=solver, bf16=False)
    params = list(model.parameters())
    x = batch()
    loss = compute_loss(model, model, x, config)
    grads = torch.autograd.grad(loss, params)
    ref = waveform_mixit(model, x, solver)
    ref_grads = torch.autograd.grad(ref, params)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-5)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-5 * r.abs().max().item())


def test_mixit_step_runs_under_bf16_autocast(model):
    fp32 = PretrainConfig(data="-", out="-", size="tiny", bf16=False)
    bf16 = PretrainConfig(data="-", out="-", size="tiny", bf16=True)
    x = batch(1)
    loss = compute_loss(model, model, x, bf16)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        assert loss.item() == pytest.approx(compute_loss(model, model, x, fp32).item(), abs=0.5)  # dB


# ----------------------------------------------------------------------------- the loop: it learns, resumes exactly, survives NaNs


def pretrain_config(fma_prep, out, **over):
    values = dict(
        FAST_CONFIG,
        data=str(fma_prep),
        out=str(out),
        batch_size=4,
        epochs=1,
        steps_per_epoch=4,
        valid_size=4,
        valid_every_epochs=1,
    )
    values.update(over)
    return build_config("pretrain", overrides=values)


def train_losses(run):
    return {r["step"]: r["loss/train"] for r in metrics(run) if "loss/train" in r}


@pytest.mark.slow
def test_pretraining_loss_goes_down(fma_prep, tmp_path):
    run = tmp_path / "run"
    train(pretrain_config(fma_prep, run, epochs=3, steps_per_epoch=8, lr=3e-3, warmup_steps=4))
    losses = train_losses(run)
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (22, 23, 24)) / 3
    assert last < first - 1.0, losses  # dB
    valid = [r["loss/valid"] for r in metrics(run) if "loss/valid" in r]
    assert len(valid) == 3 and valid[-1] < valid[0]
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["step"] == 24 and saved["config"]["stage"] == "pretrain"
    assert saved["model"]["model_config"]["n_outputs"] == 12
    assert len(json.loads((run / "checkpoints" / "best.json").read_text())) == 3
    assert (run / "config.yaml").is_file()


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(fma_prep, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = dict(epochs=2, steps_per_epoch=3, max_steps=5)
    train(pretrain_config(fma_prep, straight, **common))
    train(pretrain_config(fma_prep, split, **dict(common, max_steps=2)))  # stops mid-epoch
    from mixitcli.train import resume_config

    train(resume_config(load_checkpoint(split / "checkpoints" / "last.pt")["config"], {"max_steps": 5}), resume=True)
    a, b = train_losses(straight), train_losses(split)
    for step in (3, 4, 5):
        assert a[step] == pytest.approx(b[step], abs=1e-6), step
    wa = load_checkpoint(straight / "checkpoints" / "last.pt")["model"]["state_dict"]
    wb = load_checkpoint(split / "checkpoints" / "last.pt")["model"]["state_dict"]
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=1e-6, rtol=0), name


def test_existing_run_needs_resume(fma_prep, tmp_path):
    config = pretrain_config(fma_prep, tmp_path / "run", max_steps=1)
    train(config)
    with pytest.raises(TrainingError, match="--resume"):
        train(config)


def test_non_finite_steps_are_skipped_then_stop_the_run(fma_prep, tmp_path, monkeypatch):
    real = loop_module.compute_loss
    calls = {"train": 0}

    def sometimes_nan(*args, **kwargs):
        loss = real(*args, **kwargs)
        if not torch.is_grad_enabled():  # validation
            return loss
        calls["train"] += 1
        return loss * float("nan") if calls["train"] == 2 or calls["train"] >= 5 else loss

    monkeypatch.setattr(loop_module, "compute_loss", sometimes_nan)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="3 steps in a row had a non-finite loss or gradient \\(step 7\\)"):
        train(pretrain_config(fma_prep, run, epochs=4, steps_per_epoch=2, max_bad_steps=3, valid_every_epochs=1))
    saved = load_checkpoint(run / "checkpoints" / "last.pt")  # end of epoch 3
    assert saved["step"] == 6 and saved["counters"]["skipped_steps"] == 3
    assert all(torch.isfinite(v).all() for v in saved["model"]["state_dict"].values())
    skipped = [r["skipped_steps"] for r in metrics(run) if "skipped_steps" in r]
    assert skipped == [0, 1, 1, 1, 2, 3]


def test_gradient_accumulation_gives_the_same_step(fma_prep, tmp_path):
    """Batch 4 in one pass or in 2 micro-batches of 2: the same update (dropout off)."""
    runs = []
    for accum in (1, 2):
        run = tmp_path / f"accum{accum}"
        train(pretrain_config(fma_prep, run, max_steps=1, grad_accum=accum, dropout=0.0))
        runs.append(load_checkpoint(run / "checkpoints" / "last.pt")["model"]["state_dict"])
    for name in runs[0]:
        assert torch.allclose(runs[0][name], runs[1][name], atol=1e-5), name


@pytest.mark.slow
def test_finetuning_loss_goes_down(musdb_prep, tmp_path):
    run = tmp_path / "fine"
    values = dict(
        FAST_CONFIG,
        data=str(musdb_prep),
        out=str(run),
        batch_size=4,
        epochs=3,
        steps_per_epoch=8,
        lr=3e-3,
        warmup_steps=4,
        valid_every_epochs=3,
    )
    train(build_config("finetune", overrides=values))
    losses = train_losses(run)
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (22, 23, 24)) / 3
    assert last < first - 1.0, losses
    valid = [r for r in metrics(run) if "usdr/valid" in r]
    assert len(valid) == 1 and valid[0]["usdr/valid"] > 0  # better than silence on the validation songs


def test_finetune_from_an_official_mixit_folder(official, musdb_prep, tmp_path):
    import shutil

    folder = tmp_path / "mixit.fma-large.bslocoformer-tiny.12outputs"
    shutil.copytree(official.folder("tiny12"), folder)
    selection = tmp_path / "inst_head.json"  # the official selection format
    selection.write_text(json.dumps({"bass": 5, "drums": 1, "vocals": 9, "other": 2}))
    run = tmp_path / "run"
    values = dict(
        FAST_CONFIG,
        data=str(musdb_prep),
        out=str(run),
        init=str(folder),
        selection=str(selection),
        batch_size=2,
        epochs=1,
        steps_per_epoch=1,
        lr=1e-9,
        warmup_steps=1,
    )
    train(build_config("finetune", overrides=values))
    from mixitcli.model.official import load_official

    official = load_official(folder / "checkpoints" / "model.pth", folder / "merged_config.yaml")
    start = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert start["stems"] == ["bass", "drums", "vocals", "other"]
    heads = start["state_dict"]["decoder.heads.3.fc3.weight"]
    assert torch.allclose(heads, official.decoder.heads[3].fc3.weight[[5, 1, 9, 2]], atol=1e-6)  # lr 1e-9: barely moved


def test_activation_checkpointing_default_follows_device_and_size(monkeypatch):
    import mixitcli.devices

    def model_of(size, **over):
        config = build_config("pretrain", overrides=dict(data="-", out="-", size=size, device="cpu", **over))
        return config, loop_module.prepare_model(config)[0]

    def on(model):
        return all(block.activation_checkpointing for block in model.separator)

    config, tiny = model_of("tiny")
    assert config.activation_checkpointing is None and not on(tiny)
    assert on(model_of("medium")[1])  # its activations fill memory, even on CPU
    assert on(model_of("tiny", activation_checkpointing=True)[1])
    assert not on(model_of("medium", activation_checkpointing=False)[1])
    monkeypatch.setattr(mixitcli.devices, "pick_device", lambda name="auto", local_rank=0: torch.device("cuda"))
    assert on(model_of("tiny")[1])


# ----------------------------------------------------------------------------- the training commands end to end


@pytest.fixture(scope="module")
def pretrained(fma_prep, tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "pre"
    invoke(
        "pretrain",
        "--data",
        fma_prep,
        "--out",
        run,
        *FAST_CLI,
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--steps-per-epoch",
        "2",
        "--valid-size",
        "4",
        "--valid-every",
        "1",
    )
    return run


def test_pretrain_writes_a_run_folder(pretrained):
    assert (pretrained / "config.yaml").is_file() and (pretrained / "metrics.jsonl").is_file()
    assert load_checkpoint(pretrained / "checkpoints" / "last.pt")["step"] == 4
    assert len(json.loads((pretrained / "checkpoints" / "best.json").read_text())) == 2


def test_checkpointing_default_is_resolved_and_recorded(fma_prep, tmp_path):
    run = tmp_path / "run"
    fast = [a for a in FAST_CLI if a != "--no-checkpointing"]
    invoke(
        "pretrain",
        "--data",
        fma_prep,
        "--out",
        run,
        *fast,
        "--batch-size",
        "2",
        "--max-steps",
        "1",
        "--valid-size",
        "2",
    )
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


@pytest.mark.slow
def test_select_finetune_freeze_average_plot(pretrained, musdb_prep, tmp_path):
    selection = tmp_path / "selection.json"
    result = invoke("select-channels", pretrained, "--musdb", musdb_prep, "--out", selection, "--device", "cpu")
    chosen = json.loads(selection.read_text())
    assert chosen["stems"] == ["bass", "drums", "vocals", "other"] and len(set(chosen["selected"])) == 4
    assert torch.tensor(chosen["counts"]).shape == (12, 4)
    assert selection.with_suffix(".png").stat().st_size > 1000
    assert "selected" in result.output

    common = [*FAST_CLI, "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "2"]
    fine = tmp_path / "fine"
    invoke(
        "finetune",
        "--data",
        musdb_prep,
        "--out",
        fine,
        "--init",
        pretrained,
        "--selection",
        selection,
        *common,
        "--stem-norm",
        "mean_abs",
    )
    assert load_checkpoint(fine / "checkpoints" / "last.pt")["config"]["stem_norm"] == "mean_abs"
    model = load_model(fine / "checkpoints" / "last.pt")
    assert model.config.n_outputs == 4 and model.stems == ("bass", "drums", "vocals", "other")
    valid = [json.loads(line) for line in (fine / "metrics.jsonl").read_text().splitlines() if "usdr/valid" in line]
    assert valid and {"usdr/valid/bass", "usdr/valid/vocals"} <= valid[-1].keys()

    # freeze-finetune from the fine-tuned run: the separator must not move, the rest must
    frozen = tmp_path / "frozen"
    invoke(
        "freeze-finetune", "--data", musdb_prep, "--out", frozen, "--init", fine / "checkpoints" / "last.pt", *common
    )
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
    result = runner.invoke(
        app, ["finetune", "--data", str(musdb_prep), "--out", str(tmp_path / "x"), "--init", str(pretrained), *FAST_CLI]
    )
    assert result.exit_code != 0 and "--selection" in result.output


def test_missing_data_folder_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["pretrain", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), *FAST_CLI])
    assert result.exit_code != 0
    assert "nope" in result.output


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_data_of_the_other_stage_is_named(tmp_path, stage):
    data = tmp_path / "prep"
    if stage == "pretrain":  # a prepare-musdb folder given to pre-training
        (data / "salient").mkdir(parents=True)
        (data / "valid.txt").write_text("")
        found, needed = "prepare-musdb", "prepare-fma"
    else:  # a prepare-fma folder given to fine-tuning
        data.mkdir()
        (data / "manifest.jsonl").write_text("")
        found, needed = "prepare-fma", "prepare-musdb"
    fast = ["--size", "tiny", "--device", "cpu", "--workers", "0", "--batch-size", "2"]
    result = runner.invoke(cli.app, [stage, "--data", str(data), "--out", str(tmp_path / "run"), *fast])
    said = flat(result.output).replace(" ", "")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"--data{data}isa{found}folder" in said and f"{stage}trainsona{needed}folder" in said
    assert f"mixit{needed}" in said and "index.npz" not in said
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_finetune_refuses_an_empty_validation_split(own_stems, tmp_path):
    out = tmp_path / "prep"
    assert prepare(own_stems, out).exit_code == 0
    (out / "valid.txt").write_text("")  # as a folder prepared before issue 10 looked
    result = runner.invoke(
        app, ["finetune", "--data", str(out), "--out", str(tmp_path / "run"), "--size", "tiny", "--device", "cpu"]
    )
    assert result.exit_code == 1
    text = flat(result.output)
    assert (
        "lists no validation songs" in text
        and "mixit prepare-musdb ROOT --out DIR" in text
        and "--valid-tracks" in text
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_pretraining_refuses_a_4_output_model_as_init(fma_prep, tmp_path):
    fine = tmp_path / "fine.pt"
    torch.save(model_to_dict(build_model("tiny", n_outputs=4)), fine)
    result = cli_pretrain(fma_prep, tmp_path / "run", "--init", fine)
    said = flat(result.output)
    assert result.exit_code == 1, result.output
    assert (
        f"pre-training needs a 12-output (MixIT) model, but --init {fine} has 4 outputs (bass, drums, vocals, other)"
        in said
    ) and "--selection" not in said


def test_weights_that_do_not_fit_their_configuration_are_one_line(musdb_prep, tmp_path):
    """Issue 20: a 4-output configuration saved with the weights of a 12-output model, given to
    `finetune --init`, was a traceback of load_state_dict."""
    model = model_to_dict(build_model("tiny", n_outputs=4))
    model["state_dict"] = model_to_dict(build_model("tiny", n_outputs=12))["state_dict"]
    init = tmp_path / "mixed.pt"
    torch.save(model, init)
    result = runner.invoke(
        app,
        [
            "finetune",
            "--data",
            str(musdb_prep),
            "--out",
            str(tmp_path / "run"),
            "--init",
            str(init),
            "--size",
            "tiny",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    message = result.output.strip()
    assert "\n" not in message, message
    assert (
        f"--init: {init}: the weights do not fit the model configuration saved with them: 124 of another shape "
        "(decoder.heads.0.fc3.weight (12, 16, 64) for (4, 16, 64)"
    ) in message
    assert "Likely cause: the weights are of a model with 12 outputs, the configuration says 4 outputs" in message


# ----------------------------------------------------------------------------- stop signals (issue 20)


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
    assert logged == [
        {k: pytest.approx(v, abs=1e-6) for k, v in r.items() if k not in clock} for r in metrics(reference)
    ]


def test_signals_stop_pretraining_at_a_step_and_resume_exactly(pretrain_reference, fma_prep, tmp_path, monkeypatch):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.pt"
    command = ["pretrain", "--data", str(fma_prep), "--out", str(run), *FAST, *REPRO, "--workers", "1"]

    # a second signal stops at once, before anything was saved: the same command starts again
    send_on_call(monkeypatch, loop, "train_step", 2, signal.SIGTERM, signal.SIGINT)
    result = runner.invoke(app, command)
    assert result.exit_code == 130, result.output
    assert "SIGINT again: stopped at once, without saving; run the same command again (nothing was saved yet)" in flat(
        result.output
    )
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
    return [
        "finetune",
        "--data",
        str(musdb_prep),
        *fast,
        "--max-steps",
        "1",
        "--steps-per-epoch",
        "1",
        "--valid-every",
        "1",
    ]


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
    result = cli_pretrain(
        fma_prep,
        tmp_path / "run",
        "--lr",
        "1e9",
        "--max-bad-steps",
        "1",
        "--max-steps",
        "8",
        "--steps-per-epoch",
        "8",
        "--save-every",
        "1",
    )
    said = flat(result.output)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "1 step in a row had a non-finite loss or gradient (step 2); stopped." in said
    assert f"The last good checkpoint is {tmp_path / 'run' / 'checkpoints' / 'last.pt'}; lower --lr" in said
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["step"] == 1 and all(torch.isfinite(v).all() for v in saved["model"]["state_dict"].values())


# ----------------------------------------------------------------------------- faults (issues 11 and 20)


class Killed(BaseException):
    """Stands for kill -9: nothing in the program catches it, so nothing is saved."""


def pretrain(data, run, *extra):
    return cli_pretrain(data, run, *extra)


def steps_logged(run):
    """(step, kind) of every record of metrics.jsonl, in order."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], "valid" if "loss/valid" in r else "train") for r in records]


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
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(
        p.name for p in (reference / "checkpoints").iterdir()
    )
    assert steps_logged(run) == steps_logged(reference)  # the redone steps are not logged twice


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
    assert (
        "needed). Free some space there or choose a folder on a larger disk, then continue from step 1 "
        f"({run / 'checkpoints' / 'last.pt'}) with: mixit pretrain --out {run} --resume"
    ) in flat
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp" in p.name]
    monkeypatch.undo()
    result = runner.invoke(app, flat.split("with: mixit ")[1].split())  # the command the message gives
    assert result.exit_code == 0, result.output
    assert steps_logged(run) == [(1, "train"), (2, "train"), (2, "valid")]  # step 2 was logged before the failure, once
    assert [e["step"] for e in best(run)] == [2] and load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2


def test_temporary_of_a_killed_save_is_removed_on_resume(reference, fma_prep, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    dead = int(
        subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    )
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


# ----------------------------------------------------------------------------- DDP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_stay_in_sync_and_stop_together(fma_prep, tmp_path):
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump({"stage": "pretrain", "check_sync_every": 1, "activation_checkpointing": False}))
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "tests.train.ddp_worker",
        "pretrain",
        "--config",
        str(recipe),
        "--data",
        str(fma_prep),
        "--out",
        str(run),
        "--size",
        "tiny",
        "--batch-size",
        "4",
        "--segment-seconds",
        "0.5",
        "--epochs",
        "3",
        "--steps-per-epoch",
        "1",
        "--valid-every",
        "1",
        "--warmup-steps",
        "1",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--log-every",
        "1",
        "--valid-size",
        "4",
    ]
    env = dict(
        os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MIXIT_TEST_SIGNAL_RANK="1", MIXIT_TEST_SIGNAL_STEP="2"
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "global batch 4 = 2 per forward x 1 accumulation x 2 device(s)" in proc.stderr
    said = " ".join(proc.stderr.split())
    last = run / "checkpoints" / "last.pt"
    message = (
        f"SIGTERM at step 2: saved {last}; its validation of step 2 is made first when it continues. "
        f"Continue with: torchrun <its options as before> -m mixitcli pretrain --out {run} --resume"
    )
    assert said.count(message) == 1, proc.stderr[-3000:]  # rank 0 says it, once
    # as a shell reports SIGTERM. Both ranks stop at the agreed step with 143; torchrun reports
    # the rank it sees end first (one full run under load reported rank 0) and then stops the
    # other one itself
    assert re.search(r"rank : [01] \(local_rank: [01]\) exitcode : 143", said), proc.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["dist/param_spread"] for r in records if "dist/param_spread" in r] == [0.0, 0.0]
    assert [r["step"] for r in records if "loss/valid" in r] == [1]
    saved = load_checkpoint(last)  # after step 2, before the validation that ends its epoch
    assert saved["step"] == 2 and saved["pending_validation"] and len(saved["rng"]) == 2
    assert not torch_equal(saved["rng"][0]["torch"], saved["rng"][1]["torch"])  # dropout differs between ranks


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)
