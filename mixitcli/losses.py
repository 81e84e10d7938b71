"""Losses (docs/method.md §4): thresholded negative SNR, the fine-tuning loss with inactive
sources, and mixture invariant training (MixIT) with an exact and an efficient solver.

Shapes: b batch, n outputs (estimates), m mixtures (2 for MixIT), c audio channels,
t samples. Everything is computed in float32 or float64, also under bf16 autocast.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

SNR_MAX_DB = 30.0
EPS = 1e-8


def _tau(snr_max: float) -> float:
    return 10.0 ** (-snr_max / 10.0)


def neg_snr(est: torch.Tensor, ref: torch.Tensor, *, snr_max: float = SNR_MAX_DB, eps: float = EPS) -> torch.Tensor:
    """Thresholded negative SNR in dB, per signal (no reduction).

    L(y, y^) = 10 log10(||y - y^||^2 + tau ||y||^2 + eps) - 10 log10(||y||^2 + eps),
    tau = 10^(-snr_max/10): the loss stops rewarding SNRs above ``snr_max`` dB.

    Args:
        est, ref: (..., t) estimates and references of the same shape.

    Returns:
        (...) loss per signal (lower is better).
    """
    if est.shape != ref.shape:
        raise ValueError(f"neg_snr: estimate shape {tuple(est.shape)} != reference shape {tuple(ref.shape)}")
    est, ref = est.float(), ref.float()
    noise = (ref - est).square().sum(-1)
    power = ref.square().sum(-1)
    return 10 * torch.log10(noise + _tau(snr_max) * power + eps) - 10 * torch.log10(power + eps)


def finetune_loss(
    est: torch.Tensor,
    ref: torch.Tensor,
    *,
    snr_max: float = SNR_MAX_DB,
    inactive_db: float = -60.0,
    inactive_weight: float = 0.1,
    eps: float = EPS,
) -> torch.Tensor:
    """Supervised loss with inactive sources (the official ThresSNRLossWithInactiveSource).

    A stem is inactive when its power is below ``inactive_db`` relative to the mixture's
    (a dropped, all-zero stem always is). Active stems get :func:`neg_snr`; inactive ones
    ``inactive_weight * 10 log10(||y^||^2 + tau ||x||^2 + eps)`` with x the mixture, which
    pushes their estimate towards silence without dividing by a zero reference.

    Args:
        est: (b, n, c, t) estimated stems.
        ref: (b, n, c, t) reference stems; the mixture is their sum.

    Returns:
        Scalar: mean over batch, stems and channels.
    """
    if est.shape != ref.shape or est.ndim != 4:
        raise ValueError(
            f"finetune_loss: expected est and ref shaped (b, n, c, t), got {tuple(est.shape)} and {tuple(ref.shape)}"
        )
    est, ref = est.float(), ref.float()
    tau = _tau(snr_max)
    ref_power = ref.square().sum(-1)  # (b, n, c)
    mix_power = ref.sum(1, keepdim=True).square().sum(-1)  # (b, 1, c)
    active = ref_power >= 10 ** (inactive_db / 10) * (mix_power + eps)  # the official rule, eps included
    noise = (ref - est).square().sum(-1)
    threshold = tau * torch.where(active, ref_power, mix_power.expand_as(ref_power))
    loss = 10 * torch.log10(noise + threshold + eps)  # inactive: ref ~ 0, noise ~ ||est||^2
    loss = torch.where(active, loss - 10 * torch.log10(ref_power + eps), inactive_weight * loss)
    return loss.mean()


def _gram(
    est: torch.Tensor, mix: torch.Tensor, *, chunk: int = 2048
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float64 inner products over time, chunk by chunk (bounded memory, cache-sized pieces).

    Args:
        est: (b, n, c, t); mix: (b, m, c, t).

    Returns:
        G (b, c, n, n) = est est^T, C (b, c, n, m) = est mix^T, P (b, c, m) = ||mix||^2.
    """
    b, n, c, t = est.shape
    m = mix.shape[1]
    gram = est.new_zeros((b, c, n + m, n + m), dtype=torch.float64)
    for start in range(0, t, chunk):
        stop = start + chunk
        part = torch.cat((est[..., start:stop], mix[..., start:stop]), dim=1)  # (b, n+m, c, T)
        part = part.transpose(1, 2).double()  # (b, c, n+m, T)
        gram += part @ part.transpose(-1, -2)
    return gram[..., :n, :n], gram[..., :n, n:], gram[..., n:, n:].diagonal(dim1=-2, dim2=-1)


