"""BS-Locoformer: band-split encoder, TF-Locoformer separator, per-band mask decoder.

docs/method.md §3 describes the data flow; this module computes the same function as the authors'
model (b-sigpro/mixit-mss), which tests/model/test_official.py checks against their outputs.

Shape letters (docs/method.md §3): b batch, n outputs, c audio channels, t samples, f frequency bins,
k bands, l frames, d embedding, h heads, s sequence length, N batch of sequences.
Inside the separator the tensor is kept channel-last as (b, l, k, d).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mixitcli.model.attention import attention
from mixitcli.model.config import ModelConfig, default_stems
from mixitcli.model.dropout import Dropout
from mixitcli.model.masking import masked_spectrum, per_output_affine


class FrameGroupNorm(nn.Module):
    """GroupNorm with one group for channel-last input (b, l, C).

    Statistics over all C channels and all l frames of each batch item, then a per-channel
    affine map: the same function as ``nn.GroupNorm(1, C)`` on (b, C, l). Always float32.
    """

    def __init__(self, channels: int, *, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        var, mean = torch.var_mean(x, dim=(1, 2), keepdim=True, correction=0)  # (b, 1, 1)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class RMSGroupNorm(nn.Module):
    """Per-token RMS normalisation in G groups of the channel axis: y = x / (rms + eps) * gamma.

    eps is added outside the square root (docs/method.md §3.5); no bias. Computed in float32.
    """

    def __init__(self, groups: int, channels: int, *, eps: float = 1e-5):
        super().__init__()
        if channels % groups:
            raise ValueError(f"RMSGroupNorm: {channels} channels do not split into {groups} groups")
        self.groups = groups
        self.gamma = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.float().view(*shape[:-1], self.groups, shape[-1] // self.groups)  # (..., G, d/G)
        rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * (x.shape[-1] ** -0.5)
        return (x / (rms + self.eps)).view(shape) * self.gamma


class ConvSwiGLU(nn.Module):
    """Macaron FFN of TF-Locoformer: Conv1d -> SwiGLU -> ConvTranspose1d along the sequence.

    The official model zero-pads the sequence by (kernel - stride) on both sides and crops
    the transposed convolution's output back to the input length. With stride 1 the same
    function is the convolutions' own padding (no padded copies, no cropping in backward).
    """

    def __init__(self, d_model: int, hidden: int, *, kernel_size: int, stride: int, dropout: float):
        super().__init__()
        self.hidden = hidden
        self.kernel_size = kernel_size
        self.stride = stride
        self.pad = kernel_size - stride
        inner = self.pad if stride == 1 else 0
        self.conv = nn.Conv1d(d_model, 2 * hidden, kernel_size, stride=stride, padding=inner)
        self.deconv = nn.ConvTranspose1d(hidden, d_model, kernel_size, stride=stride, padding=inner)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, s, d) -> (N, s, d)."""
        s = x.shape[1]
        y = x.transpose(1, 2)  # (N, d, s)
        if self.stride != 1:  # the official explicit padding and crop
            padded = math.ceil((s + 2 * self.pad - self.kernel_size) / self.stride) * self.stride + self.kernel_size
            y = F.pad(y, (self.pad, padded - s - self.pad))
        y = self.conv(y)  # (N, 2 hidden, s')
        value, gate = y.chunk(2, dim=1)
        y = self.deconv(self.dropout(value * F.silu(gate)))  # SwiGLU, then (N, d, s'')
        if self.stride != 1:
            y = y[:, :, self.pad : self.pad + s]
        return self.dropout(y.transpose(1, 2))  # (N, s, d)


