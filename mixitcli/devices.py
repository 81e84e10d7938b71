"""Which torch device runs the model: one rule for separation, evaluation and training."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """The device asked for does not exist or is not available here."""


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The torch device for "auto" (CUDA, else Apple MPS, else CPU), "cpu", "cuda", "cuda:i" or "mps".

    A CUDA device without an index is GPU ``local_rank`` (torchrun's LOCAL_RANK).

    Raises:
        DeviceError: the device asked for is not available in this torch build or machine.
    """
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else "mps" if mps else "cpu"
    elif name.startswith("cuda") and not cuda:
        raise DeviceError(f"--device {name}: CUDA is not available (torch {torch.__version__}); use --device cpu")
    elif name == "mps" and not mps:
        raise DeviceError("--device mps: Apple MPS is not available here; use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise DeviceError(f"--device {name}: not a device name (auto, cpu, cuda, cuda:1, mps)") from e
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device
