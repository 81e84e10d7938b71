"""Run an exported BS-Locoformer (`mixit export --onnx`) with onnxruntime and numpy, without torch.

The ONNX graph (:mod:`mixitcli.export`) maps the mixture's spectrum, as real and imaginary
planes, and its per-channel scale to the outputs' masked spectra. The STFT, the scale and the
iSTFT are computed here with numpy, as the model computes them with torch (docs/method.md §3):
periodic Hann window, centred frames with reflected edges, l = t // hop frames kept, the scale
from all frames. So a model can be served where torch is not: this module imports numpy and,
when a model is loaded, onnxruntime (``pip install 'mixit-mss[onnx]'``), nothing else.

Shape letters (docs/method.md §3): b batch, n outputs, c channels, t samples, f bins, l frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "mixit-onnx-1"
"""The ``format`` entry of a mixit ONNX file's metadata."""

INSTALL_HINT = "pip install 'mixit-mss[onnx]'"


class OnnxError(Exception):
    """An ONNX model cannot be run (onnxruntime is missing, or the file is not a mixit graph)."""


@dataclass(frozen=True)
class GraphConfig:
    """What an exported graph says about the model (its metadata), the attributes of
    :class:`mixitcli.model.ModelConfig` that separation reads."""

    sample_rate: int
    n_fft: int
    hop_length: int
    n_channels: int
    n_outputs: int


def hann(n_fft: int) -> np.ndarray:
    """The periodic Hann window (``torch.hann_window(n_fft, periodic=True)``), float32."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def analyse(wav: np.ndarray, n_fft: int, hop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """STFT planes and per-channel scale, as :meth:`mixitcli.model.bslocoformer.BSLocoformer.analyse`.

    Args:
        wav: (b, c, t) float32, t > n_fft // 2.

    Returns:
        re, im: (b, c, f, t // hop) float32 planes; scale: (b, c, 1, 1) float32, the square root
        of the mean |X|^2 (each clipped at 1e-15) over bins and all t // hop + 1 frames.
    """
    b, c, t = wav.shape
    x = np.pad(wav.reshape(b * c, t).astype(np.float32, copy=False), ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[:, ::hop]  # (b*c, t//hop + 1, n_fft)
    spec = np.fft.rfft(frames * hann(n_fft), axis=-1).astype(np.complex64)  # (b*c, l + 1, f)
    spec = spec.reshape(b, c, *spec.shape[1:]).transpose(0, 1, 3, 2)  # (b, c, f, l + 1)
    power = np.maximum(spec.real**2 + spec.imag**2, np.float32(1e-15))
    scale = np.sqrt(power.mean(axis=(2, 3), keepdims=True, dtype=np.float64)).astype(np.float32)
    spec = spec[..., : t // hop]
    return np.ascontiguousarray(spec.real), np.ascontiguousarray(spec.imag), scale


def synthesise(re: np.ndarray, im: np.ndarray, n_fft: int, hop: int, length: int) -> np.ndarray:
    """Inverse STFT of (..., f, l) planes to (..., length), as ``torch.istft(center=True, length=...)``:
    overlap-add of the windowed frames divided by the summed squared window, the first n_fft // 2
    samples cut, zeros after the last frame."""
    lead, (f, l) = re.shape[:-2], re.shape[-2:]
    spec = (re + 1j * im).reshape(-1, f, l).transpose(0, 2, 1)  # (B, l, f)
    frames = np.fft.irfft(spec, n=n_fft, axis=-1).astype(np.float32) * hann(n_fft)  # (B, l, n_fft)
    total = n_fft + hop * (l - 1)
    out = np.zeros((frames.shape[0], total), dtype=np.float32)
    envelope = np.zeros(total, dtype=np.float32)
    square = hann(n_fft) ** 2
    for i in range(l):
        out[:, i * hop : i * hop + n_fft] += frames[:, i]
        envelope[i * hop : i * hop + n_fft] += square
    start = n_fft // 2
    end = min(start + length, total)
    if envelope[start:end].min(initial=1.0) < 1e-11:
        raise ValueError("the window does not overlap enough for an inverse STFT (NOLA)")
    y = np.zeros((frames.shape[0], length), dtype=np.float32)
    y[:, : end - start] = out[:, start:end] / envelope[start:end]
    return y.reshape(*lead, length)


class OnnxModel:
    """An exported model with onnxruntime: ``model(wav (b, c, t)) -> (b, n, c, t)`` float32 numpy.

    Attributes as a BS-Locoformer's, for separation: ``config`` (:class:`GraphConfig`), ``stems``,
    ``min_samples``.

    Args:
        path: the file `mixit export --onnx` wrote.
        threads: onnxruntime's intra-op threads (None: its default, one per physical core).

    Raises:
        OnnxError: onnxruntime is not installed, or the file cannot be loaded or is no mixit graph.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None):
        try:
            import onnxruntime
        except ImportError as e:
            raise OnnxError(f"the onnxruntime backend needs onnxruntime: {INSTALL_HINT}") from e
        self.path = Path(path)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for missing and bad files
            raise OnnxError(f"{self.path}: onnxruntime cannot load it ({str(e).strip().splitlines()[0]})") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format") != FORMAT:
            raise OnnxError(f"{self.path}: not a graph written by `mixit export --onnx` (no {FORMAT!r} metadata)")
        self.config = GraphConfig(**{key: int(meta[key]) for key in GraphConfig.__dataclass_fields__})
        self.stems = tuple(meta["stems"].split(","))
        self.min_samples = self.config.n_fft // 2 + 1

    def spectra(self, re: np.ndarray, im: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph itself: planes (b, c, f, l) and scale (b, c, 1, 1) -> output planes (b, n, c, f, l)."""
        out_re, out_im = self.session.run(None, {"spec_re": re, "spec_im": im, "scale": scale})
        return out_re, out_im

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        """(b, c, t) float32 waveforms -> (b, n, c, t) float32 output waveforms."""
        cfg = self.config
        if wav.ndim != 3 or wav.shape[1] != cfg.n_channels or wav.shape[-1] < self.min_samples:
            raise ValueError(
                f"expected a waveform shaped (batch, {cfg.n_channels} channels, >= {self.min_samples} samples), "
                f"got {wav.shape}"
            )
        re, im = self.spectra(*analyse(wav, cfg.n_fft, cfg.hop_length))
        return synthesise(re, im, cfg.n_fft, cfg.hop_length, wav.shape[-1])
