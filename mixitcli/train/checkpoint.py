"""Run folders and checkpoints as training writes them: atomic saves, ``last`` plus the best k, resume.

Reading checkpoints and averaging them is :mod:`mixitcli.model.checkpoints` (shared with inference).

A run folder::

    RUN/config.yaml            the resolved configuration
    RUN/metrics.jsonl          one JSON object per logged step or validation
    RUN/checkpoints/last.pt    everything needed to continue exactly
    RUN/checkpoints/best-epochEEEE-stepSSSSSSS.pt   the best k by validation loss (no optimizer)
    RUN/checkpoints/best.json  [{"path", "epoch", "step", "valid_loss"}, ...], best first

A checkpoint is a dict of plain types and tensors (``torch.load(..., weights_only=True)``
reads it without executing code): ``model`` (config, stem names, weights), ``optimizer``,
``scheduler``, ``step``, ``epoch``, ``epoch_step``, ``rng``, ``config``, ``best``,
``counters``, ``version``, ``git_commit``, ``pending_validation``, and ``checksum`` (a CRC-32 of
all the rest, verified on every read: :func:`mixitcli.model.checkpoints.checksum`).
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from mixitcli import __version__
from mixitcli.model.bslocoformer import BSLocoformer
from mixitcli.model.checkpoints import FORMAT, CheckpointError, load_checkpoint, newest_readable_best, with_checksum
from mixitcli.model.serialize import model_to_dict
from mixitcli.storage import (  # atomic_write_text: config.yaml, best.json
    SPACE_ERRORS,
    StorageError,
    atomic_write_text,
    atomic_write_with,
    describe_os_error,
)


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``.

    On failure the temporary file is removed (a full disk stays no fuller), and a failed
    write is raised as the OSError it is (torch reports it as a RuntimeError); a full disk as
    a StorageError that says about how much room the checkpoint needs.
    """
    try:
        atomic_write_with(path, lambda f: torch.save(obj, f))
    except OSError as e:
        if e.errno not in SPACE_ERRORS:
            raise
        needed = _tensor_bytes(obj)
        raise StorageError(describe_os_error(e, needed=needed), error=e, needed=needed) from e


def _tensor_bytes(obj) -> int:
    """About the size of ``obj`` saved: the bytes of the tensors it holds."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def load_last(run: str | Path, *, stage: str, map_location: str = "cpu") -> dict:
    """``RUN/checkpoints/last.pt``, for ``--resume``.

    Raises:
        CheckpointError: last.pt is missing, empty or damaged; the message names the newest
            best checkpoint that reads (weights only, no optimizer state) and how to go on from it.
    """
    last = Path(run) / "checkpoints" / "last.pt"
    try:
        return load_checkpoint(last, map_location=map_location, hint=False)
    except CheckpointError as e:
        found = newest_readable_best(run)
        if found is None:
            raise CheckpointError(
                f"{e}. No readable best-*.pt beside it either: start the run again in a new --out."
            ) from e
        path, ckpt = found
        raise CheckpointError(
            f"{e}.\nThe newest readable checkpoint is {path} (step {ckpt['step']}, epoch {ckpt['epoch']}); it holds the "
            f"weights but not the optimizer state, so the run cannot continue exactly. To go on from those weights, "
            f"start a new run from them: mixit {stage} --init {path} --out NEW_RUN (with the same --data and options)."
        ) from e


def git_commit() -> str | None:
    """The source tree's commit, if it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def rng_state() -> dict:
    """Every random generator the training process uses, as plain types and tensors."""
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": [int(x) for x in np.random.get_state()[1]] + [int(np.random.get_state()[2])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    *internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    *keys, pos = state["numpy"]
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """Writes ``last.pt`` and keeps the ``keep_best`` checkpoints with the lowest validation loss."""

    def __init__(self, run: Path, keep_best: int, best: list[dict] | None = None):
        self.dir = Path(run) / "checkpoints"
        self.keep_best = keep_best
        self.best: list[dict] = list(best or [])

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    def save(self, state: dict, *, valid_loss: float | None = None) -> Path | None:
        """Save ``state`` as last; also as a best one when ``valid_loss`` ranks in the best k.

        Returns the best-checkpoint path written, if any.
        """
        written = None
        finite = valid_loss is not None and np.isfinite(valid_loss)
        name = f"best-epoch{state['epoch']:04d}-step{state['step']:07d}.pt"
        if finite:  # a validation made again after an interruption replaces its first try
            self.best = [e for e in self.best if e["path"] != name]
        if finite and (len(self.best) < self.keep_best or valid_loss < self.best[-1]["valid_loss"]):
            entry = {"path": name, "epoch": state["epoch"], "step": state["step"], "valid_loss": float(valid_loss)}
            ranked = sorted(self.best + [entry], key=lambda e: e["valid_loss"])  # best first
            self.best, evicted = ranked[: self.keep_best], ranked[self.keep_best :]
            written = self.dir / name
            atomic_save(
                with_checksum(dict(state, best=self.best, optimizer=None, scheduler=None)), written
            )  # weights only: for averaging
            atomic_write_text(self.dir / "best.json", json.dumps(self.best, indent=2))
            for old in evicted:
                (self.dir / old["path"]).unlink(missing_ok=True)
        atomic_save(with_checksum(dict(state, best=self.best)), self.last)
        return written


def training_state(
    *,
    model: BSLocoformer,
    optimizer: torch.optim.Optimizer,
    scheduler,
    step: int,
    epoch: int,
    epoch_step: int,
    config: dict,
    counters: dict,
) -> dict:
    return {
        "format": FORMAT,
        "version": __version__,
        "git_commit": git_commit(),
        "model": model_to_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "epoch": epoch,
        "epoch_step": epoch_step,
        "rng": rng_state(),
        "config": config,
        "counters": dict(counters),
    }
