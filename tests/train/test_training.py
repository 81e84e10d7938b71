"""The training loop: it learns, resumes exactly, freezes what it should, survives NaNs."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from mixitcli.train import TrainingError, build_config, train
from mixitcli.train import loop as loop_module
from mixitcli.model.checkpoints import CheckpointError, load_checkpoint

FAST = dict(size="tiny", segment_seconds=0.5, warmup_steps=1, workers=0, device="cpu", log_every=1, activation_checkpointing=False)


def pretrain_config(fma_prep, out, **over):
    values = dict(FAST, data=str(fma_prep), out=str(out), batch_size=4, epochs=1, steps_per_epoch=4, valid_size=4, valid_every_epochs=1)
    values.update(over)
    return build_config("pretrain", overrides=values)


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_losses(run):
    return {r["step"]: r["loss/train"] for r in metrics(run) if "loss/train" in r}


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


def test_checkpoints_never_execute_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "mixit-train", "x": Evil()}))
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


def test_finetuning_loss_goes_down(musdb_prep, tmp_path):
    run = tmp_path / "fine"
    values = dict(FAST, data=str(musdb_prep), out=str(run), batch_size=4, epochs=3, steps_per_epoch=8, lr=3e-3,
                  warmup_steps=4, valid_every_epochs=3)
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
    values = dict(FAST, data=str(musdb_prep), out=str(run), init=str(folder), selection=str(selection),
                  batch_size=2, epochs=1, steps_per_epoch=1, lr=1e-9, warmup_steps=1)
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
