"""Reading checkpoints and averaging them: one room for training (resume, ``--init``) and for
inference (:func:`mixitcli.model.load_model` of a run folder).

A training checkpoint is a dict of plain types and tensors (``torch.load(..., weights_only=True)``
reads it without executing code), marked ``format: "mixit-train"``; its ``model`` entry is a
model dict (:mod:`mixitcli.model.serialize`). A run folder keeps ``checkpoints/last.pt``, the best
k as ``checkpoints/best-epochEEEE-stepSSSSSSS.pt`` and their ranking in ``checkpoints/best.json``
(written by :mod:`mixitcli.train.checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mixitcli.model.bslocoformer import BSLocoformer
from mixitcli.model.serialize import ModelLoadError, model_from_dict
from mixitcli.storage import human_bytes

FORMAT = "mixit-train"


class CheckpointError(Exception):
    """A checkpoint or run folder is missing, unreadable or not ours."""


def load_checkpoint(path: str | Path, *, map_location: str = "cpu") -> dict:
    """Read a training checkpoint (never executes code from the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the save that wrote it never finished (a full disk or a crash)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else "no reason given"
        raise CheckpointError(
            f"{path} is damaged: an unreadable checkpoint of {human_bytes(size)} ({type(e).__name__}: {reason})"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a mixit training checkpoint")
    return ckpt


def newest_readable_best(run: str | Path) -> tuple[Path, dict] | None:
    """The best-*.pt of a run with the highest step that loads, and its contents (or None)."""
    candidates = []
    for path in (Path(run) / "checkpoints").glob("best-*.pt"):
        try:
            candidates.append((int(path.stem.rsplit("step", 1)[1]), path))
        except (IndexError, ValueError):
            continue
    for _, path in sorted(candidates, reverse=True):
        try:
            return path, load_checkpoint(path)
        except CheckpointError:
            continue
    return None


def best_checkpoints(run: str | Path) -> list[Path]:
    """The run's best checkpoints (best first), or ``[last.pt]`` when none was validated."""
    ckpt_dir = Path(run) / "checkpoints"
    index = ckpt_dir / "best.json"
    if index.is_file():
        paths = [ckpt_dir / e["path"] for e in json.loads(index.read_text())]
        paths = [p for p in paths if p.is_file()]
        if paths:
            return paths
    if (ckpt_dir / "last.pt").is_file():
        return [ckpt_dir / "last.pt"]
    raise CheckpointError(f"{run}: not a mixit run folder (no checkpoints/last.pt or best.json)")


@torch.no_grad()
def average_checkpoints(paths: list[Path], *, map_location: str = "cpu") -> BSLocoformer:
    """A model whose weights are the mean of the checkpoints' (the paper evaluates this)."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    total, reference = None, None
    for path in paths:
        model_dict = load_checkpoint(path, map_location=map_location)["model"]
        if reference is None:
            reference = model_dict
            total = {k: v.double().clone() if v.is_floating_point() else v.clone() for k, v in model_dict["state_dict"].items()}
            continue
        if model_dict["model_config"] != reference["model_config"]:
            raise CheckpointError(f"{path}: a different architecture from {paths[0]}; cannot average")
        for k, v in model_dict["state_dict"].items():
            if v.is_floating_point():
                total[k] += v.double()
    averaged = {k: (v / len(paths)).to(reference["state_dict"][k].dtype) if v.is_floating_point() else v for k, v in total.items()}
    try:
        return model_from_dict(dict(reference, state_dict=averaged))
    except ModelLoadError as e:
        raise CheckpointError(str(e)) from e


def average_run(run: str | Path, *, best: int | None = None, map_location: str = "cpu") -> BSLocoformer:
    """The average of a run's best ``best`` checkpoints (all kept ones by default)."""
    paths = best_checkpoints(run)
    return average_checkpoints(paths[:best] if best else paths, map_location=map_location)
