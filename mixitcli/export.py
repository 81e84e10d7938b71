"""`mixit export --onnx`: a BS-Locoformer as an ONNX graph that onnxruntime runs without torch.

The graph is the network between the STFT and the iSTFT (:meth:`BSLocoformer.masked`): inputs
``spec_re`` and ``spec_im``, the mixture's spectrum as real planes (b, c, f, l), and ``scale``
(b, c, 1, 1), its per-channel STFT RMS; outputs ``out_re`` and ``out_im``, the outputs' masked
spectra (b, n, c, f, l). Batch and frames are dynamic axes. The STFT and iSTFT stay outside, in
:mod:`mixitcli.onnxrun` (numpy): complex STFTs are what keeps other separation models from
exporting. The file's metadata names the stems and the STFT settings.

The graph computes the same function as the model, composed from standard operators
(:class:`SpectralGraph`: the decoder's last layers through
:func:`mixitcli.model.masking.masked_planes` instead of its autograd Function, attention through
SDPA in float32), and :func:`export_onnx` checks it: onnxruntime's separation of a few seconds
of noise against torch's, to :data:`TOLERANCE` (relative).

It uses torch's TorchScript-based exporter (``dynamo=False``): on 2 CPU cores the
``torch.export``-based one took 5 minutes for the tiny preset, this one 4 seconds.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mixitcli.model.masking import equal_width_runs, masked_planes, stacked_last_layers
from mixitcli.onnxrun import FORMAT, INSTALL_HINT, OnnxError, OnnxModel

TOLERANCE = 1e-4
"""Largest relative error, ||onnxruntime - torch|| / ||torch|| per output, that an export may have."""

OPSET = 17


class ExportError(Exception):
    """The model cannot be exported, or the export does not compute what the model computes."""


class SpectralGraph(nn.Module):
    """The exported function: (spec_re, spec_im, scale) -> (out_re, out_im), see the module docstring.

    The model's per-band layers (encoder norms and projections, the decoder's last layers) are
    stacked once per run of bands of one width (:func:`mixitcli.model.masking.equal_width_runs`),
    so the graph has one product per run instead of one per band: 7 instead of 62, a graph a
    tenth the size, exported and loaded that much faster. The decoder's first layers are folded
    once (:meth:`mixitcli.model.bslocoformer.MaskDecoder.hidden_affine`). All are constants of
    the graph.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        enc = model.encoder
        self.runs = equal_width_runs(enc.bands)
        self.eps = [norm.eps for norm in enc.norms]
        with torch.no_grad():
            for i, (a, g) in enumerate(self.runs):
                self.register_buffer(
                    f"norm_weight_{i}", torch.stack([n.weight for n in enc.norms[a : a + g]])
                )  # (g, 2cw)
                self.register_buffer(f"norm_bias_{i}", torch.stack([n.bias for n in enc.norms[a : a + g]]))
                self.register_buffer(
                    f"proj_weight_{i}", torch.stack([p.weight for p in enc.projs[a : a + g]])
                )  # (g, d, 2cw)
                self.register_buffer(f"proj_bias_{i}", torch.stack([p.bias for p in enc.projs[a : a + g]]))  # (g, d)
            heads = [head.fc3 for head in model.decoder.heads]
            for i, (weight, bias) in enumerate(stacked_last_layers([p.weight for p in heads], [p.bias for p in heads])):
                self.register_buffer(f"last_weight_{i}", weight)  # (g, n, 4cw, 4d)
                self.register_buffer(f"last_bias_{i}", bias)
            weight, bias = model.decoder.hidden_affine()
        self.register_buffer("affine_weight", weight)  # (k, 4d, d)
        self.register_buffer("affine_bias", bias)

    def encode(self, planes: torch.Tensor) -> torch.Tensor:
        """:meth:`mixitcli.model.bslocoformer.BandSplitEncoder.from_planes`, a product per run of bands:
        (b, 2c, f, l) -> (b, l, k, d)."""
        b, c2, _, l = planes.shape
        out, start = [], 0
        for i, (a, g) in enumerate(self.runs):
            w = self.model.encoder.bands[a]
            x = planes[:, :, start : start + g * w].reshape(b, c2, g, w, l).permute(0, 4, 2, 3, 1)  # (b, l, g, w, 2c)
            x = x.reshape(b, l, g, w * c2)  # each band's features bin-major, as the encoder orders them
            var, mean = torch.var_mean(x, dim=(1, 3), keepdim=True, correction=0)  # per item and band
            x = (x - mean) * torch.rsqrt(var + self.eps[a]) * getattr(self, f"norm_weight_{i}") + getattr(
                self, f"norm_bias_{i}"
            )
            x = torch.matmul(
                x.transpose(1, 2), getattr(self, f"proj_weight_{i}").transpose(1, 2).unsqueeze(0)
            )  # (b, g, l, d)
            out.append(x.transpose(1, 2) + getattr(self, f"proj_bias_{i}"))  # (b, l, g, d)
            start += g * w
        return torch.cat(out, dim=2)

    def forward(self, spec_re: torch.Tensor, spec_im: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        x = self.encode(torch.cat((spec_re, spec_im), dim=1) / torch.cat((scale, scale), dim=1))  # (b, l, k, d)
        for block in self.model.separator:
            x = block(x)
        hidden = self.model.decoder.hidden(x, (self.affine_weight, self.affine_bias))  # (k, b*l, 4d)
        layers = [(getattr(self, f"last_weight_{i}"), getattr(self, f"last_bias_{i}")) for i in range(len(self.runs))]
        return masked_planes(hidden, spec_re, spec_im, layers, n_channels=self.model.config.n_channels)


@dataclass(frozen=True)
class ExportResult:
    """An exported file: where, its size, how long the export took, and the check's relative error."""

    path: Path
    bytes: int
    seconds: float
    error: float
    check_seconds: float


def metadata(model: nn.Module) -> dict[str, str]:
    """The metadata :class:`mixitcli.onnxrun.OnnxModel` reads."""
    cfg = model.config
    return {
        "format": FORMAT,
        "stems": ",".join(model.stems),
        "sample_rate": str(cfg.sample_rate),
        "n_fft": str(cfg.n_fft),
        "hop_length": str(cfg.hop_length),
        "n_channels": str(cfg.n_channels),
        "n_outputs": str(cfg.n_outputs),
    }


def check(path: str | Path, model: nn.Module, *, seconds: float = 2.0, seed: int = 0) -> float:
    """Separate ``seconds`` of seeded noise with onnxruntime (:class:`OnnxModel`) and with torch
    (the model in float32); return the largest relative error over the outputs.

    Raises:
        OnnxError: onnxruntime is missing or cannot load the file.
    """
    g = torch.Generator().manual_seed(seed)
    wav = 0.1 * torch.randn(1, model.config.n_channels, int(seconds * model.config.sample_rate), generator=g)
    with torch.no_grad():
        ref = model(wav)[0].numpy()  # (n, c, t)
    out = OnnxModel(path)(wav.numpy())[0]
    errors = np.linalg.norm((out - ref).reshape(len(ref), -1), axis=1) / np.linalg.norm(
        ref.reshape(len(ref), -1), axis=1
    )
    return float(errors.max())


def require() -> None:
    """Raise :class:`ExportError` (with the command that installs them) when onnx or onnxruntime is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ExportError(
            f"exporting needs the onnx and onnxruntime packages ({e.name} is missing): {INSTALL_HINT}"
        ) from e


def export_onnx(model: nn.Module, path: str | Path, *, check_seconds: float = 2.0) -> ExportResult:
    """Write ``model`` as an ONNX graph to ``path`` (one file; replaced only when complete), then check it.

    Args:
        model: a BS-Locoformer on the CPU in float32 (any preset and output count); set to eval mode.
        path: the .onnx file to write.
        check_seconds: seconds of noise for the check (:func:`check`).

    Returns:
        :class:`ExportResult`.

    Raises:
        ExportError: onnx or onnxruntime is not installed (:func:`require`), or onnxruntime's output is off
            torch's by more than :data:`TOLERANCE` (the file is not written then).
    """
    require()
    import onnx

    path = Path(path)
    model.eval()
    started = time.perf_counter()
    graph = SpectralGraph(model).eval()
    b, c, f, l = 1, model.config.n_channels, model.config.n_fft // 2 + 1, 16  # an example; batch and frames are dynamic
    planes = torch.randn(b, c, f, l)
    dynamic = {
        "spec_re": {0: "batch", 3: "frames"},
        "spec_im": {0: "batch", 3: "frames"},
        "scale": {0: "batch"},
        "out_re": {0: "batch", 4: "frames"},
        "out_im": {0: "batch", 4: "frames"},
    }
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(
                graph,
                (planes, planes, torch.ones(b, c, 1, 1)),
                str(partial),
                dynamo=False,
                opset_version=OPSET,
                do_constant_folding=False,  # onnxruntime folds constants when it loads the graph
                input_names=["spec_re", "spec_im", "scale"],
                output_names=["out_re", "out_im"],
                dynamic_axes=dynamic,
            )
        proto = onnx.load(str(partial))
        for key, value in metadata(model).items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(partial))
        exported = time.perf_counter() - started
        try:
            error = check(partial, model, seconds=check_seconds)
        except OnnxError as e:
            raise ExportError(f"{e} (the export is checked with it)") from e
        if not error <= TOLERANCE:
            raise ExportError(
                f"onnxruntime's output is off torch's by {error:.2e} (relative), more than {TOLERANCE:g}: "
                f"this torch ({torch.__version__}) exports the model wrongly; please report it"
            )
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return ExportResult(
        path=path, bytes=path.stat().st_size, seconds=exported, error=error, check_seconds=check_seconds
    )
