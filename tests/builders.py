"""Plain helpers shared by several test files: audio and folders to test on, the CLI in this
process, a reference for chunked separation, training states, lock holders in other processes.

Fixtures live in the conftest.py files (tests/conftest.py, tests/data/conftest.py,
tests/train/conftest.py, tests/model/conftest.py); stand-in models in tests/fakes.py, the
authors' model in tests/official.py, the local model hub in tests/hubserver.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SR = 44100


# ----------------------------------------------------------------------------- audio


def noise(seconds: float, rate: int = SR, channels: int = 2, amp: float = 0.1, seed: int = 0) -> np.ndarray:
    """(t, c) float32 white noise, never exactly zero in any 0.5 s chunk."""
    rng = np.random.default_rng(seed)
    return (amp * rng.standard_normal((int(round(seconds * rate)), channels))).astype(np.float32)


def write(path: Path, data: np.ndarray, rate: int = SR) -> Path:
    """Write (t, c) audio; the suffix picks the format (.mp3, .wav, .flac)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".mp3": "MP3", ".wav": "WAV", ".flac": "FLAC"}[path.suffix]
    sf.write(str(path), data, rate, format=fmt)
    return path


def float_wav(path: Path, x: np.ndarray) -> Path:
    """Write (t, c) float32 audio as a float WAV, which can hold NaN and infinity."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, SR, subtype="FLOAT")
    return path


def tone(seconds: float, rate: int, channels: int) -> np.ndarray:
    """(c, t) float32: a 440 Hz tone that swells, a little quieter in each further channel."""
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) * np.linspace(0.2, 1.0, t.size)
    return np.stack([x * (1 - 0.3 * k) for k in range(channels)]).astype(np.float32)  # (c, t)


# ----------------------------------------------------------------------------- the command line


def flat(text: str) -> str:
    """Output with its line breaks folded away, so a wrapped message reads as one line."""
    return " ".join(text.split())


def unboxed(text: str) -> str:
    """Output with box drawing and line breaks folded away, so wrapped help reads as one line."""
    return " ".join(text.replace("│", " ").split())


def invoke(*args):
    """`mixit ARGS` in this process (each argument as text); it must succeed."""
    from typer.testing import CliRunner

    from mixitcli.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


# Songs of a MUSDB18-HQ tree of your own music: none is named like a standard validation track.
OWN = [f"Own Band - Song {k}" for k in range(5)]


def prepare_musdb_cli(root: Path, out: Path, *extra: str):
    """`mixit prepare-musdb ROOT --out OUT` in this process, without workers or progress bars."""
    from typer.testing import CliRunner

    from mixitcli.cli import app

    return CliRunner().invoke(
        app, ["prepare-musdb", str(root), "--out", str(out), "--workers", "0", "--no-progress", *extra]
    )


# ----------------------------------------------------------------------------- models and separation


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return ((a - b).norm() / b.norm()).item()


def css_reference(model, x: torch.Tensor, chunk: int, hop: int) -> torch.Tensor:
    """The authors' css stitching, written out from its description (docs/method.md §7): (c, L) -> (n, c, L)."""
    c, length = x.shape
    if length <= chunk:
        return model(x[None])[0]
    overlap = chunk - hop
    outs = []
    for i in range(math.ceil((length - overlap) / hop)):
        start = i * hop
        seg = torch.zeros(c, chunk)
        valid = min(chunk, length - start)
        seg[:, :valid] = x[:, start : start + valid]
        y = torch.zeros(model.config.n_outputs, c, chunk) if seg.abs().sum() == 0 else model(seg[None])[0]
        outs.append((y, valid))
    waves = outs[0][0]
    for i, (y, valid) in enumerate(outs[1:], start=1):
        if overlap > 0:
            waves[..., -overlap:] = (waves[..., -overlap:] + y[..., :overlap]) / 2
        rest = y[..., overlap:valid] if i == len(outs) - 1 else y[..., overlap:]
        waves = torch.cat([waves, rest], dim=-1)
    return waves


# ----------------------------------------------------------------------------- training runs


def make_state(model, step, epoch):
    """A training checkpoint of ``model`` at ``step`` (AdamW, a constant schedule), as the loop saves it."""
    from mixitcli.train.checkpoint import training_state

    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return training_state(
        model=model,
        optimizer=opt,
        scheduler=sched,
        step=step,
        epoch=epoch,
        epoch_step=0,
        config={"stage": "pretrain"},
        counters={},
    )


def best(run):
    """The entries of RUN/checkpoints/best.json."""
    return json.loads((run / "checkpoints" / "best.json").read_text())


def run_folder(tmp_path, stage="pretrain", **values):
    """A run folder as a started run leaves it: config.yaml and checkpoints/last.pt."""
    from mixitcli.train.config import build_config

    run = tmp_path / "run"
    config = build_config(stage, overrides={"data": str(tmp_path / "data"), "out": str(run), **values})
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
    (run / "checkpoints" / "last.pt").write_bytes(b"not read by these tests")
    return run


# ----------------------------------------------------------------------------- locks held by other processes

# Take the lock of argv[1], say so (or why not), hold it until stdin closes, then release it.
HOLDER = """
import sys
from mixitcli.lock import LockError, folder_lock
lock = folder_lock(sys.argv[1])
try:
    lock.acquire()
    print("won", flush=True)
except LockError as e:
    print("refused", flush=True)
sys.stdin.read()
lock.release()
"""


def start_holders(folder: Path, n: int = 1) -> list[subprocess.Popen]:
    """``n`` processes racing for ``folder``'s lock; returns once each has tried."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(n)
    ]
    for p in procs:
        p.answer = p.stdout.readline().strip()
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.stdin.close()
        p.wait(timeout=30)


def stale_lock(folder: Path) -> int:
    """A lock left by a process killed with SIGKILL while holding it; returns that pid."""
    from mixitcli.lock import LOCK_NAME

    (proc,) = start_holders(folder)
    assert proc.answer == "won"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (folder / LOCK_NAME).is_file()
    return proc.pid
