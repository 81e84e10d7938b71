"""The one training loop behind `mixit pretrain`, `finetune` and `freeze-finetune`.

What differs between the stages is configuration (:mod:`mixitcli.train.config`): the loss
(MixIT or supervised), the data (mixtures of mixtures or dynamic mixing), where the weights
start and what is trainable, and the schedule. Read top to bottom: set-up (devices, model,
data, optimizer, resume), then :func:`train`'s loop, which calls :func:`train_step` and
:func:`validate`, logs, and checkpoints.

Devices: CPU, one CUDA GPU, or several processes under ``torchrun`` (DDP; NCCL on GPUs, gloo
on CPUs). bf16 autocast on CUDA by default; the model keeps the STFT, norms and masks in
float32 and the losses cast to float32.

Stop signals (SIGINT, SIGTERM, SIGUSR1; :mod:`mixitcli.signals`) are acted on at a step
boundary, where the ranks agree on them: the step finishes, a validation that was due or
under way is left for the resumed run (``pending_validation``), ``last.pt`` is written, and
:class:`~mixitcli.signals.Interrupted` carries the message, so that ``--resume`` continues as
an uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from mixitcli.losses import SolverError, finetune_loss, mixit_loss_from_spectra
from mixitcli.model import BSLocoformer, load_model, slice_outputs
from mixitcli.model.config import PRESETS
from mixitcli.model.config import preset as preset_config
from mixitcli.progress import Progress
from mixitcli.signals import Interrupted, StopRequest, deferred_stop, ignore_stop_signals, signal_name
from mixitcli.stems import describe
from mixitcli.storage import StorageError, check_writable, describe_os_error, naming, remove_stale_temporaries
from mixitcli.train import memory
from mixitcli.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    atomic_write_text,
    load_last,
    rng_state,
    set_rng_state,
    training_state,
)
from mixitcli.train.config import ConfigError, TrainConfig
from mixitcli.train.schedule import make_scheduler


class TrainingError(Exception):
    """Training cannot start or continue; the message says why and what to do."""


class Stopped(Interrupted):
    """A stop signal ended the run at a step boundary, after its save; the message says what
    was saved and how to go on (a second signal raises a plain :class:`Interrupted` instead)."""


# ----------------------------------------------------------------------------- set-up


@dataclass
class Runtime:
    """Where this process runs: its rank among ``world`` processes and its device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # this process started the process group (and ends it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """This rank's device (see :func:`mixitcli.devices.pick_device`)."""
    from mixitcli.devices import DeviceError, pick_device

    try:
        return pick_device(name, local_rank)
    except DeviceError as e:
        raise TrainingError(str(e)) from e


