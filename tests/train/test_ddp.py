"""DDP: two CPU processes (gloo) under torchrun train in lockstep."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_stay_in_sync(fma_prep, tmp_path):
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump({"stage": "pretrain", "check_sync_every": 1, "activation_checkpointing": False}))
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "mixitcli", "pretrain", "--config", str(recipe), "--data", str(fma_prep), "--out", str(run),
        "--size", "tiny", "--batch-size", "4", "--segment-seconds", "0.5", "--epochs", "1", "--steps-per-epoch", "3",
        "--warmup-steps", "1", "--workers", "0", "--device", "cpu", "--log-every", "1", "--valid-size", "4",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "global batch 4 = 2 per forward x 1 accumulation x 2 device(s)" in proc.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    spreads = [r["dist/param_spread"] for r in records if "dist/param_spread" in r]
    assert spreads == [0.0, 0.0, 0.0]
    assert any("loss/valid" in r for r in records)
    assert (run / "checkpoints" / "last.pt").is_file()
