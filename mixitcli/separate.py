"""Chunked inference: separate audio of any length with a model that only sees fixed segments.

docs/method.md §7 and the authors' ``css``: 12 s chunks with a 6 s hop; the last chunk is
zero-padded to 12 s and its output cut back; where chunks overlap their outputs are averaged
with equal weights; an all-zero chunk gives zeros without running the model; an input no
longer than one chunk is separated in one pass, unpadded. :class:`ChunkedSeparator`
computes exactly that (other hops and cross-fade windows are options), block by block: it
holds one batch of chunks and their overlap, never the song, so memory is bounded by the
chunk. :func:`separate_array` is the in-memory form (training validation and evaluation use
it); :func:`separate_file` streams a file through it, reading and writing in blocks.

The authors also normalise the whole song by its per-channel STFT RMS before ``css`` and
undo it afterwards. Our model divides every chunk by its own per-channel STFT RMS, so it is
scale-equivariant and that global step only changes float rounding (tests/model/test_official.py
checks the result against the official output, ``long_out``, to 1e-4): it is skipped.

Shape letters (docs/method.md §3): n outputs, c channels, t samples, B chunks in a batch, T chunk length.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mixitcli import audio
from mixitcli.devices import pick_device  # noqa: F401  (re-exported: batch and evaluate pick devices here)
from mixitcli.inference import Network, prepare

WINDOWS = ("equal", "triangle", "hann")
"""Cross-fade weights of overlapping chunks. "equal" is the paper's (and the only one that
reproduces the official output); the others fade each chunk in and out."""


class SeparationError(Exception):
    """Separation cannot run as asked (bad options, a device that is not there, an output
    that would overwrite its input); the message says what to change."""


def output_groups(model_stems: tuple[str, ...], names: list[str]) -> list[list[int]]:
    """The model outputs that make each named output file: a stem of the model is its own
    output; ``no_STEM`` (`mixit separate --two-stems STEM`) is the sum of all the others.

    Raises:
        SeparationError: a name that is neither.
    """
    from mixitcli.stems import COMPLEMENT

    groups, unknown = [], []
    for name in names:
        if name in model_stems:
            groups.append([model_stems.index(name)])
        elif name.startswith(COMPLEMENT) and name[len(COMPLEMENT) :] in model_stems:
            groups.append([i for i, s in enumerate(model_stems) if s != name[len(COMPLEMENT) :]])
        else:
            unknown.append(name)
    if unknown:
        raise SeparationError(f"unknown stem(s) {unknown}: this model outputs {', '.join(model_stems)}")
    return groups


@dataclass(frozen=True)
class ChunkOptions:
    """How a long input is cut for the model.

    Attributes:
        chunk_s: chunk length in seconds (the paper: 12).
        hop_s: distance between chunk starts in seconds, at most ``chunk_s`` (the paper: 6).
        window: weights of overlapping outputs, one of :data:`WINDOWS`.
        batch_size: chunks per forward pass (None: 4 on a GPU, 1 on the CPU, where batching
            does not help); the result does not depend on it.
    """

    chunk_s: float = 12.0
    hop_s: float = 6.0
    window: str = "equal"
    batch_size: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not self.chunk_s > 0:
            problems.append(f"chunk must be > 0 seconds, got {self.chunk_s}")
        if not 0 < self.hop_s <= self.chunk_s:
            problems.append(f"hop must be in (0, chunk={self.chunk_s}] seconds, got {self.hop_s}")
        if self.window not in WINDOWS:
            problems.append(f"window must be one of {', '.join(WINDOWS)}, got {self.window!r}")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch size must be >= 1, got {self.batch_size}")
        if problems:
            raise SeparationError("; ".join(problems))


def overlap_window(name: str, length: int) -> torch.Tensor:
    """Weights (length,) of one chunk's output in the overlap-add; all strictly positive, so
    a sample covered by a single chunk (the song's first and last seconds) keeps its value.

    "equal": ones. "triangle": rises linearly from the edges to the middle. "hann":
    sin^2(pi (k + 1/2) / length), a raised cosine sampled between the zeros.
    """
    k = torch.arange(length, dtype=torch.float64)
    if name == "equal":
        w = torch.ones(length, dtype=torch.float64)
    elif name == "triangle":
        w = torch.minimum(k + 1, length - k)
    elif name == "hann":
        w = torch.sin(math.pi * (k + 0.5) / length).square()
    else:
        raise SeparationError(f"window must be one of {', '.join(WINDOWS)}, got {name!r}")
    return w.float()


class ChunkedSeparator:
    """Separate a stream of mixture blocks into a stream of output blocks.

    ``push`` any number of (c, t) blocks, then call ``finish`` once; each call returns the
    output samples that are final so far, (n, c, t'), in order. Concatenated, they equal
    the separation of the concatenated input (docs/method.md §7 chunking), whatever the block sizes.

    Memory: the input kept is at most one batch of chunks plus a hop; the output kept is
    the not-yet-final overlap. Nothing grows with the song's length.

    The model runs as :func:`mixitcli.inference.prepare` makes it run (call ``model.eval()``
    first): under ``no_grad`` on ``device`` (default: where its parameters are) at
    ``precision``; a :class:`mixitcli.inference.Network` (prepared once for many files, or the
    ONNX backend's) is used as it is. Outputs are float32 on the CPU.
    """

    def __init__(
        self,
        model: torch.nn.Module | Network,
        *,
        options: ChunkOptions = ChunkOptions(),
        device: torch.device | str | None = None,
        precision: str | None = None,
        bf16: bool = False,
    ):
        self.network = prepare(model, device=device, precision=precision or ("bf16" if bf16 else "fp32"))
        self.options = options
        self.device = self.network.device
        rate = self.network.config.sample_rate
        self.chunk = int(round(options.chunk_s * rate))  # T
        self.hop = int(round(options.hop_s * rate))  # H
        if self.chunk < self.network.min_samples:
            raise SeparationError(
                f"chunk of {options.chunk_s} s is shorter than the model's minimum input ({self.network.min_samples} samples)"
            )
        self.n_outputs = self.network.config.n_outputs
        self.n_channels = self.network.config.n_channels
        self.window = overlap_window(options.window, self.chunk)  # (T,)
        self.batch_size = options.batch_size or (1 if self.device.type == "cpu" else 4)
        self._buf = torch.zeros(self.n_channels, 0)  # input samples from _buf_start on
        self._buf_start = 0
        self._n_in = 0
        self._scheduled = 0  # chunks cut from the input so far
        self._done = 0  # chunks whose output is in the accumulator
        self._pending: list[tuple[int, torch.Tensor, int]] = []  # (start, chunk (c, T), valid samples)
        self._acc = torch.zeros(self.n_outputs, self.n_channels, 0)  # weighted sum from _out_pos on
        self._wsum = torch.zeros(0)
        self._out_pos = 0  # samples returned so far
        self._finished = False

    # -- public ------------------------------------------------------------------------
    def push(self, block: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Add input (c, t); return the output samples that became final, (n, c, t')."""
        if self._finished:
            raise SeparationError("push() after finish(): make a new ChunkedSeparator per input")
        block = torch.as_tensor(block, dtype=torch.float32).cpu()
        if block.ndim != 2 or block.shape[0] != self.n_channels:
            raise ValueError(f"expected a block shaped ({self.n_channels} channels, samples), got {tuple(block.shape)}")
        self._buf = torch.cat([self._buf, block], dim=1)
        self._n_in += block.shape[1]
        while self._scheduled * self.hop + self.chunk <= self._n_in:  # a whole chunk is there
            self._schedule()
        self._drop_consumed_input()
        return self._emit(self._done * self.hop)

    def finish(self) -> torch.Tensor:
        """End of input: separate what is left and return the rest of the output (n, c, t')."""
        if self._finished:
            raise SeparationError("finish() called twice")
        self._finished = True
        length = self._n_in
        if length == 0:
            return torch.zeros(self.n_outputs, self.n_channels, 0)
        if self._scheduled == 0 and length < self.chunk:
            # Shorter than one chunk: one pass over the whole input, unpadded (as css does).
            x = self._buf[:, :length]
            pad = max(0, self.network.min_samples - length)  # too short for the STFT: pad, then cut
            y = self._forward_or_zeros(torch.nn.functional.pad(x, (0, pad))[None])[0, ..., :length]
            self._accumulate(0, y, torch.ones(length))
            return self._emit(length)
        overlap = self.chunk - self.hop
        while self._scheduled * self.hop + overlap < length:  # css: ceil((L - overlap) / hop) chunks
            self._schedule()
        self._run()
        return self._emit(length)

    # -- internals -----------------------------------------------------------------------
    def _schedule(self) -> None:
        start = self._scheduled * self.hop
        seg = self._buf[:, start - self._buf_start : start - self._buf_start + self.chunk]  # (c, <= T)
        valid = seg.shape[1]
        if valid < self.chunk:  # the last chunk: zero-padded to T
            seg = torch.nn.functional.pad(seg, (0, self.chunk - valid))
        self._pending.append((start, seg, valid))
        self._scheduled += 1
        if len(self._pending) >= self.batch_size:
            self._run()

    def _drop_consumed_input(self) -> None:
        keep_from = self._scheduled * self.hop  # no later chunk starts before this sample
        drop = min(keep_from - self._buf_start, self._buf.shape[1])
        if drop > 0:
            self._buf = self._buf[:, drop:].clone()
            self._buf_start += drop

    def _run(self) -> None:
        if not self._pending:
            return
        chunks = torch.stack([seg for _, seg, _ in self._pending])  # (B, c, T)
        out = self._forward_or_zeros(chunks)  # (B, n, c, T)
        for (start, _, valid), y in zip(self._pending, out):
            self._accumulate(start, y[..., :valid], self.window[:valid])
        self._done += len(self._pending)
        self._pending.clear()

    def _forward_or_zeros(self, chunks: torch.Tensor) -> torch.Tensor:
        """(B, c, T) -> (B, n, c, T); all-zero chunks give zeros without the model."""
        b, c, t = chunks.shape
        active = chunks.abs().flatten(1).sum(1) > 0  # (B,)
        if not active.any():
            return torch.zeros(b, self.n_outputs, c, t)
        y = self.network(chunks if active.all() else chunks[active])
        if active.all():
            return y
        out = torch.zeros(b, self.n_outputs, c, t)
        out[active] = y
        return out

    def _accumulate(self, start: int, y: torch.Tensor, weight: torch.Tensor) -> None:
        """Add weight * y (n, c, v) at absolute sample ``start``."""
        offset, v = start - self._out_pos, y.shape[-1]
        grow = offset + v - self._wsum.shape[0]
        if grow > 0:
            self._acc = torch.cat([self._acc, torch.zeros(self.n_outputs, self.n_channels, grow)], dim=-1)
            self._wsum = torch.cat([self._wsum, torch.zeros(grow)])
        self._acc[..., offset : offset + v].addcmul_(y, weight)  # in place: no song-sized temporaries
        self._wsum[offset : offset + v] += weight

    def _emit(self, upto: int) -> torch.Tensor:
        """Return output samples [_out_pos, upto) (weighted mean) and forget them."""
        k = upto - self._out_pos
        out = self._acc[..., :k] / self._wsum[:k]  # (n, c, k)
        self._acc = self._acc[..., k:].clone()
        self._wsum = self._wsum[k:].clone()
        self._out_pos = upto
        return out


def separate_array(
    model: torch.nn.Module,
    mixture: torch.Tensor | np.ndarray,
    *,
    chunk_s: float = 12.0,
    hop_s: float = 6.0,
    window: str = "equal",
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    precision: str | None = None,
    bf16: bool = False,
) -> torch.Tensor:
    """Separate a whole song held in memory, chunk by chunk (docs/method.md §7).

    Args:
        model: a BS-Locoformer in eval mode (``model(x (b, c, t)) -> (b, n, c, t)``), or a
            :class:`mixitcli.inference.Network`.
        mixture: (c, t) waveform at ``model.config.sample_rate``, any length.
        chunk_s, hop_s, window, batch_size: see :class:`ChunkOptions` (defaults: the paper's).
        device: where the model runs (default: where its parameters are).
        precision: "fp32" (default: the model as it is; an autocast the caller entered
            applies), "bf16" or "auto" (:mod:`mixitcli.inference`).
        bf16: the same as ``precision="bf16"`` (the earlier name).

    Returns:
        (n, c, t) float32 CPU tensor, outputs in the order of ``model.stems``.

    Raises:
        ValueError: ``mixture`` is not (model channels, samples).
        SeparationError: invalid chunk options.
    """
    mixture = torch.as_tensor(mixture, dtype=torch.float32)
    if mixture.ndim != 2:
        raise ValueError(f"expected a mixture shaped (channels, samples), got {tuple(mixture.shape)}")
    options = ChunkOptions(chunk_s=chunk_s, hop_s=hop_s, window=window, batch_size=batch_size)
    separator = ChunkedSeparator(model, options=options, device=device, precision=precision, bf16=bf16)
    return torch.cat([separator.push(mixture), separator.finish()], dim=-1)


@dataclass(frozen=True)
class FileResult:
    """One separated file.

    Attributes:
        input: the mixture file.
        outputs: stem name -> written file.
        seconds: the input's duration in seconds.
        wall_s: wall-clock seconds spent (decode, separate, encode).
        nonfinite: non-finite input samples (NaN, infinity) that were replaced by 0.
        network: how the model ran (:meth:`mixitcli.inference.Network.describe`).
    """

    input: Path
    outputs: dict[str, Path]
    seconds: float
    wall_s: float
    nonfinite: int = 0
    network: str = ""

    def warnings(self) -> list[str]:
        """What the user should be told about this file (empty when all went as expected)."""
        return [audio.nonfinite_message(self.input, self.nonfinite)] if self.nonfinite else []

    @property
    def rtf(self) -> float:
        """Real-time factor: processing seconds per second of audio (below 1: faster than real time)."""
        return self.wall_s / self.seconds if self.seconds > 0 else float("nan")


class _Resampler:
    """soxr's streaming resampler for (c, t) blocks; a no-op at equal rates."""

    def __init__(self, rate_in: int, rate_out: int, channels: int):
        import soxr

        self.channels = channels
        self.stream = (
            None
            if rate_in == rate_out
            else soxr.ResampleStream(rate_in, rate_out, channels, dtype="float32", quality="HQ")
        )

    def __call__(self, block: np.ndarray, *, last: bool = False) -> np.ndarray:
        if self.stream is None:
            return block
        out = self.stream.resample_chunk(np.ascontiguousarray(block.T), last=last)  # (t, c) -> (t', c)
        return np.ascontiguousarray(np.asarray(out, dtype=np.float32).reshape(-1, self.channels).T)


def resampled_length(frames: int, rate_in: int, rate_out: int) -> int:
    """Samples after resampling ``frames`` from ``rate_in`` to ``rate_out`` (soxr's rounding)."""
    return frames if rate_in == rate_out else int(math.floor(frames * rate_out / rate_in + 0.5))


HOLD_BACK = 64
"""Output samples kept back until the input's length is known, so a file never gets samples
beyond its exact length (the resamplers' rounding can differ from it by a sample)."""


def separate_file(
    model: torch.nn.Module,
    source: str | Path,
    outputs: Mapping[str, str | Path],
    *,
    options: ChunkOptions = ChunkOptions(),
    device: torch.device | str | None = None,
    precision: str | None = None,
    bf16: bool = False,
    sample_rate: int | None = None,
    bits: str = "24",
    on_progress: Callable[[float], None] | None = None,
) -> FileResult:
    """Separate one file, streaming: read a block, separate what is ready, write it.

    Any sample rate is resampled to the model's and the stems back to ``sample_rate``
    (default: the input's). Mono input is duplicated to stereo for the model and the stems
    are written mono (mean of the two output channels). Each stem file has exactly the
    input's duration; it is written under a temporary name and renamed when complete.
    Non-finite input samples (NaN, infinity) are separated as 0 and counted in the result.

    Args:
        model: a BS-Locoformer in eval mode, or a :class:`mixitcli.inference.Network` (prepared
            once for many files).
        source: the mixture file (any format :func:`mixitcli.audio.read_blocks` decodes).
        outputs: stem name (from ``model.stems``, or ``no_STEM``: the sum of the other outputs) -> file
            to write; the suffix sets the format.
        options: chunking (:class:`ChunkOptions`).
        device, precision, bf16: as :func:`separate_array`.
        sample_rate: rate of the written stems in Hz (None: the input's).
        bits: "16", "24" or "float" (see :class:`mixitcli.audio.BlockWriter`).
        on_progress: called with the seconds of input separated so far.

    Returns:
        :class:`FileResult`.

    Raises:
        AudioError: the input cannot be decoded, has more than 2 channels, or an output
            cannot be written.
        SeparationError: an output path is the input itself, or an unknown stem is asked for.
    """
    started = time.perf_counter()
    source = Path(source)
    outputs = {stem: Path(p) for stem, p in outputs.items()}
    groups = output_groups(tuple(model.stems), list(outputs))  # output indices summed into each file
    for path in outputs.values():
        if path.exists() and source.exists() and path.resolve() == source.resolve():
            raise SeparationError(f"{path}: refusing to overwrite the input file with a stem")
    meta = audio.info(source)
    if meta.channels not in (1, 2):
        raise audio.AudioError(f"{source}: {meta.channels} channels; mixit separates mono or stereo audio")
    mono = meta.channels == 1
    model_rate = model.config.sample_rate
    out_rate = sample_rate or meta.sample_rate
    separator = ChunkedSeparator(model, options=options, device=device, precision=precision, bf16=bf16)
    to_model = _Resampler(meta.sample_rate, model_rate, meta.channels)
    from_model = _Resampler(model_rate, out_rate, len(groups) * meta.channels)
    held = np.zeros((len(groups) * meta.channels, 0), dtype=np.float32)  # (k*c_out, <= HOLD_BACK)
    n_in = 0
    separated = 0

    with ExitStack() as stack:
        writers = [
            stack.enter_context(audio.BlockWriter(path, out_rate, meta.channels, bits=bits))
            for path in outputs.values()
        ]

        def write(y: torch.Tensor, last: bool = False) -> None:
            nonlocal held, separated
            separated += y.shape[-1]
            y = torch.stack([y[g].sum(0) for g in groups])  # (n, 2, t) -> (k, 2, t): a stem, or the others' sum
            if mono:
                y = y.mean(dim=1, keepdim=True)  # (k, 1, t)
            stems = from_model(y.reshape(y.shape[0] * y.shape[1], y.shape[-1]).numpy(), last=last)  # (k*c_out, t')
            held = np.concatenate([held, stems], axis=1)
            cut = held.shape[1] if last else max(0, held.shape[1] - HOLD_BACK)
            for i, writer in enumerate(writers):
                writer.write(held[i * meta.channels : (i + 1) * meta.channels, :cut])
            held = held[:, cut:]
            if on_progress is not None:
                on_progress(separated / model_rate)

        nonfinite = audio.NonFiniteCount()
        for block in audio.read_blocks(source, max(1, int(options.hop_s * meta.sample_rate)), on_nonfinite=nonfinite):
            n_in += block.shape[1]
            x = to_model(block)
            write(separator.push(np.repeat(x, 2, axis=0) if mono else x))
        if n_in == 0:
            raise audio.AudioError(f"{source}: no audio samples")
        x = to_model(np.zeros((meta.channels, 0), dtype=np.float32), last=True)
        y = separator.push(np.repeat(x, 2, axis=0) if mono else x)
        for writer in writers:  # now the exact length is known
            writer.limit = resampled_length(n_in, meta.sample_rate, out_rate)
        write(torch.cat([y, separator.finish()], dim=-1), last=True)
    return FileResult(
        input=source,
        outputs=outputs,
        seconds=n_in / meta.sample_rate,
        wall_s=time.perf_counter() - started,
        nonfinite=nonfinite.samples,
        network=separator.network.describe(),
    )