def setup_runtime(device_name: str) -> Runtime:
    """Read torchrun's environment and start the process group when there are several ranks."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = world > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(rank=rank, world=world, local_rank=local_rank, device=device, owns_group=owns_group)


def _preset_of(model: BSLocoformer) -> str:
    for name, cfg in PRESETS.items():
        if cfg.replace(n_outputs=model.config.n_outputs, dropout=model.config.dropout) == model.config:
            return name
    return "custom"


def prepare_model(
    config: TrainConfig, checkpoint: dict | None = None, *, source: str = "", warnings: list[str] | None = None
) -> tuple[BSLocoformer, str]:
    """The model the run starts from, and a line saying where its weights come from.

    A resumed run: the model saved in ``checkpoint`` (read from ``source``), as it was.
    From scratch: the preset with ``n_outputs`` outputs, named after the data's stems when
    fine-tuning. From ``init``: a mixit checkpoint, run folder (average of its best checkpoints)
    or official folder; fine-tuning with ``selection`` keeps the outputs it chooses for the data's
    stems (e.g. 4 or 2 of 12), and the selection's warnings (a stem no validation chunk matched)
    are appended to ``warnings``.

    Raises:
        TrainingError: the weights cannot be loaded, or the model's outputs are not the data's
            stems (both lists named).
    """
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    supervised = config.loss == "supervised"
    if checkpoint is not None:
        from mixitcli.model import ModelLoadError, model_from_dict

        try:
            model = model_from_dict(checkpoint["model"])
        except (ModelLoadError, KeyError, RuntimeError) as e:
            from mixitcli.model.checkpoints import newest_good

            good = newest_good(Path(source).parent.parent, besides=Path(source))
            then = (
                f" Start a new run from the newest good checkpoint of the run ({good[0]}, step {good[1]['step']}): "
                f"mixit {config.stage} --init {good[0]} --out NEW_RUN"
                if good
                else ""
            )
            raise TrainingError(f"--resume: {source} does not hold a usable model ({e}).{then}") from e
        started = f"{config.init}" if config.init is not None else "random initialisation"
        origin = f"{source} (step {checkpoint['step']}; the run started from {started})"
        if supervised and model.stems != tuple(config.stems):
            raise TrainingError(
                f"--resume: the run's model outputs the stems {describe(model.stems)}, but --data {config.data} holds "
                f"{describe(config.stems)}; resume with --data set to a folder of the run's stems"
            )
        model.train().requires_grad_(True)
    elif config.init is None:
        size = config.size or "medium"
        model = BSLocoformer(
            preset_config(size, n_outputs=config.n_outputs, dropout=config.dropout),
            stems=tuple(config.stems) if supervised else None,
        )
        origin = f"random initialisation ({size}, {config.n_outputs} outputs)"
    else:
        from mixitcli.model import ModelLoadError
        from mixitcli.registry import RegistryError, resolve_model

        try:  # a name of a published model is resolved to its folder first, then loaded
            model = load_model(resolve_model(config.init, progress=os.environ.get("RANK", "0") == "0"))
        except (ModelLoadError, CheckpointError, RegistryError) as e:
            raise TrainingError(f"--init: {e}") from e
        origin = f"{config.init} ({model.config.n_outputs} outputs)"
        if config.size is not None and _preset_of(model) != config.size:
            raise TrainingError(
                f"--size {config.size} but --init {config.init} is a {_preset_of(model)} model; drop --size or change it"
            )
        if config.loss == "mixit" and model.config.n_outputs != config.n_outputs:  # no selection makes 12 of 4
            raise TrainingError(
                f"pre-training needs a {config.n_outputs}-output (MixIT) model, but --init {config.init} has "
                f"{model.config.n_outputs} outputs ({', '.join(model.stems)}); pass a pre-trained run folder or "
                f"{config.n_outputs}-output model as --init, or drop --init to pre-train from random weights"
            )
        if supervised and config.selection is not None:
            from mixitcli.selection import SelectionError, read_selection, selection_warnings

            try:
                keep = read_selection(config.selection, n_outputs=model.config.n_outputs, stems=tuple(config.stems))
                notes = selection_warnings(config.selection)
            except SelectionError as e:
                raise TrainingError(f"--selection {e}") from e
            if warnings is not None:
                warnings += [f"{config.selection}: {note}" for note in notes]
            model = slice_outputs(model, keep, stems=tuple(config.stems))
            origin += f", outputs {keep} selected by {config.selection}"
        elif model.config.n_outputs != config.n_outputs:
            raise TrainingError(
                f"--init has {model.config.n_outputs} outputs and this stage needs {config.n_outputs}: "
                "pass --selection (from `mixit select-channels`) to choose them"
            )
        if supervised and model.stems != tuple(config.stems):
            raise TrainingError(
                f"--init {config.init} outputs the stems {describe(model.stems)}, but --data {config.data} holds "
                f"{describe(config.stems)}: pass --selection to choose its outputs for them "
                f"(`mixit select-channels {config.init} --data {config.data} --out selection.json`)"
            )
        if model.config.dropout != config.dropout:
            rebuilt = BSLocoformer(model.config.replace(dropout=config.dropout), stems=model.stems)
            rebuilt.load_state_dict(model.state_dict())
            model = rebuilt
        model.train().requires_grad_(True)
    if config.trainable == "encdec":
        model.separator.requires_grad_(False)
    model.set_activation_checkpointing(checkpointing_on(config, model))
    return model, origin


def checkpointing_on(config: TrainConfig, model: BSLocoformer) -> bool:
    """Whether the blocks recompute their activations in the backward pass.

    The option when it is set. Unset: on for CUDA and for models of the medium size and above
    (d_model >= 128), whose activations fill memory; off for the tiny and small models on CPU
    and MPS, whose activations are small and whose steps the recomputation lengthens by a fifth.
    """
    if config.activation_checkpointing is not None:
        return config.activation_checkpointing
    from mixitcli.devices import pick_device

    return pick_device(config.device).type == "cuda" or model.config.d_model >= 128


def with_data_stems(config: TrainConfig) -> TrainConfig:
    """Fine-tuning: ``config`` with the stems of its data, which the run records (issue 21).

    Raises:
        TrainingError: the data is unusable, or the run (resumed, or a recipe naming its stems)
            has other stems than the data (both lists named).
    """
    if config.loss == "mixit":
        return config
    from mixitcli.data.errors import DataError
    from mixitcli.data.prepared import prepared_stems

    check_data_kind(config)
    try:
        have = prepared_stems(config.data)
    except DataError as e:
        raise TrainingError(f"--data: {e}") from e
    if config.stems is not None and tuple(config.stems) != have:
        raise TrainingError(
            f"this run fine-tunes the stems {describe(config.stems)}, but --data {config.data} holds {describe(have)}: "
            "give the run a folder prepared with its stems, or start a new run (another --out) on this data"
        )
    return config.replace(stems=have)


def make_datasets(config: TrainConfig):
    """(train, valid) datasets of the stage. Raises TrainingError for an unusable data folder."""
    from mixitcli.data.errors import DataError

    check_data_kind(config)
    config = with_data_stems(config)
    try:
        return _make_datasets(config)
    except DataError as e:
        hint = ""
        if config.loss == "mixit" and "'valid' split" in str(e):
            hint = (
                f" Hold out more tracks without decoding again: "
                f"`mixit prepare-fma --merge --out {config.data} --valid-fraction 0.05` (or larger for small collections)."
            )
        raise TrainingError(f"--data: {e}{hint}") from e


def prepared_kind(folder: Path) -> str | None:
    """Which command prepared ``folder``: "prepare-fma", "prepare-musdb", or None (neither)."""
    if (folder / "salient").is_dir() or (folder / "valid.txt").is_file():
        return "prepare-musdb"
    if (folder / "manifest.jsonl").is_file() or (folder / "index.npz").is_file() or (folder / "shards").is_dir():
        return "prepare-fma"
    return None


def check_data_kind(config: TrainConfig) -> None:
    """Refuse the other stage's data with the command that makes the right one.

    Raises:
        TrainingError: ``config.data`` was prepared for the other kind of training.
    """
    needed = "prepare-fma" if config.loss == "mixit" else "prepare-musdb"
    found = prepared_kind(Path(config.data))
    if found is None or found == needed:
        return
    what = {"prepare-fma": "unlabeled music cut into clips", "prepare-musdb": "songs with their stems"}
    make = {
        "prepare-fma": "`mixit prepare-fma --audio-dir MUSIC --out DIR` (or ROOT --subset ...)",
        "prepare-musdb": "`mixit prepare-musdb MUSDB18HQ --out DIR` (any other stems: `mixit prepare-stems ROOT --out DIR`)",
    }
    raise TrainingError(
        f"--data {config.data} is a {found} folder ({what[found]}); {config.stage} trains on a {needed} folder "
        f"({what[needed]}): make one with {make[needed]} and pass it as --data"
    )


def _make_datasets(config: TrainConfig):
    from mixitcli.data.samplers import DynamicMixing, MixtureOfMixtures, MusdbValidation

    epoch_size = config.steps_per_epoch * config.batch_size
    stems = tuple(config.stems) if config.stems else None  # the data's, by default
    if config.loss == "mixit":
        train = MixtureOfMixtures(
            config.data,
            split="train",
            segment_seconds=config.segment_seconds,
            seed=config.seed,
            level_range_db=config.level_range_db,
            epoch_size=epoch_size,
        )
        valid = MixtureOfMixtures.validation(
            config.data, segment_seconds=config.segment_seconds, seed=config.seed + 1, size=config.valid_size
        )
    else:
        train = DynamicMixing(
            config.data,
            segment_seconds=config.segment_seconds,
            seed=config.seed,
            stems=stems,
            epoch_size=epoch_size,
            stem_norm=config.stem_norm,
        )
        valid = MusdbValidation(config.data, subset="valid", stems=stems)
        if len(valid) == 0:  # an empty score would rank the checkpoints arbitrarily (issue 10)
            from mixitcli.data.errors import PreparedDataError
            from mixitcli.data.musdb import NO_VALIDATION_FIX

            raise PreparedDataError(
                f"{config.data} lists no validation songs (its valid.txt is empty), and fine-tuning ranks its "
                f"checkpoints by the validation score, so it refuses to start; {NO_VALIDATION_FIX}."
            )
    return train, valid


def micro_batch(config: TrainConfig, world: int) -> int:
    """Examples per forward pass on each device; the global batch must divide evenly."""
    if config.batch_size % (world * config.grad_accum):
        fits = [a for a in range(1, config.batch_size + 1) if config.batch_size % (world * a) == 0][:4]
        keep = (
            f"keep the batch with --grad-accum {' or '.join(map(str, fits))}"
            if fits
            else f"no --grad-accum splits it over {world} device(s): use a device count that divides it"
        )
        raise ConfigError(
            f"batch size {config.batch_size} does not split over {world} device(s) x {config.grad_accum} "
            f"accumulation step(s): {keep}, or give --batch-size a multiple of {world * config.grad_accum}"
        )
    return config.batch_size // (world * config.grad_accum)


# ----------------------------------------------------------------------------- one step


def compute_loss(model, core: BSLocoformer, batch: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Loss of one micro-batch. ``batch``: (b, m, c, t) mixtures for MixIT (the input is their
    sum) or (b, n, c, t) stems for supervised training (the input is their sum). Input and
    references are first divided by the input's per-channel STFT RMS, as the official recipe."""
    mixture = batch.sum(1)  # (b, c, t)
    scale = core.input_scale(mixture)  # (b, c, 1)
    mixture, refs = mixture / scale, batch / scale.unsqueeze(1)
    mixit = config.loss == "mixit"
    with torch.autocast(mixture.device.type, dtype=torch.bfloat16, enabled=bool(config.bf16)):
        out = model(mixture, spectrum=mixit)  # (b, n, c, f, l) spectra for MixIT, else (b, n, c, t)
    if mixit:  # remixed before the (linear) iSTFT, whose backward then runs on m signals, not n
        t = mixture.shape[-1]
        try:
            return mixit_loss_from_spectra(
                out, refs, lambda spectra: core.synthesise(spectra, t), solver=config.mixit_solver
            )[0]
        except SolverError:  # outputs the solver cannot use (e.g. overflowed): a non-finite loss, so a bad step,
            return torch.view_as_real(out).sum() * float("nan")  # whose backward still reaches every weight (DDP)
    return finetune_loss(out, refs)


