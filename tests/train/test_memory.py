"""Memory of a training micro-batch (mixitcli/train/memory.py): measured on one example, it
grows with the batch as measured; a batch that cannot fit is refused before the first step
with the --grad-accum that fits, and an out-of-memory error in a step gets the same advice."""

from __future__ import annotations

import re
import time

import pytest
import torch

from mixitcli.model import build_model
from mixitcli.train import build_config, loop, memory
from mixitcli.train.resume import plan_run
from tests.builders import flat
from tests.train.conftest import cli_pretrain


def test_one_and_two_examples_predict_what_a_batch_keeps():
    """Fitted to one and two examples, the measure predicts what four keep; with the block paths
    recomputed in the backward pass (activation checkpointing), an example keeps less."""
    config = build_config(
        "pretrain", overrides=dict(data="-", out="-", size="tiny", segment_seconds=0.5, device="cpu", bf16=False)
    )
    core = build_model("tiny", n_outputs=12).train()
    batch = torch.randn(4, 2, 2, 22050)  # (b, m, c, t): 4 mixtures of mixtures of 0.5 s

    def loss_of(x):
        return loop.compute_loss(core, core, x, config)

    state = torch.get_rng_state()
    per_example, constant = memory.batch_bytes(core, loss_of, lambda b: batch[:b].clone())
    assert torch.equal(torch.get_rng_state(), state)  # dropout's draws are given back
    four = memory.activation_bytes(core, loss_of, batch)
    assert constant > 0 and per_example > 0
    assert 0.97 * four < 4 * per_example + constant < 1.03 * four
    core.set_activation_checkpointing(True)
    assert memory.batch_bytes(core, loss_of, lambda b: batch[:b].clone())[0] < 0.7 * per_example


def test_an_impossible_batch_is_refused_before_the_first_step(fma_prep, tmp_path, monkeypatch):
    """Issue 20: `batch_size: 100000` was ended by the kernel's OOM killer, without a message."""
    monkeypatch.setattr(loop, "train_step", lambda *a, **k: pytest.fail("a step was started"))
    recipe = tmp_path / "big.yaml"
    recipe.write_text("stage: pretrain\nbatch_size: 100000\n")
    run = tmp_path / "run"
    started = time.process_time()
    result = cli_pretrain(fma_prep, run, "--config", recipe, "--batch-size", "100000")
    assert time.process_time() - started < 5  # one example measured; no batch drawn, nothing allocated for it
    said = flat(result.output)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "a micro-batch of 100000 example(s) of 0.5 s cannot fit in memory: it needs at least" in said
    assert "RAM available" in said
    n = int(re.search(r"run the same command with --grad-accum (\d+)", said).group(1))
    assert (
        n > 1
        and 100000 % n == 0
        and f"--grad-accum {n} makes it {n} forward passes of {100000 // n} example(s)" in said
    )
    assert not (run / "config.yaml").exists()  # the same command with --grad-accum N starts the run


def test_out_of_memory_in_a_step_gives_the_grad_accum_to_resume_with(fma_prep, tmp_path, monkeypatch):
    real, calls = loop.train_step, []

    def train_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # as CUDA raises it from inside the step's forward or backward pass
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", train_step)
    run = tmp_path / "run"
    result = cli_pretrain(fma_prep, run, "--save-every", "1", "--max-steps", "2")
    said = flat(result.output)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert (
        "out of memory on cpu at step 2 with 2 example(s) per forward pass; --grad-accum 2 makes it 2 forward passes "
        f"of 1 example(s) per step on each device, the same global batch of 2: mixit pretrain --out {run} --resume "
        "--grad-accum 2"
    ) in said
    monkeypatch.undo()
    stage, *args = said.split(": mixit ")[-1].split()  # the command the message gives, planned as the CLI does
    command_line = {"out": args[args.index("--out") + 1], "grad_accum": args[args.index("--grad-accum") + 1]}
    plan = plan_run(stage, command_line=command_line, resume="--resume" in args)
    assert plan.resume and plan.config.grad_accum == 2 and plan.config.batch_size == 2
