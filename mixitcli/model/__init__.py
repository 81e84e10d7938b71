"""BS-Locoformer: build, save, load (ours or the authors'), slice output heads.

Public API: :func:`build_model`, :func:`load_model`, :func:`slice_outputs`,
:func:`model_to_dict` / :func:`model_from_dict`, :class:`BSLocoformer`, :class:`ModelConfig`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mixitcli.model.bslocoformer import BSLocoformer
from mixitcli.model.checkpoints import CheckpointError, average_run, newest_good_hint, verify_checksum
from mixitcli.model.config import PRESETS, ModelConfig, default_stems
from mixitcli.model.config import preset as preset_config
from mixitcli.model.official import OfficialCheckpointError, find_official, load_official
from mixitcli.model.serialize import FORMAT, ModelLoadError, model_from_dict, model_to_dict

__all__ = [
    "BSLocoformer",
    "ModelConfig",
    "ModelLoadError",
    "PRESETS",
    "build_model",
    "load_model",
    "model_from_dict",
    "model_to_dict",
    "slice_outputs",
]


def build_model(preset: str = "medium", n_outputs: int = 4, **overrides) -> BSLocoformer:
    """A freshly initialised BS-Locoformer.

    Args:
        preset: "tiny", "small", "medium" or "large" (docs/method.md §3).
        n_outputs: number of outputs (12 for MixIT, 4 for fine-tuning).
        overrides: any :class:`ModelConfig` field, e.g. ``dropout=0.0``.

    Returns:
        The model; it maps (b, 2, t) waveforms to (b, n_outputs, 2, t).
    """
    return BSLocoformer(preset_config(preset, n_outputs=n_outputs, **overrides))


def load_model(path: str | Path, *, map_location: str = "cpu") -> BSLocoformer:
    """Load a model, in eval mode, from any of:

    - a mixit checkpoint file (written by training or :func:`model_to_dict` + ``torch.save``);
    - a mixit run folder (``RUN/checkpoints``): the average of its best checkpoints;
    - an official model folder (``checkpoints/model.pth`` + ``merged_config.yaml``) or its
      ``model.pth``.

    Files are read with ``weights_only=True``: loading never executes code from them. A mixit
    file's checksum is verified, and weights must fit their configuration and be finite.

    Raises:
        ModelLoadError: the path is missing or holds none of the above, or the file is damaged
            (checksum), its weights do not fit its configuration or are not finite; a file of
            a run folder's ``checkpoints/`` names the newest good checkpoint of that run.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or folder")
    official = find_official(path)
    if official is not None:
        try:
            return load_official(*official, map_location=map_location)
        except OfficialCheckpointError as e:
            raise ModelLoadError(str(e)) from e
    if path.is_dir():
        try:
            return average_run(path, map_location=map_location).eval()
        except CheckpointError as e:
            raise ModelLoadError(str(e)) from e
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ModelLoadError(f"{path}: not a readable checkpoint ({e})") from e
    if not isinstance(blob, dict):
        raise ModelLoadError(f"{path}: not a mixit checkpoint (a {type(blob).__name__})")
    try:
        verify_checksum(blob, path)
    except CheckpointError as e:
        raise ModelLoadError(str(e)) from e
    if isinstance(blob.get("model"), dict):  # a training checkpoint wraps the model
        blob = blob["model"]
    if blob.get("format") != FORMAT:
        hint = ""
        if any(str(k).startswith("model.model.") for k in blob):
            hint = " It looks like an official model.pth: put merged_config.yaml beside it or two folders up."
        raise ModelLoadError(f"{path}: not a mixit checkpoint.{hint}")
    try:
        return model_from_dict(blob).eval()
    except ModelLoadError as e:
        raise ModelLoadError(f"{path}: {e}.{newest_good_hint(path)}") from e


def slice_outputs(
    model: BSLocoformer, keep: list[int] | tuple[int, ...], *, stems: tuple[str, ...] | None = None
) -> BSLocoformer:
    """A copy of ``model`` that computes only the outputs ``keep`` (in that order).

    The last decoder layer of every band holds one block of rows per output (in the
    official layout, rows ordered (GLU half, re/im, output, channel, bin)); keeping the
    blocks of the chosen outputs gives a model whose outputs equal ``model(x)[:, keep]``
    bit for bit (docs/method.md §6).

    Args:
        model: the source model, e.g. 12 MixIT outputs.
        keep: output indices to keep, e.g. the selection (bass, drums, vocals, other).
        stems: names of the new outputs (default: the four stems for 4 outputs).

    Raises:
        ValueError: an index out of range or repeated.
    """
    n = model.config.n_outputs
    keep = [int(i) for i in keep]
    if not keep or any(not 0 <= i < n for i in keep) or len(set(keep)) != len(keep):
        raise ValueError(
            f"cannot keep outputs {keep} of a model with {n} outputs (need distinct indices in 0..{n - 1})"
        )
    config = model.config.replace(n_outputs=len(keep))
    new = BSLocoformer(config, stems=stems if stems is not None else default_stems(len(keep)))
    state = model.state_dict()
    for i in range(len(config.bands)):
        for param in ("weight", "bias"):
            key = f"decoder.heads.{i}.fc3.{param}"
            state[key] = state[key][keep].clone()  # (n, ...) -> (len(keep), ...)
    new.load_state_dict(state, strict=True)
    return new.train(model.training)
