"""How separation runs the model: its precision, and the network prepared once for it (issue 23).

Precisions (``mixit separate --precision``):

- ``fp32``: the model as it is, ``model(x)`` under ``no_grad`` (an autocast the caller entered
  still applies): the output of every earlier version, bit for bit.
- ``bf16``: on CUDA and MPS, bfloat16 autocast, what ``--bf16`` always did. On the CPU,
  :class:`CpuBfloat16`: a copy of the model prepared once per separation, not per chunk.
- ``auto``: bf16 on a CPU that computes bfloat16 natively (AVX512-BF16 or AMX,
  :func:`native_bf16`), float32 everywhere else, CUDA included.

A :class:`Network` is what :class:`mixitcli.separate.ChunkedSeparator` calls: (B, c, T) float32
chunks on the CPU in, (B, n, c, T) float32 outputs on the CPU out. :func:`prepare` makes one
from a model; :class:`OnnxNetwork` runs an exported graph with onnxruntime (``--backend``).

Where the time of a CPU separation goes (docs/benchmarks.md has the profile and the paired
figures): decoding, the STFT, the iSTFT with the overlap-add and encoding take under 1.5 %;
the network takes the rest, in float32 about 60 % of it in the FFN convolutions and 13 % in
attention. With bfloat16 weights the convolutions run about twice as fast on AVX512-BF16,
except ``ConvTranspose1d``, which oneDNN barely speeds up: it is replaced by the equal
``Conv1d`` (:func:`transposed_as_conv`), 2.2-2.4x faster. Autocast alone (``--bf16`` before issue 23)
kept the slow transposed convolutions, cast every weight again for every chunk and carried the
residual stream in bfloat16; here it stays float32 (42 dB instead of 37.5 dB of SNR against
float32 for the medium preset, at no measurable cost). The medium model's chunk takes 1.65x
less time than in float32 with 2 threads, 1.9-2x with one.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")
"""Values of ``--precision``."""

CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags (Linux /proc/cpuinfo names) of native bfloat16 products."""


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor listed in a /proc/cpuinfo text (x86: "flags",
    ARM: "Features"); empty when there are none."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 products natively: AVX512-BF16 or AMX.

    torch's own query (what its oneDNN kernels go by) where this torch has it, else the flags
    of /proc/cpuinfo; False where neither answers (then ``auto`` means float32: without native
    support bfloat16 is emulated and slower than float32).
    """
    queries = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(q) for q in queries):
        try:
            return any(bool(q()) for q in queries)
        except RuntimeError:
            pass
    try:
        return bool(cpu_flags(CPUINFO.read_text()) & set(NATIVE_BF16_FLAGS))
    except OSError:
        return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """ "fp32" or "bf16" for ``precision`` ("auto", "fp32" or "bf16") on ``device``.

    Raises:
        ValueError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cpu" and native_bf16() else "fp32"


class Network:
    """A model ready to separate chunks: ``network(chunks)`` maps (B, c, T) float32 CPU chunks to
    their (B, n, c, T) float32 CPU outputs.

    ``config``, ``stems`` and ``min_samples`` are the model's; ``device``, ``precision`` ("fp32"
    or "bf16") and ``backend`` say how it runs. This class runs the model as it is: float32, or
    bfloat16 autocast off the CPU.
    """

    backend = "torch"

    def __init__(self, model: nn.Module, device: torch.device, precision: str):
        self.model = model
        self.config = model.config
        self.stems = model.stems
        self.min_samples = model.min_samples
        self.device = device
        self.precision = precision

    def __call__(self, chunks: torch.Tensor) -> torch.Tensor:
        # Without bf16 the caller's autocast state (e.g. training validation under bf16) applies.
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16" else nullcontext()
        with torch.no_grad(), amp:
            y = self.model(chunks.to(self.device))
        return y.float().cpu()

    def describe(self) -> str:
        """Device, precision and backend, for progress displays and the summary line."""
        dtype = (
            "float32" if self.precision == "fp32" else "bfloat16" if self.device.type == "cpu" else "bfloat16 autocast"
        )
        return f"{self.device}, {dtype}, {self.backend}"


def transposed_as_conv(layer: nn.ConvTranspose1d) -> nn.Conv1d:
    """The ``Conv1d`` that computes what a stride-1 ``ConvTranspose1d`` computes.

    With kernel K and padding p, y[t] = sum_j x[t + p - j] W[:, :, j]: a convolution of the input
    padded by K - 1 - p with the kernel reversed and its two channel axes swapped.

    Raises:
        ValueError: a stride, dilation, group count or output padding other than 1, 1, 1, 0, or
            padding above K - 1.
    """
    (k,), (p,) = layer.kernel_size, layer.padding
    if layer.stride != (1,) or layer.dilation != (1,) or layer.groups != 1 or layer.output_padding != (0,) or p > k - 1:
        raise ValueError(f"only a stride-1 ConvTranspose1d with padding <= kernel - 1 is a Conv1d: {layer}")
    conv = nn.Conv1d(
        layer.in_channels,
        layer.out_channels,
        k,
        padding=k - 1 - p,
        bias=layer.bias is not None,
        dtype=layer.weight.dtype,
        device=layer.weight.device,
    )
    with torch.no_grad():
        conv.weight.copy_(layer.weight.transpose(0, 1).flip(-1))  # (in, out, K) -> (out, in, K) reversed
        if layer.bias is not None:
            conv.bias.copy_(layer.bias)
    return conv