class SelfAttention(nn.Module):
    """Multi-head self-attention without bias or positional encoding, through SDPA."""

    def __init__(self, d_model: int, attention_dim: int, *, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * attention_dim, bias=False)  # rows q | k | v
        self.out = nn.Linear(attention_dim, d_model, bias=False)
        self.out_dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, s, d) -> (N, s, d)."""
        n, s, _ = x.shape
        # (N, s, 3a) -> (N, s, 3, h, a/h) -> (3, N, h, s, a/h)
        q, k, v = self.qkv(x).view(n, s, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        y = attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)  # (N, h, s, a/h)
        y = y.transpose(1, 2).reshape(n, s, -1)  # (N, h, s, a/h) -> (N, s, a)
        return self.out_dropout(self.out(y))


class LocoformerPath(nn.Module):
    """One path of a TF-Locoformer block (along bands or along frames), macaron style:

    x += FFN_pre(Norm(x)); x += MHSA(Norm(x)); x += FFN_post(Norm(x)).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        ffn = dict(kernel_size=cfg.kernel_size, stride=cfg.stride, dropout=cfg.dropout)
        self.norm_pre = RMSGroupNorm(cfg.n_groups, d, eps=cfg.eps)
        self.ffn_pre = ConvSwiGLU(d, cfg.ffn_hidden[0], **ffn)
        self.norm_attn = RMSGroupNorm(cfg.n_groups, d, eps=cfg.eps)
        self.attn = SelfAttention(d, cfg.attention_dim, n_heads=cfg.n_heads, dropout=cfg.dropout)
        self.norm_post = RMSGroupNorm(cfg.n_groups, d, eps=cfg.eps)
        self.ffn_post = ConvSwiGLU(d, cfg.ffn_hidden[1], **ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, s, d) -> (N, s, d)."""
        x = x + self.ffn_pre(self.norm_pre(x))
        x = x + self.attn(self.norm_attn(x))
        return x + self.ffn_post(self.norm_post(x))


class TFLocoformerBlock(nn.Module):
    """A frequency path (sequences along the k bands) then a time path (along the l frames)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.freq = LocoformerPath(cfg)
        self.time = LocoformerPath(cfg)
        self.activation_checkpointing = False

    def _path(self, path: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(path, x, use_reentrant=False)
        return path(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, l, k, d) -> (b, l, k, d)."""
        b, l, k, d = x.shape
        x = self._path(self.freq, x.reshape(b * l, k, d)).view(b, l, k, d)
        x = x.transpose(1, 2).reshape(b * k, l, d)  # (b, l, k, d) -> (b*k, l, d)
        x = self._path(self.time, x).view(b, k, l, d)
        return x.transpose(1, 2)  # (b, k, l, d) -> (b, l, k, d)


class BandSplitEncoder(nn.Module):
    """Per band of w bins: features (Re, Im) x channels, bin-major -> GroupNorm(1) -> Linear(2cw -> d)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.bands = cfg.bands
        width = [2 * cfg.n_channels * w for w in cfg.bands]
        self.norms = nn.ModuleList(FrameGroupNorm(f) for f in width)
        self.projs = nn.ModuleList(nn.Linear(f, cfg.d_model) for f in width)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """spec: complex (b, c, f, l) -> embedding (b, l, k, d)."""
        b, c, f, l = spec.shape
        x = torch.cat((spec.real, spec.imag), dim=1).permute(0, 3, 2, 1)  # (b, 2c, f, l) -> (b, l, f, 2c)
        bands = torch.split(x, self.bands, dim=2)  # k x (b, l, w, 2c)
        out = [
            proj(norm(band.reshape(b, l, -1)))  # (b, l, w*2c) bin-major -> (b, l, d)
            for band, norm, proj in zip(bands, self.norms, self.projs)
        ]
        return torch.stack(out, dim=2)  # (b, l, k, d)


class PerOutputLinear(nn.Module):
    """n independent linear maps of one input: weight (n, out, in), bias (n, out).

    Each output's rows are computed by the same batched product whatever n is, so keeping
    a subset of outputs (:func:`mixitcli.model.slice_outputs`) reproduces them bit for bit.
    Initialised like ``nn.Linear`` (uniform in +-1/sqrt(in)).
    """

    def __init__(self, in_features: int, out_features: int, n: int):
        super().__init__()
        bound = in_features**-0.5
        self.weight = nn.Parameter(torch.empty(n, out_features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in) -> (n, N, out)."""
        return per_output_affine(x, self.weight, self.bias)


class BandMaskHead(nn.Module):
    """Mask of one band: GroupNorm(1) -> Linear(d, 4d) -> Linear(4d, 4d) -> tanh -> Linear -> GLU.

    There is no nonlinearity between the first two linear layers, as in the official model.
    The last layer is one linear map per output, each with rows ordered (GLU half, re/im,
    channel, bin); the official layout interleaves outputs (official.py converts).
    """

    def __init__(self, d_model: int, width: int, *, n_outputs: int, n_channels: int, eps: float = 1e-5):
        super().__init__()
        self.width = width
        self.n_channels = n_channels
        self.norm = FrameGroupNorm(d_model, eps=eps)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, 4 * d_model)
        self.fc3 = PerOutputLinear(4 * d_model, 2 * 2 * n_channels * width, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, l, d) -> (n, b, l, 2, c, w) real masks (re/im on axis 3)."""
        b, l, _ = x.shape
        y = torch.tanh(self.fc2(self.fc1(self.norm(x))))  # (b, l, 4d)
        y = self.fc3(y.reshape(b * l, -1))  # (n, b*l, 2 * 2cw)
        y = F.glu(y, dim=-1)  # first half * sigmoid(second half): (n, b*l, 2cw)
        return y.view(-1, b, l, 2, self.n_channels, self.width)


class MaskDecoder(nn.Module):
    """Per-band heads: complex masks, applied to the mixture spectrum.

    The parameters live in one :class:`BandMaskHead` per band (the checkpoint layout), but the
    forward pass does not loop over the heads for the first layers: every band's norm and its
    two linear layers (no nonlinearity between them, so one affine map) are one batched product
    over the k bands. The last layer, whose width differs per band, its GLU and the masking are
    :class:`mixitcli.model.masking.MaskedSpectrum`: one batched product per band (over the n
    outputs, so :func:`mixitcli.model.slice_outputs` stays exact), each band's masked spectrum
    written straight into the layout the iSTFT reads.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads = nn.ModuleList(
            BandMaskHead(cfg.d_model, w, n_outputs=cfg.n_outputs, n_channels=cfg.n_channels) for w in cfg.bands
        )
        self.n_channels = cfg.n_channels

    def hidden_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every band's norm affine, fc1 and fc2 as one affine map of the normalised input.

        fc2(fc1(gamma * z + beta)) = (W2 W1 diag(gamma)) z + W2 (W1 beta + b1) + b2, computed in
        float32 (a few products of small weight matrices per call).

        Returns:
            weight (k, 4d, d) and bias (k, 4d).
        """
        heads = self.heads
        with torch.autocast(heads[0].fc1.weight.device.type, enabled=False):
            w1 = torch.stack([h.fc1.weight for h in heads]).float()  # (k, 4d, d)
            w2 = torch.stack([h.fc2.weight for h in heads]).float()  # (k, 4d, 4d)
            b1 = torch.stack([h.fc1.bias for h in heads]).float()  # (k, 4d)
            b2 = torch.stack([h.fc2.bias for h in heads]).float()
            gamma = torch.stack([h.norm.weight for h in heads]).float()  # (k, d)
            beta = torch.stack([h.norm.bias for h in heads]).float()
            weight = torch.bmm(w2, w1) * gamma.unsqueeze(1)  # (k, 4d, d)
            inner = torch.baddbmm(b1.unsqueeze(-1), w1, beta.unsqueeze(-1))  # W1 beta + b1: (k, 4d, 1)
            bias = torch.baddbmm(b2.unsqueeze(-1), w2, inner).squeeze(-1)  # (k, 4d)
        return weight, bias

    def forward(
        self, x: torch.Tensor, spec: torch.Tensor, *, affine: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Masked spectra: the masks computed from ``x`` times the mixture spectrum ``spec``.

        Args:
            x: (b, l, k, d) separator output.
            spec: complex (b, c, f, l) spectrum to mask (ones give the masks themselves).
            affine: :meth:`hidden_affine`'s result, when the caller keeps it (inference).

        Returns:
            complex (b, n, c, f, l) of spec's dtype, a transposed view of a (b, n, c, l, f)
            tensor: frames outside bins, as the STFT stores them, so the iSTFT needs no copy.
        """
        last = [head.fc3 for head in self.heads]
        return masked_spectrum(
            self.hidden(x, affine), spec, [p.weight for p in last], [p.bias for p in last], n_channels=self.n_channels
        )

    def hidden(self, x: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(b, l, k, d) separator output -> (k, b*l, 4d) every band's features after its norm, fc1,
        fc2 and tanh: the input of the last layers (``affine``: as in :meth:`forward`)."""
        b, l, k, d = x.shape
        eps = self.heads[0].norm.eps
        x = x.float().permute(2, 0, 1, 3).contiguous().view(k, b, l * d)  # (b, l, k, d) -> (k, b, l*d)
        var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)  # per band and item: (k, b, 1)
        z = ((x - mean) * torch.rsqrt(var + eps)).view(k, b * l, d)
        weight, bias = affine if affine is not None else self.hidden_affine()
        return torch.tanh(torch.baddbmm(bias.unsqueeze(1), z, weight.transpose(1, 2)))  # (k, b*l, 4d)


class BSLocoformer(nn.Module):
    """Band-split TF-Locoformer for music source separation.

    Maps a waveform (b, c, t) to n output waveforms (b, n, c, t). Submodules: ``encoder``
    (band split), ``separator`` (the TF-Locoformer blocks) and ``decoder`` (mask heads).
    Attributes ``config`` (:class:`ModelConfig`) and ``stems`` (output names).
    """

    def __init__(self, config: ModelConfig, *, stems: tuple[str, ...] | None = None):
        super().__init__()
        self.config = config
        self.stems = tuple(stems) if stems is not None else default_stems(config.n_outputs)
        if len(self.stems) != config.n_outputs:
            raise ValueError(f"{len(self.stems)} stem names {self.stems} for {config.n_outputs} outputs")
        self.encoder = BandSplitEncoder(config)
        self.separator = nn.ModuleList(TFLocoformerBlock(config) for _ in range(config.n_blocks))
        self.decoder = MaskDecoder(config)
        self.register_buffer("window", torch.hann_window(config.n_fft, periodic=True), persistent=False)

    @property
    def min_samples(self) -> int:
        """Shortest input accepted: the centred STFT reflects n_fft/2 samples on each side."""
        return self.config.n_fft // 2 + 1

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each block path in the backward pass instead of storing its activations."""
        for block in self.separator:
            block.activation_checkpointing = enabled

    def analyse(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """STFT and per-channel scale.

        Args:
            wav: (b, c, t) float waveform.

        Returns:
            spec: complex (b, c, f, l) STFT of ``wav`` with l = t // hop frames.
            scale: (b, c, 1, 1) sqrt of the mean |X|^2 over bins and all frames of the
                centred STFT (each |X|^2 clipped at 1e-15): the network sees spec / scale.
        """
        b, c, t = wav.shape
        cfg = self.config
        with torch.autocast(wav.device.type, enabled=False):
            spec = torch.stft(
                wav.float().reshape(b * c, t),
                cfg.n_fft,
                cfg.hop_length,
                window=self.window,
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )  # (b*c, f, t//hop + 1)
            spec = spec.view(b, c, *spec.shape[-2:])
            power = spec.real.square() + spec.imag.square()
            scale = power.clamp_min(1e-15).mean(dim=(2, 3), keepdim=True).sqrt()  # (b, c, 1, 1)
        return spec[..., : t // cfg.hop_length], scale

    def input_scale(self, wav: torch.Tensor) -> torch.Tensor:
        """(b, c, t) -> (b, c, 1): the per-channel STFT RMS that :meth:`analyse` divides by.

        Training divides mixtures and references by it first, as the official recipe does.
        """
        return self.analyse(wav)[1].squeeze(-1)

    def synthesise(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """Inverse STFT: complex (b, n, c, f, l) -> (b, n, c, length)."""
        b, n, c, f, l = spec.shape
        cfg = self.config
        with torch.autocast(spec.device.type, enabled=False):
            wav = torch.istft(
                spec.reshape(b * n * c, f, l),
                cfg.n_fft,
                cfg.hop_length,
                window=self.window,
                center=True,
                length=length,
            )
        return wav.view(b, n, c, length)

    def masked(self, spec: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The network: complex (b, c, f, l) spectrum and its (b, c, 1, 1) scale -> the outputs'
        complex spectra (b, n, c, f, l), masks computed from ``spec / scale`` times ``spec``.

        Masking the unscaled spectrum equals the official mask * (X / scale), then * scale.
        """
        x = self.encoder(spec / scale)  # (b, l, k, d)
        for block in self.separator:
            x = block(x)
        return self.decoder(x, spec)

    def forward(self, wav: torch.Tensor, *, spectrum: bool = False) -> torch.Tensor:
        """Separate.

        Args:
            wav: (b, c, t) mixture waveform, any scale, t >= n_fft // 2 + 1.
            spectrum: return the outputs' spectra instead of their waveforms, for a loss that
                synthesises them itself (:meth:`synthesise` turns them into the waveforms).

        Returns:
            (b, n, c, t) float32 output waveforms (outputs in the order of ``stems``); with
            ``spectrum``, their complex64 spectra (b, n, c, f, l), l = t // hop_length.

        Raises:
            ValueError: wrong rank, channel count or a too short input.
        """
        if wav.ndim != 3 or wav.shape[1] != self.config.n_channels:
            raise ValueError(
                f"expected a waveform shaped (batch, {self.config.n_channels} channels, samples), got {tuple(wav.shape)}"
            )
        if wav.shape[-1] < self.min_samples:
            raise ValueError(
                f"input of {wav.shape[-1]} samples is too short; the model needs at least {self.min_samples}"
            )
        spec = self.masked(*self.analyse(wav))
        return spec if spectrum else self.synthesise(spec, wav.shape[-1])