class SolverError(ArithmeticError):
    """The MixIT solver found no assignment: its least-squares problem could not be solved
    (outputs that are not finite, or so large that their inner products overflow)."""


def _efficient_assignment(est: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """Wisdom et al. (2021): least squares on the first channel, then signed argmax.

    Solves A* = argmin ||X - A S||^2 (minimum-norm solution when S is rank deficient) and
    assigns each output to the mixture with its largest signed coefficient.
    Returns (b, n) long mixture indices.

    Raises:
        SolverError: the eigendecomposition behind the pseudo-inverse failed.
    """
    g, cross, _ = _gram(est[:, :, :1], mix[:, :, :1])  # (b, 1, n, n), (b, 1, n, m)
    try:
        coef = torch.linalg.pinv(g[:, 0], hermitian=True) @ cross[:, 0]  # (b, n, m) = A*^T
    except torch.linalg.LinAlgError as e:
        raise SolverError(f"MixIT least squares failed ({str(e).splitlines()[0]})") from e
    return coef.argmax(-1)


def _all_assignments(n: int, m: int, device: torch.device) -> torch.Tensor:
    """(m^n, n) every map of n outputs to m mixtures, as mixture indices."""
    return torch.tensor(list(itertools.product(range(m), repeat=n)), device=device)


def _exact_assignment(est: torch.Tensor, mix: torch.Tensor, *, snr_max: float, eps: float) -> torch.Tensor:
    """Search all m^n assignments for the minimal MixIT loss, from Gram matrices in float64.

    ||x_m - sum_i w_i s_i||^2 = ||x_m||^2 - 2 w^T c_m + w^T G w for a binary w, so every
    assignment costs O(n^2) once G and c are known. Returns (b, n) long mixture indices.
    """
    n, m = est.shape[1], mix.shape[1]
    g, cross, power = _gram(est, mix)  # (b, c, n, n), (b, c, n, m), (b, c, m)
    choices = _all_assignments(n, m, est.device)  # (K, n)
    w = torch.nn.functional.one_hot(choices, m).to(torch.float64)  # (K, n, m)
    quad = torch.einsum("kim,bcij,kjm->bckm", w, g, w)  # w_m^T G w_m: (b, c, K, m)
    lin = torch.einsum("kim,bcim->bckm", w, cross)  # w_m^T c_m
    p = power.unsqueeze(2)  # (b, c, 1, m)
    noise = (p - 2 * lin + quad).clamp_min(0)
    loss = 10 * torch.log10(noise + _tau(snr_max) * p + eps) - 10 * torch.log10(p + eps)  # (b, c, K, m)
    best = loss.mean(dim=(1, 3)).argmin(-1)  # (b,)
    return choices[best]


SOLVERS = ("efficient", "exact")


def mixit_assignment(
    estimates: torch.Tensor,
    mixtures: torch.Tensor,
    *,
    solver: str = "efficient",
    snr_max: float = SNR_MAX_DB,
    eps: float = EPS,
) -> torch.Tensor:
    """The MixIT assignment of each output to a mixture, found without gradients.

    Args:
        estimates: (b, n, c, t) separated outputs.
        mixtures: (b, m, c, t) the mixtures whose sum was separated (m = 2 in the paper).
        solver: "exact" (all m^n assignments, the minimal loss of :func:`mixit_loss`) or
            "efficient" (least squares + argmax on the first channel, as the paper; can miss
            the optimum).

    Returns:
        (b, n) long index of the mixture each output is assigned to.

    Raises:
        ValueError: wrong ranks, shapes that disagree, or an unknown solver.
        SolverError: the efficient solver's least squares failed (non-finite outputs).
    """
    if estimates.ndim != 4 or mixtures.ndim != 4:
        raise ValueError(
            f"mixit: expected estimates (b, n, c, t) and mixtures (b, m, c, t), got {tuple(estimates.shape)} and {tuple(mixtures.shape)}"
        )
    b, n, c, t = estimates.shape
    if mixtures.shape[0] != b or mixtures.shape[2:] != (c, t):
        raise ValueError(
            f"mixit: estimates {tuple(estimates.shape)} and mixtures {tuple(mixtures.shape)} disagree on batch, channels or length"
        )
    if solver not in SOLVERS:
        raise ValueError(f"unknown MixIT solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    with torch.no_grad():
        estimates, mixtures = estimates.float(), mixtures.float()
        if solver == "exact":
            return _exact_assignment(estimates, mixtures, snr_max=snr_max, eps=eps)
        return _efficient_assignment(estimates, mixtures)


def mixit_loss(
    estimates: torch.Tensor,
    mixtures: torch.Tensor,
    *,
    solver: str = "efficient",
    snr_max: float = SNR_MAX_DB,
    eps: float = EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixture invariant training loss (Wisdom et al. 2020), docs/method.md §4.

    min over assignments A (each output to exactly one mixture, shared by all channels) of
    the mean over mixtures and channels of neg_snr(x_m, sum of the outputs assigned to m).
    The assignment is found without gradients (:func:`mixit_assignment`); the loss of the
    chosen one is then computed directly from the waveforms, with gradients to every output.

    Args:
        estimates: (b, n, c, t) separated outputs.
        mixtures: (b, m, c, t) the mixtures whose sum was separated (m = 2 in the paper).
        solver: "exact" (all m^n assignments) or "efficient" (least squares + argmax on
            the first channel, as the paper; can miss the optimum).

    Returns:
        (loss, assignment): scalar mean over batch, mixtures and channels; (b, n) long
        index of the mixture each output is assigned to.

    Raises:
        ValueError: as :func:`mixit_assignment`.
    """
    assignment = mixit_assignment(estimates, mixtures, solver=solver, snr_max=snr_max, eps=eps)
    estimates = estimates.float()
    mask = torch.nn.functional.one_hot(assignment, mixtures.shape[1]).to(estimates.dtype)  # (b, n, m)
    remixed = torch.einsum("bnm,bnct->bmct", mask, estimates)  # (b, m, c, t)
    return neg_snr(remixed, mixtures, snr_max=snr_max, eps=eps).mean(), assignment


def mixit_loss_from_spectra(
    spectra: torch.Tensor,
    mixtures: torch.Tensor,
    synthesise: Callable[[torch.Tensor], torch.Tensor],
    *,
    solver: str = "efficient",
    snr_max: float = SNR_MAX_DB,
    eps: float = EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`mixit_loss` of ``synthesise(spectra)``, with gradients through only m syntheses.

    The synthesis (an inverse STFT) is linear, so the sum of the outputs assigned to a mixture
    is the synthesis of the sum of their spectra. All n outputs are synthesised without
    gradients to find the assignment (only their first channel for the efficient solver, the
    only one it reads); the chosen remix is then formed from the spectra and only its m
    signals are synthesised with gradients (for the paper's 12 outputs and 2 mixtures, the
    synthesis backward runs on 4 signals instead of 24 for stereo).
    Equal to ``mixit_loss(synthesise(spectra), mixtures)`` up to float rounding.

    Args:
        spectra: complex (b, n, c, f, l) spectra of the outputs.
        mixtures: (b, m, c, t) the mixtures whose sum was separated.
        synthesise: linear map of complex (b, k, c, f, l) spectra to (b, k, c, t) waveforms,
            for any k, e.g. ``lambda s: model.synthesise(s, t)``.
        solver, snr_max, eps: as :func:`mixit_loss`.

    Returns:
        (loss, assignment) as :func:`mixit_loss`.

    Raises:
        ValueError: ``spectra`` is not complex (b, n, c, f, l), or as :func:`mixit_assignment`.
    """
    if spectra.ndim != 5 or not spectra.is_complex():
        raise ValueError(f"mixit: expected complex spectra (b, n, c, f, l), got {spectra.dtype} {tuple(spectra.shape)}")
    seen = slice(0, 1) if solver == "efficient" else slice(None)  # the efficient solver reads channel 0 only
    with torch.no_grad():
        estimates = synthesise(spectra.detach()[:, :, seen])  # (b, n, c or 1, t)
    assignment = mixit_assignment(estimates, mixtures[:, :, seen], solver=solver, snr_max=snr_max, eps=eps)
    del estimates
    mask = torch.nn.functional.one_hot(assignment, mixtures.shape[1]).to(spectra.real.dtype)  # (b, n, m)
    remixed = synthesise(_remix(spectra, mask))  # (b, m, c, t)
    return neg_snr(remixed, mixtures, snr_max=snr_max, eps=eps).mean(), assignment


def _remix(spectra: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum the spectra (b, n, c, f, l) assigned to each mixture by ``mask`` (b, n, m): (b, m, c, f, l).

    One real batched product over the spectra's memory in its own order (frames outside bins
    when the model made them), so the full-size spectra are read once and never copied.
    """
    frames_outside = spectra.transpose(-1, -2).is_contiguous()
    x = spectra.transpose(-1, -2) if frames_outside else spectra
    remixed = torch.einsum("bnm,bn...->bm...", mask, torch.view_as_real(x))
    remixed = torch.view_as_complex(remixed)
    return remixed.transpose(-1, -2) if frames_outside else remixed
