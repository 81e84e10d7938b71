"""Will a training micro-batch fit in memory? An estimate made before the first step.

A batch that cannot fit must be refused before it is drawn: on a CPU, Linux's OOM killer ends
the process (and others beside it) without a word, and on a GPU the run dies at its first
step. The estimate is measured, not computed from a formula: one example goes through the
real model's forward pass and loss on the real device, with the run's settings (autocast,
activation checkpointing, the MixIT or supervised loss), and every tensor autograd keeps for
the backward pass is counted (:func:`torch.autograd.graph.saved_tensors_hooks`). A formula
would have to follow every change of the model, of the attention kernels and of autocast;
the measurement follows them by itself and costs the forward passes of three examples: one
alone and two together, since part of what is kept does not grow with the batch (products of
weights, such as the decoder's per-output layers) and the rest grows in proportion to it.

The estimate leaves out what only exists for a moment (a layer's output gradient during the
backward pass, the kernels' workspaces), so it is a floor: a micro-batch whose floor does not
fit cannot fit, and one that fits by a small margin may still not. Only the first is refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mixitcli.storage import human_bytes


@dataclass(frozen=True)
class MemoryEstimate:
    """What one training micro-batch needs on its device, and what the device has.

    Attributes:
        per_example: bytes kept for the backward pass per example, its input included.
        fixed: bytes that do not grow with the batch and are not allocated yet: what the
            backward pass keeps whatever the batch, gradients, and the two AdamW moments of the
            trainable weights (the weights themselves are loaded already).
        available: bytes this process may still use (None: unknown, nothing is refused).
        where: what ``available`` is, for messages ("RAM available", "free memory of cuda:0").
    """

    per_example: int
    fixed: int
    available: int | None
    where: str

    def needed(self, micro: int) -> int:
        """Bytes a micro-batch of ``micro`` examples needs at least."""
        return self.fixed + micro * self.per_example

    def fits(self, micro: int) -> bool:
        return self.available is None or self.needed(micro) <= self.available

    def describe(self, micro: int) -> str:
        """E.g. ``about 41.2 GB (16 x 2.5 GB per example, plus 0.1 GB of optimizer state); 23.0 GB RAM available``."""
        room = f"{human_bytes(self.available)} {self.where}" if self.available is not None else f"unknown {self.where}"
        return (
            f"at least {human_bytes(self.needed(micro))} ({micro} x {human_bytes(self.per_example)} per example, "
            f"plus {human_bytes(self.fixed)} for the weights' gradients and optimizer state); {room}"
        )


def grad_accum_that_fits(batch_size: int, world: int, grad_accum: int, estimate: MemoryEstimate) -> int | None:
    """The smallest ``--grad-accum`` above ``grad_accum`` that keeps the global batch (it must
    divide ``batch_size`` over ``world`` devices) and whose micro-batch fits; None when even one
    example per forward pass does not fit."""
    for n in range(grad_accum + 1, batch_size // world + 1):
        if batch_size % (world * n) == 0 and estimate.fits(batch_size // (world * n)):
            return n
    return None


def next_grad_accum(batch_size: int, world: int, grad_accum: int) -> int | None:
    """The smallest ``--grad-accum`` that at least halves the micro-batch and keeps the global
    batch (after an out-of-memory error, when the estimate was too optimistic); None: none."""
    for n in range(2 * grad_accum, batch_size // world + 1):
        if batch_size % (world * n) == 0:
            return n
    return None


# ----------------------------------------------------------------------------- measuring


class _SavedBytes:
    """Counts the bytes of the distinct storages autograd saves, leaving out ``known`` ones
    (the weights, which are loaded already, and the input, counted by the caller)."""

    def __init__(self, known: set[int]):
        self.seen = set(known)
        self.total = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key not in self.seen:
                self.seen.add(key)
                self.total += storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without a storage (sparse, nested)
            pass
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


_MEASURED: dict[object, tuple[int, int]] = {}
"""What :func:`batch_bytes` measured in this process, by the caller's key: a process that
trains several runs of one configuration (a test session, a sweep) measures it once."""


def batch_bytes(
    core: torch.nn.Module,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    example_of: Callable[[int], torch.Tensor],
    *,
    key: object = None,
) -> tuple[int, int]:
    """(per example, whatever the batch): the bytes autograd keeps for the backward pass of a
    batch of b examples are ``per_example * b + constant``, fitted to b = 1 and b = 2.

    Args:
        core, loss_of: as :func:`activation_bytes`.
        example_of: a batch of b examples on the model's device.
        key: everything the answer depends on (model configuration, loss, segment length,
            autocast, checkpointing, device), to reuse an earlier measurement; None: measure.
    """
    if key is not None and key in _MEASURED:
        return _MEASURED[key]
    one = activation_bytes(core, loss_of, example_of(1))
    two = activation_bytes(core, loss_of, example_of(2))
    per_example = max(two - one, 0)
    measured = per_example, max(one - per_example, 0)
    if key is not None:
        _MEASURED[key] = measured
    return measured


def activation_bytes(
    core: torch.nn.Module, loss_of: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor
) -> int:
    """Bytes autograd keeps for the backward pass of ``batch``, its input included.

    Args:
        core: the model (a BS-Locoformer), in training mode, on its device.
        loss_of: the training loss of a batch, e.g. ``lambda b: compute_loss(core, core, b, config)``.
        batch: (b, ...) examples on the model's device.

    With activation checkpointing, a block path keeps only its input (what it saves inside is
    hidden from these hooks); the backward pass then recomputes one path at a time, whose saved
    tensors are measured apart and added once. The random generators are left as they were
    (dropout draws during the measurement), and no gradient is computed.
    """
    known = {t.untyped_storage().data_ptr() for t in (*core.parameters(), *core.buffers())}
    counter = _SavedBytes(known | {batch.untyped_storage().data_ptr()})
    paths = {}  # checkpointed path module -> "freq" / "time"
    for block in getattr(core, "separator", []):
        if getattr(block, "activation_checkpointing", False):
            paths.update({block.freq: "freq", block.time: "time"})
    first_inputs: dict[str, torch.Tensor] = {}

    def kept_by_checkpoint(module, args):
        counter.pack(args[0])  # the input the checkpoint keeps until the backward pass
        first_inputs.setdefault(paths[module], args[0].detach())

    handles = [path.register_forward_pre_hook(kept_by_checkpoint) for path in paths]
    devices = [batch.device.index or 0] if batch.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            with counter.hooks():
                loss = loss_of(batch)
            del loss
            recompute = 0
            for name, x in first_inputs.items():
                path = getattr(core.separator[0], name)
                alone = _SavedBytes(known | {x.untyped_storage().data_ptr()})
                with alone.hooks():
                    out = path(x.requires_grad_(True))
                del out
                recompute = max(recompute, alone.total)
    finally:
        for h in handles:
            h.remove()
    return counter.total + recompute + batch.numel() * batch.element_size()


def optimizer_bytes(core: torch.nn.Module) -> int:
    """Gradients and AdamW's two moments of the trainable weights: three copies of them."""
    return 3 * sum(p.numel() * p.element_size() for p in core.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- what there is


def available_bytes(device: torch.device, *, sharing: int = 1) -> tuple[int | None, str]:
    """Memory this process may still allocate on ``device``, and what that is.

    CUDA: the device's free memory. CPU: the RAM Linux reports available (MemAvailable),
    bounded by the memory limit of the process's cgroup (a Slurm job's or a container's),
    divided by ``sharing`` processes that train on the same machine. Elsewhere (MPS, other
    systems): None.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free memory of {device}"
    if device.type != "cpu":
        return None, f"memory of {device}"
    room = [n for n in (_meminfo_available(), _cgroup_room()) if n is not None]
    if not room:
        return None, "RAM"
    share = f" to each of the {sharing} processes that train on this machine" if sharing > 1 else ""
    return min(room) // max(sharing, 1), f"RAM available{share}"


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """Limit minus usage of this process's memory cgroup (v2, or v1), or None without a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            folder = Path("/sys/fs/cgroup") / path.lstrip("/")
            limit, usage = folder / "memory.max", folder / "memory.current"
        elif "memory" in controllers.split(","):
            folder = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            limit, usage = folder / "memory.limit_in_bytes", folder / "memory.usage_in_bytes"
        else:
            continue
        try:
            text = limit.read_text().strip()
            if text == "max" or int(text) >= 1 << 60:  # no limit (v1 writes a huge number)
                return None
            return max(int(text) - int(usage.read_text().strip()), 0)
        except (OSError, ValueError):
            return None
    return None


def local_processes() -> int:
    """Training processes on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    try:
        return max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1