class ChannelsLastConv(nn.Module):
    """A ``Conv1d`` run as a 2-D convolution on channels-last data (bfloat16 inference on CPU).

    ConvSwiGLU's input, (N, s, d) seen as (N, d, s), is channels-last already. oneDNN's
    bfloat16 convolution keeps that layout through the FFN in this form, where ``conv1d``
    returns channels-first outputs that the residual add then reads across strides: the FFN
    with its residual add takes 12 % less time (medium preset, AVX512-BF16).
    """

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        (self.padding,) = conv.padding
        weight = conv.weight.detach().unsqueeze(2)  # (out, in, 1, K)
        self.weight = nn.Parameter(weight.contiguous(memory_format=torch.channels_last), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, s) -> (N, C', s'), both with channels varying fastest in memory."""
        return torch.nn.functional.conv2d(x.unsqueeze(2), self.weight, self.bias, padding=(0, self.padding)).squeeze(2)


class UnitRMSGroupNorm(nn.Module):
    """:class:`mixitcli.model.bslocoformer.RMSGroupNorm` without its gain, which the next layer's
    weights carry (:func:`fold_gain`): x / (rms + eps), computed in float32 and written in bfloat16
    (one pass instead of a division, a product and autocast's cast)."""

    def __init__(self, groups: int, eps: float):
        super().__init__()
        self.groups = groups
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.float().view(*shape[:-1], self.groups, shape[-1] // self.groups)  # (..., G, d/G)
        rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * (x.shape[-1] ** -0.5)
        out = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device)
        return torch.div(x, rms + self.eps, out=out).view(shape)


def fold_gain(norm: nn.Module, layer: nn.Module) -> UnitRMSGroupNorm:
    """Move an RMSGroupNorm's gain gamma into the ``Linear`` or ``Conv1d`` that reads its output:
    W (x * gamma) = (W diag(gamma)) x. Returns the norm without gain."""
    with torch.no_grad():
        gamma = norm.gamma.detach().float()  # (d,)
        layer.weight.mul_(gamma.view(1, -1, *[1] * (layer.weight.dim() - 2)).to(layer.weight.dtype))
    return UnitRMSGroupNorm(norm.groups, norm.eps)


class CpuBfloat16(Network):
    """bfloat16 on the CPU, on a copy of the model prepared once (the model itself is left as it is).

    - Every linear and convolution weight of the encoder, the separator and the decoder's last
      layers is cast to bfloat16 once; norms stay float32, and the decoder's first layers are
      folded once, in float32 (:meth:`mixitcli.model.bslocoformer.MaskDecoder.hidden_affine`).
    - Transposed convolutions become convolutions (:func:`transposed_as_conv`), and the FFN's
      convolutions run channels-last (:class:`ChannelsLastConv`).
    - The norms' gains move into the layers after them (:func:`fold_gain`).
    - The STFT, the iSTFT, the norms, the masks' product with the spectrum and the residual
      stream between the blocks stay float32; products and attention (SDPA) run in bfloat16
      autocast.
    """

    def __init__(self, model: nn.Module):
        from mixitcli.model.bslocoformer import ConvSwiGLU, LocoformerPath, PerOutputLinear

        net = copy.deepcopy(model).cpu().eval()
        for path in net.modules():
            if isinstance(path, LocoformerPath):
                path.norm_pre = fold_gain(path.norm_pre, path.ffn_pre.conv)
                path.norm_attn = fold_gain(path.norm_attn, path.attn.qkv)
                path.norm_post = fold_gain(path.norm_post, path.ffn_post.conv)
        cast = [*net.encoder.projs, *net.separator.modules(), *(head.fc3 for head in net.decoder.heads)]
        for module in cast:
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.ConvTranspose1d, PerOutputLinear)):
                module.to(torch.bfloat16)
        for ffn in net.modules():
            if isinstance(ffn, ConvSwiGLU) and ffn.stride == 1:
                ffn.conv = ChannelsLastConv(ffn.conv)
                ffn.deconv = ChannelsLastConv(transposed_as_conv(ffn.deconv))
        with torch.no_grad():
            self.affine = net.decoder.hidden_affine()  # the decoder's folded first layers, once
        super().__init__(net, torch.device("cpu"), "bf16")

    def __call__(self, chunks: torch.Tensor) -> torch.Tensor:
        net = self.model
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            spec, scale = net.analyse(chunks)  # float32: the STFT runs outside autocast
            x = net.encoder(spec / scale).float()  # (b, l, k, d), the residual stream in float32
            for block in net.separator:
                x = block(x)
            spec = net.decoder(x, spec, affine=self.affine)  # (b, n, c, f, l) complex64
        return net.synthesise(spec, chunks.shape[-1])


class OnnxNetwork(Network):
    """An exported graph run by onnxruntime (:class:`mixitcli.onnxrun.OnnxModel`), on the CPU in float32.

    Raises:
        mixitcli.onnxrun.OnnxError: onnxruntime is missing, or the file is no mixit graph.
    """

    backend = "onnxruntime"

    def __init__(self, path: str | Path, *, threads: int | None = None):
        from mixitcli.onnxrun import OnnxModel

        super().__init__(OnnxModel(path, threads=threads), torch.device("cpu"), "fp32")

    def __call__(self, chunks: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.model(chunks.numpy()))


def prepare(
    model: nn.Module | Network, *, device: torch.device | str | None = None, precision: str = "fp32"
) -> Network:
    """The :class:`Network` that runs ``model`` (in eval mode) on ``device`` at ``precision``.

    Args:
        model: a BS-Locoformer, or a Network (returned as it is).
        device: where it runs (default: where its parameters are).
        precision: "auto", "fp32" or "bf16" (:func:`resolve_precision`).

    Raises:
        ValueError: an unknown precision.
    """
    if isinstance(model, Network):
        return model
    device = torch.device(device) if device is not None else next(model.parameters()).device
    precision = resolve_precision(precision, device)
    if precision == "bf16" and device.type == "cpu":
        return CpuBfloat16(model)
    return Network(model, device, precision)
