"""DDP: two CPU processes (gloo) under torchrun train in lockstep, and stop together: a SIGTERM
that only one rank receives stops both after the same step (before the validation that ends
its epoch), with one checkpoint that holds both ranks' random state, written by rank 0, and
one message."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from mixitcli.model.checkpoints import load_checkpoint

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_stay_in_sync_and_stop_together(fma_prep, tmp_path):
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump({"stage": "pretrain", "check_sync_every": 1, "activation_checkpointing": False}))
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "tests.train.ddp_worker", "pretrain", "--config", str(recipe), "--data", str(fma_prep), "--out", str(run),
        "--size", "tiny", "--batch-size", "4", "--segment-seconds", "0.5", "--epochs", "3", "--steps-per-epoch", "1",
        "--valid-every", "1", "--warmup-steps", "1", "--workers", "0", "--device", "cpu", "--log-every", "1", "--valid-size", "4",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MIXIT_TEST_SIGNAL_RANK="1", MIXIT_TEST_SIGNAL_STEP="2")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "global batch 4 = 2 per forward x 1 accumulation x 2 device(s)" in proc.stderr
    said = " ".join(proc.stderr.split())
    last = run / "checkpoints" / "last.pt"
    message = (f"SIGTERM at step 2: saved {last}; its validation of step 2 is made first when it continues. "
               f"Continue with: torchrun <its options as before> -m mixitcli pretrain --out {run} --resume")
    assert said.count(message) == 1, proc.stderr[-3000:]  # rank 0 says it, once
    assert "rank : 1 (local_rank: 1) exitcode : 143" in said  # as a shell reports SIGTERM (rank 0 may be ended
    # by torchrun's own SIGTERM as it exits: torchrun stops the other ranks once one has stopped)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["dist/param_spread"] for r in records if "dist/param_spread" in r] == [0.0, 0.0]
    assert [r["step"] for r in records if "loss/valid" in r] == [1]
    saved = load_checkpoint(last)  # after step 2, before the validation that ends its epoch
    assert saved["step"] == 2 and saved["pending_validation"] and len(saved["rng"]) == 2
    assert not torch_equal(saved["rng"][0]["torch"], saved["rng"][1]["torch"])  # dropout differs between ranks


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)