def train_step(model, core, batches, optimizer, scheduler, config: TrainConfig, rt: Runtime) -> dict:
    """One optimizer step over ``grad_accum`` micro-batches. Non-finite loss or gradients
    (on any rank) skip the update; the learning-rate schedule follows the step count."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=rt.device)
    for i in range(config.grad_accum):
        batch = next(batches).to(rt.device, non_blocking=True)
        sync = model.no_sync() if rt.distributed and i < config.grad_accum - 1 else contextlib.nullcontext()
        with sync:
            loss = compute_loss(model, core, batch, config)
            (loss / config.grad_accum).backward()
        loss_sum += loss.detach()
    params = [p for p in core.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, config.clip_norm)
    finite = torch.isfinite(loss_sum) & torch.isfinite(norm)
    if rt.distributed:
        flag = finite.float()
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        finite = flag > 0
    if finite:
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    lr = optimizer.param_groups[0]["lr"]
    scheduler.step()
    return {"loss/train": loss_sum / config.grad_accum, "grad/norm": norm.detach(), "lr": lr, "finite": bool(finite)}


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(
    core: BSLocoformer, valid, config: TrainConfig, rt: Runtime, micro: int, stop: StopRequest | None = None
) -> dict | None:
    """Pre-training: MixIT loss on held-out mixtures of mixtures. Fine-tuning: the loss and uSDR
    on whole validation songs, separated in 12 s chunks with a 6 s hop. Items are split
    across ranks and the sums reduced, so every rank gets the same numbers.

    Returns None, at once, when a stop signal arrives (``stop``; the ranks agree before each
    batch or song): the validation is left for the resumed run."""
    core.eval()
    sums = torch.zeros(2 + len(core.stems), dtype=torch.float64)  # loss, count, per-stem uSDR
    mine = list(range(rt.rank, len(valid), rt.world))
    per_round = micro if config.loss == "mixit" else 1  # items of this rank between two stop checks
    rounds = math.ceil(math.ceil(len(valid) / rt.world) / per_round)  # the same on every rank
    for r in range(rounds):
        if stop is not None and agreed_stop(stop, rt):
            return None
        part = mine[r * per_round : (r + 1) * per_round]
        if not part:
            continue
        if config.loss == "mixit":
            batch = torch.stack([valid[i] for i in part]).to(rt.device)
            sums[0] += compute_loss(core, core, batch, config).item() * len(batch)
            sums[1] += len(batch)
        else:
            from mixitcli.metrics import usdr
            from mixitcli.separate import separate_array

            _, mixture, stems = valid[part[0]]  # (c, t), (n, c, t)
            est = separate_array(core, mixture, device=rt.device, bf16=bool(config.bf16))  # (n, c, t) on the CPU
            sums[0] += finetune_loss(est[None], stems[None]).item()
            sums[1] += 1
            sums[2:] += torch.tensor([usdr(stems[j], est[j]) for j in range(len(core.stems))], dtype=torch.float64)
    if rt.distributed:
        sums = sums.to(rt.device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    count = max(sums[1].item(), 1.0)
    out = {"loss/valid": sums[0].item() / count}
    if config.loss != "mixit":
        per_stem = sums[2:] / count
        out["usdr/valid"] = per_stem.mean().item()
        out.update({f"usdr/valid/{s}": v.item() for s, v in zip(core.stems, per_stem)})
    return out


def agreed_stop(request: StopRequest, rt: Runtime) -> int:
    """The stop signal every rank acts on now: this process's, or 0 for none. Under DDP the
    largest number any rank received, so that every rank stops after the same step and takes
    part in the same final save. One all-reduce of one number per step: 0.6 ms with gloo between
    two processes on a busy 2-core machine (2,000 in a row), against steps of a tenth of a
    second and more; NCCL is faster."""
    signum = request.signum or 0
    if rt.distributed:
        flag = torch.tensor([signum], dtype=torch.int32, device=rt.device if rt.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag.item())
    return signum


def check_sync(core: BSLocoformer, rt: Runtime) -> float:
    """Largest difference between ranks of the sum of all weights (0.0 when in sync)."""
    total = torch.stack([p.detach().double().sum() for p in core.parameters()]).sum().view(1)
    gathered = [torch.zeros_like(total) for _ in range(rt.world)]
    dist.all_gather(gathered, total.to(rt.device) if rt.device.type == "cuda" else total)
    values = torch.cat(gathered)
    return float(values.max() - values.min())


# ----------------------------------------------------------------------------- logging


class MetricsLog:
    """JSON lines in RUN/metrics.jsonl, and TensorBoard events when tensorboard is installed.

    A run that starts at ``step`` (0 for a new one, the checkpoint's step when resumed) first
    drops the records an earlier process wrote after that step: those steps are made again,
    and the log then reads like an uninterrupted run's. A validation left ``pending`` at
    ``step`` is made again too, so a record of it is dropped as well.
    """

    def __init__(self, run: Path, enabled: bool, *, step: int = 0, pending: bool = False):
        self.enabled = enabled
        self.path = run / "metrics.jsonl"
        self.tb = None
        if enabled:
            self._drop_after(step, pending)
            try:
                from torch.utils.tensorboard import SummaryWriter

                events = run / "tensorboard"  # purge_step: TensorBoard hides the events logged after it
                self.tb = SummaryWriter(str(events), purge_step=step + 1 if events.is_dir() else None)
            except ImportError:  # tensorboard is optional
                self.tb = None

    def _drop_after(self, step: int, pending: bool) -> None:
        if not self.path.is_file():
            return
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
                keep = record["step"] < step or (record["step"] == step and not (pending and "loss/valid" in record))
            except (ValueError, TypeError, KeyError):  # a line cut short by a kill
                keep = False
            kept += [line] if keep else []
            dropped += not keep
        if dropped:
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in record.items()}
        with naming(self.path), open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------- the loop


def _one_writer(run_training):
    """Hold the run folder's lock (:func:`mixitcli.lock.folder_lock`) for the whole of
    ``train``, on rank 0 (the one that writes it), taken before anything is written: a second
    run on the folder is refused, naming the first (issue 20). torchrun's RANK says which
    process is rank 0 before the process group exists."""
    import functools

    @functools.wraps(run_training)
    def locked(config: TrainConfig, *args, **kwargs):
        if int(os.environ.get("RANK", "0")) != 0:
            return run_training(config, *args, **kwargs)
        from mixitcli.lock import folder_lock

        with folder_lock(Path(config.out)):
            return run_training(config, *args, **kwargs)

    return locked


@_one_writer
def train(config: TrainConfig, *, resume: bool = False, console=None) -> dict:
    """Run (or continue) a training stage; returns a summary of the run.

    Raises:
        TrainingError: the run folder, data or initial weights are unusable, a micro-batch
            cannot fit in memory, the disk filled up, or training diverged (too many
            non-finite steps in a row); the message says what was kept and how to go on.
        Interrupted: a stop signal (SIGINT, SIGTERM, SIGUSR1) arrived; ``last.pt`` holds the
            step it stopped after, and the message says so and gives the command that goes on.
    """
    from rich.console import Console
    from rich.markup import escape

    console = console or Console(stderr=True)
    rt = setup_runtime(config.device)
    run = Path(config.out)
    manager_dir = run / "checkpoints"
    if not resume and (manager_dir / "last.pt").exists():
        raise TrainingError(f"{run} already holds a run; pass --resume to continue it, or choose another --out")
    if rt.main:  # a read-only --out is found before the heavy work; leftovers of killed saves go
        check_writable(manager_dir)
        remove_stale_temporaries(run, manager_dir)
    if config.bf16 is None:
        config = config.replace(bf16=rt.device.type == "cuda")
    micro = micro_batch(config, rt.world)

    config = with_data_stems(config)  # config.yaml and every checkpoint record the data's stems
    train_set, valid_set = make_datasets(config)  # checks the data before the heavy work
    notes: list[str] = []
    ckpt = load_last(run, stage=config.stage) if resume else None
    model, origin = prepare_model(config, ckpt, source=str(manager_dir / "last.pt"), warnings=notes)
    config = config.replace(activation_checkpointing=checkpointing_on(config, model))  # config.yaml says which
    core = model.to(rt.device)
    needs = check_memory(core, config, rt, micro, resume=resume)  # before the first batch is drawn
    trainable = [p for p in core.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config)
    step, epoch, epoch_step = 0, 0, 0
    counters = {"skipped_steps": 0, "bad_in_a_row": 0}
    best = []
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step, epoch, epoch_step = ckpt["step"], ckpt["epoch"], ckpt["epoch_step"]
        counters.update(ckpt["counters"])
        best = ckpt.get("best", [])
        rng = ckpt["rng"]
        set_rng_state(rng[rt.rank] if isinstance(rng, list) else rng)
    else:
        torch.manual_seed(config.seed * 1009 + rt.rank)  # dropout differs between ranks
    model = (
        DistributedDataParallel(core, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        if rt.distributed
        else core
    )

    manager = CheckpointManager(run, config.keep_best, best)
    pending = bool(ckpt is not None and ckpt.get("pending_validation"))
    if epoch_step == config.steps_per_epoch:  # saved by an older version between an epoch's last step and its end
        epoch, epoch_step = epoch + 1, 0
        pending = pending or epoch % config.valid_every_epochs == 0 or step >= config.total_steps
    log = MetricsLog(run, enabled=rt.main, step=step, pending=pending)
    if rt.main:
        run.mkdir(parents=True, exist_ok=True)
        import yaml

        atomic_write_text(run / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        console.print(
            f"[bold]{config.stage}[/] -> {run}  |  weights: {origin}  |  device {rt.device} x {rt.world}"
            f"{'  bf16' if config.bf16 else ''}\n"
            f"global batch {config.batch_size} = {micro} per forward x {config.grad_accum} accumulation x {rt.world} device(s); "
            f"{config.total_steps} steps ({config.steps_per_epoch} per epoch)"
            + (f"; resuming at step {step}" if resume else "")
            + (f"\nmemory: {needs}" if needs else "")
        )
        for note in notes:
            console.print(f"[yellow]warning:[/] {note}", highlight=False)

    def state() -> dict:
        rngs = None
        if rt.distributed:
            rngs = [None] * rt.world
            dist.all_gather_object(rngs, rng_state())
        return training_state(
            model=core,
            optimizer=optimizer,
            scheduler=scheduler,
            step=step,
            epoch=epoch,
            epoch_step=epoch_step,
            config=config.to_dict(),
            counters=counters,
        ) | ({"rng": rngs} if rngs is not None else {})

    saved_step = step if ckpt is not None else None  # the step last.pt holds

    def save(valid_loss: float | None = None, *, pending_validation: bool = False) -> None:
        nonlocal saved_step
        s = state()  # collective under DDP: every rank takes part
        s["pending_validation"] = pending_validation  # stopped before this step's validation
        if rt.main:
            manager.save(s, valid_loss=valid_loss)
        saved_step = step

    def validate_and_save() -> bool:
        """Validate, log and save; False, with nothing logged or saved, when a stop signal cut it short."""
        metrics = validate(core, valid_set, config, rt, micro, stop)
        if metrics is None:
            return False
        log.write({"step": step, "epoch": epoch, **metrics})
        if rt.main:
            shown = "  ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.count("/") == 1)
            progress.print(f"epoch {epoch} step {step}: {shown}")
        save(metrics["loss/valid"])
        summary.update(metrics)
        return True

    def halt(signum: int, *, pending_validation: bool) -> Stopped:
        """The end of a run stopped by a signal, after its save: what was saved, how to go on."""
        name = signal_name(signum)
        if step >= total and not pending_validation:
            message = f"{name} after the last step: the run is complete ({manager.last}, step {step})"
        else:
            first = f"; its validation of step {step} is made first when it continues" if pending_validation else ""
            message = f"{name} at step {step}: saved {manager.last}{first}. Continue with: {resume_command(config, rt)}"
        if rt.distributed:  # torchrun ends the other ranks as soon as one exits: none leaves before rank 0 has saved
            dist.barrier()
        if rt.main:  # said here, before exiting: the SIGTERM torchrun then sends may end this process at once
            progress.stop()  # the bar's last line first: the message ends the output
            console.print(f"[yellow]stopped:[/] {escape(message)}", highlight=False)
        return Stopped(signum, message, quiet=True)

    def go_on() -> str:
        """How to go on from what is on disk now, when the run stops without saving."""
        if saved_step is None:
            return "run the same command again (nothing was saved yet)"
        return f"continue from step {saved_step} ({manager.last}) with: {resume_command(config, rt)}"

    from mixitcli.data.samplers import IndexSampler

    per_rank = micro * config.grad_accum
    sampler = IndexSampler(len(train_set), seed=config.seed, epoch=epoch, rank=rt.rank, world_size=rt.world)
    total = config.total_steps
    progress = Progress(console, enabled=rt.main)
    bar = progress.bar("train", total, done=step, unit="steps")
    started, last_log = time.time(), (time.time(), step)
    summary = {"stage": config.stage, "run": str(run), "start_step": step}
    batches = None
    together = False  # every rank reached the end of the loop, or the same stop
    try:
        with progress, deferred_stop() as stop:
            if pending and not validate_and_save():  # the one a stop cut short, as the uninterrupted run made it
                raise halt(agreed_stop(stop, rt), pending_validation=True)  # last.pt is as it was loaded
            while step < total:
                if batches is None:  # a new epoch, or the rest of one after a resume
                    sampler.set_epoch(epoch, start=epoch_step * per_rank)
                    loader = DataLoader(
                        train_set,
                        batch_size=micro,
                        sampler=sampler,
                        num_workers=config.workers,
                        drop_last=True,
                        generator=torch.Generator().manual_seed(config.seed + epoch),  # keeps the global RNG untouched
                        pin_memory=rt.device.type == "cuda",
                        persistent_workers=False,
                        worker_init_fn=ignore_stop_signals,  # the loop decides when to stop, then ends them
                    )
                    batches = iter(loader)
                stats = train_step(model, core, batches, optimizer, scheduler, config, rt)
                step, epoch_step = step + 1, epoch_step + 1
                if stats["finite"]:
                    counters["bad_in_a_row"] = 0
                else:
                    counters["skipped_steps"] += 1
                    counters["bad_in_a_row"] += 1
                    if counters["bad_in_a_row"] >= config.max_bad_steps:
                        raise TrainingError(
                            f"{counters['bad_in_a_row']} step{'s' * (counters['bad_in_a_row'] > 1)} in a row had a non-finite loss "
                            f"or gradient (step {step}); "
                            f"stopped. The last good checkpoint is {manager.last}; lower --lr or check the data"
                        )
                if step % config.log_every == 0 or step == total:
                    now = time.time()
                    speed = (step - last_log[1]) * config.batch_size / max(now - last_log[0], 1e-9)
                    last_log = (now, step)
                    loss = stats["loss/train"]
                    if rt.distributed:
                        loss = loss.clone()
                        dist.all_reduce(loss)
                        loss /= rt.world
                    record = {
                        "step": step,
                        "epoch": epoch,
                        "time": round(now - started, 2),
                        "loss/train": loss,
                        "lr": stats["lr"],
                        "grad/norm": stats["grad/norm"],
                        "examples_per_s": round(speed, 2),
                        "skipped_steps": counters["skipped_steps"],
                    }
                    if rt.distributed and config.check_sync_every and step % config.check_sync_every == 0:
                        spread = check_sync(core, rt)
                        record["dist/param_spread"] = spread
                        if spread != 0.0:
                            raise TrainingError(f"ranks out of sync at step {step} (weight sums differ by {spread})")
                    log.write(record)
                    bar.update(done=step, info=f"loss {float(loss):.3f}  lr {stats['lr']:.2e}  {speed:.1f} ex/s")
                else:
                    bar.update(done=step)
                finished_epoch = epoch_step == config.steps_per_epoch
                if finished_epoch:
                    stop_workers(batches)
                    epoch, epoch_step, batches = epoch + 1, 0, None
                due = (finished_epoch and epoch % config.valid_every_epochs == 0) or step >= total
                signum = agreed_stop(stop, rt)  # a step boundary: the ranks agree on a stop here
                if signum:  # a validation due now is left to the resumed run, which makes it first
                    save(pending_validation=due)
                    raise halt(signum, pending_validation=due)
                if due:
                    if not validate_and_save():
                        save(pending_validation=True)
                        raise halt(agreed_stop(stop, rt), pending_validation=True)
                elif finished_epoch or (config.save_every_steps and step % config.save_every_steps == 0):
                    # within long epochs; step-based, so every rank agrees. Never at the last step:
                    # its validation comes first, and a last.pt saved before it would let a
                    # resume skip that validation and its best-k save (issue 11).
                    save()
            signum = agreed_stop(stop, rt)  # came during the last validation or save
            if signum:
                raise halt(signum, pending_validation=False)
        together = True
    except Stopped:
        together = True  # every rank agreed on the stop and passed halt()'s barrier
        raise  # saved, and says so
    except Interrupted as e:  # a second signal: stopped at once; every file is whole (atomic saves)
        raise Interrupted(e.signum, f"{e}, without saving; {go_on()}", quiet=not rt.main) from None
    except torch.OutOfMemoryError as e:  # the estimate let it through (it is a floor), the device did not
        fix = memory_fix(
            config,
            rt,
            memory.next_grad_accum(config.batch_size, rt.world, config.grad_accum),
            resumable=saved_step is not None,
        )
        raise TrainingError(
            f"out of memory on {rt.device} at step {step + 1} with {micro} example(s) per forward pass; {fix}"
        ) from e
    except StorageError as e:  # the disk filled up while saving: say how to go on from the last good save
        if e.error is None:
            raise
        raise TrainingError(describe_os_error(e.error, needed=e.needed, then=go_on())) from e
    except OSError as e:  # ... or while logging
        raise TrainingError(describe_os_error(e, then=go_on())) from e
    finally:
        stop_workers(batches)
        log.close()
        if rt.owns_group:
            if together:  # gloo can abort a rank whose peer tears its connections down first (SIGABRT seen under load)
                dist.barrier()
            dist.destroy_process_group()
    summary.update(step=step, epoch=epoch, skipped_steps=counters["skipped_steps"], best=manager.best)
    if rt.main:
        console.print(f"done: {step} steps; best checkpoints in {manager.dir}")
    return summary


def stop_workers(batches) -> None:
    """End the DataLoader worker processes of ``batches`` now. They ignore stop signals
    (:func:`~mixitcli.signals.ignore_stop_signals`), so the SIGTERM that multiprocessing sends
    them when this process exits would not end them, and its wait for them would never return;
    the iterator ends them itself when it is closed, which a traceback holding it would delay."""
    shutdown = getattr(
        batches, "_shutdown_workers", None
    )  # DataLoader's own clean-up (private, in every torch 1.x / 2.x)
    if shutdown is not None:
        shutdown()


def resume_command(config: TrainConfig, rt: Runtime) -> str:
    """The command that continues this run: the stage, ``--out`` and ``--resume`` (the rest is in
    RUN/config.yaml), under torchrun with its own options."""
    options = f"{config.stage} --out {shlex.quote(str(config.out))} --resume"
    return f"torchrun <its options as before> -m mixitcli {options}" if rt.distributed else f"mixit {options}"


# ----------------------------------------------------------------------------- memory


def check_memory(core: BSLocoformer, config: TrainConfig, rt: Runtime, micro: int, *, resume: bool) -> str:
    """Refuse a micro-batch that cannot fit in this device's memory, before the first step
    (:mod:`mixitcli.train.memory`); returns what it needs and what there is, for the log.

    Raises:
        TrainingError: the micro-batch cannot fit; the message gives the ``--grad-accum`` that
            fits at the same global batch, or says that not even one example fits.
    """
    available, where = memory.available_bytes(
        rt.device, sharing=memory.local_processes() if rt.device.type == "cpu" else 1
    )
    if available is None:
        return ""
    samples = int(round(config.segment_seconds * core.config.sample_rate))
    sources = 2 if config.loss == "mixit" else len(core.stems)  # mixtures of a MoM, or stems

    def examples(b: int) -> torch.Tensor:  # (b, m or n, c, t) noise, drawn without touching the run's RNG
        shape = (b, sources, core.config.n_channels, samples)
        return torch.randn(shape, generator=torch.Generator().manual_seed(b)).to(rt.device)

    key = (
        core.config,
        core.stems,
        config.loss,
        config.mixit_solver,
        config.trainable,
        config.bf16,
        config.activation_checkpointing,
        samples,
        str(rt.device),
    )  # what the measure depends on
    try:
        per_example, constant = memory.batch_bytes(
            core, lambda batch: compute_loss(core, core, batch, config), examples, key=key
        )
    except torch.OutOfMemoryError as e:  # two examples do not fit on this GPU; one may
        one = config.batch_size // rt.world
        fix = memory_fix(config, rt, one if one > config.grad_accum else None, resumable=resume)
        raise TrainingError(
            f"out of memory on {rt.device} measuring what two examples of {config.segment_seconds:g} s need. {fix}"
        ) from e
    estimate = memory.MemoryEstimate(
        per_example=per_example, fixed=constant + memory.optimizer_bytes(core), available=available, where=where
    )
    if estimate.fits(micro):
        return estimate.describe(micro)
    fix = memory_fix(
        config,
        rt,
        memory.grad_accum_that_fits(config.batch_size, rt.world, config.grad_accum, estimate),
        resumable=resume,
    )
    raise TrainingError(
        f"a micro-batch of {micro} example(s) of {config.segment_seconds:g} s cannot fit in memory: it needs "
        f"{estimate.describe(micro)}. {fix}"
    )


def memory_fix(config: TrainConfig, rt: Runtime, grad_accum: int | None, *, resumable: bool) -> str:
    """How to make the micro-batch fit: ``--grad-accum N`` at the same global batch, with the
    command; or, when not even one example fits, what else to change."""
    if grad_accum is None:
        return (
            "Not even one example per forward pass fits: shorten --segment-seconds, turn on "
            "--activation-checkpointing, choose a smaller --size or use a device with more memory"
        )
    micro = config.batch_size // (rt.world * grad_accum)
    how = (
        f"--grad-accum {grad_accum} makes it {grad_accum} forward passes of {micro} example(s) per step on each "
        f"device, the same global batch of {config.batch_size}"
    )
    if resumable:
        return f"{how}: {resume_command(config, rt)} --grad-accum {grad_accum}"
    return f"{how}: run the same command with --grad-accum {grad_accum}"
