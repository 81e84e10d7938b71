"""Reading checkpoints and averaging them: one room for training (resume, ``--init``) and for
inference (:func:`mixitcli.model.load_model` of a run folder).

A training checkpoint is a dict of plain types and tensors (``torch.load(..., weights_only=True)``
reads it without executing code), marked ``format: "mixit-train"``; its ``model`` entry is a
model dict (:mod:`mixitcli.model.serialize`). A run folder keeps ``checkpoints/last.pt``, the best
k as ``checkpoints/best-epochEEEE-stepSSSSSSS.pt`` and their ranking in ``checkpoints/best.json``
(written by :mod:`mixitcli.train.checkpoint`).

Checkpoints and model files carry a ``checksum`` of everything else they hold
(:func:`checksum`), written with them and verified whenever they are read, so that bytes that
changed on the disk (or in a copy) are found before a model separates with them or a run
continues from them. Files written before checksums existed still load.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch

from mixitcli.model.bslocoformer import BSLocoformer
from mixitcli.model.serialize import ModelLoadError, first_nonfinite, model_from_dict
from mixitcli.storage import human_bytes

FORMAT = "mixit-train"


class CheckpointError(Exception):
    """A checkpoint or run folder is missing, unreadable or not ours."""


# ----------------------------------------------------------------------------- checksums


def checksum(obj) -> str:
    """``"crc32:<hex>"`` of a checkpoint's contents, its own ``checksum`` entry left out.

    Every tensor feeds its dtype, shape and bytes (contiguous, on the CPU); every other value
    its ``repr``; dict keys are taken in sorted order, so the sum depends on the contents only,
    not on how the file was written. A CRC finds the damage storage does (flipped bits, torn
    or mixed-up blocks) at about 2 GB/s on one core, twice the speed of SHA-256; it is not a
    defence against someone who edits a file on purpose.
    """
    crc = _crc(0, {k: v for k, v in obj.items() if k != "checksum"} if isinstance(obj, dict) else obj)
    return f"crc32:{crc:08x}"


def _crc(crc: int, obj) -> int:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        crc = zlib.crc32(f"tensor {t.dtype} {tuple(t.shape)}|".encode(), crc)
        return zlib.crc32(t.reshape(-1).view(torch.uint8).numpy(), crc)
    if isinstance(obj, dict):
        crc = zlib.crc32(b"{", crc)
        for key in sorted(obj, key=repr):
            crc = _crc(zlib.crc32(repr(key).encode() + b":", crc), obj[key])
        return zlib.crc32(b"}", crc)
    if isinstance(obj, (list, tuple)):
        crc = zlib.crc32(b"[", crc)
        for value in obj:
            crc = _crc(crc, value)
        return zlib.crc32(b"]", crc)
    return zlib.crc32(repr(obj).encode() + b",", crc)


def with_checksum(obj: dict) -> dict:
    """``obj`` with its :func:`checksum`, ready to save."""
    return dict(obj, checksum=checksum(obj))


def verify_checksum(obj: dict, path: str | Path, *, hint: bool = True) -> None:
    """Check a loaded checkpoint or model file against the checksum saved in it (a file
    without one, written before checksums existed, passes).

    Raises:
        CheckpointError: the contents differ from what was saved; names the file and, in a run
            folder, the newest checkpoint of the run that is good.
    """
    saved = obj.get("checksum") if isinstance(obj, dict) else None
    if saved is None or checksum(obj) == saved:
        return
    raise CheckpointError(
        f"{path} is damaged: its contents do not match the checksum saved with it (bytes changed after it was "
        f"written: a failing disk or memory, or a broken copy).{newest_good_hint(path) if hint else ''}"
    )


def newest_good_hint(path: str | Path) -> str:
    """`` The newest good checkpoint of its run is ...`` for a file in ``RUN/checkpoints/``
    (the run's ``last.pt`` and ``best-*.pt`` other than ``path`` that read and verify), or ''."""
    path = Path(path)
    if path.parent.name != "checkpoints":
        return ""
    found = newest_good(path.parent.parent, besides=path)
    if found is None:
        return " No other checkpoint of its run reads correctly."
    good, ckpt = found
    return f" The newest good checkpoint of its run is {good} (step {ckpt['step']}): use that file instead."


def newest_good(run: str | Path, *, besides: Path | None = None) -> tuple[Path, dict] | None:
    """The run's checkpoint with the highest step (``last.pt`` or a ``best-*.pt``, not ``besides``)
    that reads, verifies and holds finite weights, with its contents; None when there is none."""
    folder = Path(run) / "checkpoints"
    found = None
    for path in [folder / "last.pt", *folder.glob("best-*.pt")]:
        if not path.is_file() or (besides is not None and path.resolve() == besides.resolve()):
            continue
        try:
            ckpt = _read(path)
        except CheckpointError:
            continue
        if ckpt.get("checksum", None) not in (None, checksum(ckpt)):
            continue
        if first_nonfinite(ckpt["model"]["state_dict"]) is None and (found is None or ckpt["step"] > found[1]["step"]):
            found = (path, ckpt)
    return found


def load_checkpoint(path: str | Path, *, map_location: str = "cpu", hint: bool = True) -> dict:
    """Read a training checkpoint (never executes code from the file) and verify its checksum.

    Args:
        hint: a damaged file's message names the newest good checkpoint of its run.

    Raises:
        CheckpointError: missing, empty, unreadable, not ours, or damaged (checksum).
    """
    ckpt = _read(path, map_location=map_location)
    verify_checksum(ckpt, path, hint=hint)
    return ckpt


def _read(path: str | Path, *, map_location: str = "cpu") -> dict:
    """:func:`load_checkpoint` without the checksum."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"{path} is empty (0 bytes): the save that wrote it never finished (a full disk or a crash)"
        )
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
            return path, load_checkpoint(path, hint=False)
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
        try:
            model_dict = load_checkpoint(path, map_location=map_location)["model"]
            bad = first_nonfinite(model_dict["state_dict"])
            if bad is not None:
                raise CheckpointError(f"{path}: weight {bad[0]} holds {bad[1]} non-finite value(s) (NaN or infinity)")
        except CheckpointError as e:
            raise CheckpointError(f"{e}{_leave_out(path, paths)}") from e
        if reference is None:
            reference = model_dict
            total = {
                k: v.double().clone() if v.is_floating_point() else v.clone()
                for k, v in model_dict["state_dict"].items()
            }
            continue
        if model_dict["model_config"] != reference["model_config"]:
            raise CheckpointError(f"{path}: a different architecture from {paths[0]}; cannot average")
        for k, v in model_dict["state_dict"].items():
            if v.is_floating_point():
                total[k] += v.double()
    averaged = {
        k: (v / len(paths)).to(reference["state_dict"][k].dtype) if v.is_floating_point() else v
        for k, v in total.items()
    }
    try:
        return model_from_dict(dict(reference, state_dict=averaged))
    except ModelLoadError as e:
        raise CheckpointError(str(e)) from e


def average_run(run: str | Path, *, best: int | None = None, map_location: str = "cpu") -> BSLocoformer:
    """The average of a run's best ``best`` checkpoints (all kept ones by default)."""
    paths = best_checkpoints(run)
    return average_checkpoints(paths[:best] if best else paths, map_location=map_location)


def _leave_out(bad: Path, paths: list[Path]) -> str:
    """How to average without a bad checkpoint of a run: move it away (the index skips missing files)."""
    if len(paths) < 2 or bad.name == "last.pt":
        return ""
    return (
        f"\nTo average the other {len(paths) - 1} checkpoint(s), move it away and run the same command again: "
        f"mv {bad} {bad}.damaged"
    )
