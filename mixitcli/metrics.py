"""The metrics of one track: cSDR (museval BSSEval v4) and uSDR (two named variants), with
the rules for silent stems (docs/method.md §7). Over tracks, :func:`mixitcli.report.summarise`.

For one track, references s and estimates ŝ shaped (n, c, t):

- cSDR: ``museval.evaluate`` on all stems at once, 1 s windows and hops; per stem the median
  over windows, NaN windows ignored. Over tracks: the median, NaN ignored.
- uSDR "paper": per channel ``10·log10((Σs² + 1e-8) / (Σ(s − ŝ)² + 1e-8))``, mean over
  channels (the authors' ``snr`` in evaluate_sdr.py). Over tracks: the mean.
- uSDR "mdx21": ``10·log10((Σs² + 1e-7) / (Σ(s − ŝ)² + 1e-7))`` with sums over both
  channels (Music Demixing Challenge 2021). Over tracks: the mean.
- "Average" is the mean of the four stem values (the paper's Table 1).

Silent signals (README, "Evaluation: silent stems"): museval refuses a stem whose reference
or estimate is silent over the whole track. BSSEval v4's SDR of a window is
``10·log10(‖s‖² / ‖ŝ − s‖²)`` (its spatial, interference and artifact terms add up to
ŝ − s), so it depends on that stem's own estimate and reference only, and an all-zero
estimate scores exactly 0 dB. Hence: a silent estimate gets cSDR = 0 dB (uSDR is then 0 dB
by its formula), and museval scores the other stems with the silent estimate replaced by
its reference, which changes none of their values; a silent reference makes the stem's SDR
undefined, so both metrics are NaN, left out of the aggregates, and museval scores the other
stems without it. Every such case is flagged in the record and counted in the summary.

Only ``museval.evaluate`` (numpy/scipy) is used; museval's pandas-based stores are not, so
any pandas version museval imports with is fine (tested with pandas 3.1). This module needs
numpy only (museval on the first cSDR), so training validation imports it for :func:`usdr`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mixitcli.audio import require_ffmpeg
from mixitcli.stems import STEMS

MUSEVAL_NEEDS = "cSDR scoring (museval imports stempeg, which refuses to load without ffmpeg and ffprobe)"
METRICS = {
    "csdr": "cSDR (museval v4, median)",
    "usdr": "uSDR (paper: per-channel, mean)",
    "usdr_mdx": "uSDR (MDX21: both channels, mean)",
}
WINDOW = HOP = 44100  # museval's 1 s windows and hops at 44.1 kHz


def is_silent(x: np.ndarray) -> bool:
    """museval's test, on (c, t): the sum over channels is zero at every sample."""
    return bool(np.all(x.sum(axis=0) == 0))


def usdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """The paper's uSDR of one stem, (c, t) arrays: per-channel SNR (1e-8 inside each log), mean over channels."""
    s, e = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    num = np.sum(s**2, axis=-1) + 1e-8
    den = np.sum((s - e) ** 2, axis=-1) + 1e-8
    return float(np.mean(10 * np.log10(num) - 10 * np.log10(den)))


def usdr_mdx(reference: np.ndarray, estimate: np.ndarray) -> float:
    """The MDX21 SDR of one stem, (c, t) arrays: sums over both channels, 1e-7 added above and below."""
    s, e = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    return float(10 * np.log10((np.sum(s**2) + 1e-7) / (np.sum((s - e) ** 2) + 1e-7)))


def csdr(
    references: np.ndarray, estimates: np.ndarray, *, window: int = WINDOW, hop: int = HOP
) -> tuple[np.ndarray, list[str | None]]:
    """cSDR of every stem of one track through museval (BSSEval v4), silent stems handled.

    Args:
        references, estimates: (n, c, t); estimates are zero-padded or cut to the references'
            length (as museval does).
        window, hop: museval's window and hop in samples.

    Returns:
        (values (n,), flags): the median over windows per stem (NaN: undefined), and per stem
        None or the reason its value is not museval's own ("silent estimate", "silent
        reference", "no scorable window").
    """
    require_ffmpeg(MUSEVAL_NEEDS)
    import museval

    refs, ests = _align(references, estimates)
    n = refs.shape[0]
    values = np.full(n, np.nan)
    flags: list[str | None] = [None] * n
    kept = []
    for i in range(n):
        if is_silent(refs[i]):
            flags[i] = "silent reference"
        else:
            kept.append(i)
            if is_silent(ests[i]):
                flags[i] = "silent estimate"
                values[i] = 0.0
                ests[i] = refs[i]  # stand-in: changes no other stem's SDR
    if any(flags[i] is None for i in kept):
        sdr = museval.evaluate(refs[kept].transpose(0, 2, 1), ests[kept].transpose(0, 2, 1), win=window, hop=hop)[
            0
        ]  # (k, windows)
        for k, i in enumerate(kept):
            if flags[i] is not None:
                continue
            if np.all(np.isnan(sdr[k])):
                flags[i] = "no scorable window"
            else:
                values[i] = float(np.nanmedian(sdr[k]))
    return values, flags


def _align(references: np.ndarray, estimates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    refs = np.array(references, dtype=np.float64)
    ests = np.array(estimates, dtype=np.float64)
    if refs.ndim != 3 or ests.shape[:2] != refs.shape[:2]:
        raise ValueError(
            f"expected references and estimates shaped (stems, channels, samples) with equal stems and channels, got {refs.shape} and {ests.shape}"
        )
    t = refs.shape[-1]
    if ests.shape[-1] >= t:
        ests = ests[..., :t].copy()
    else:
        ests = np.pad(ests, ((0, 0), (0, 0), (0, t - ests.shape[-1])))
    return refs, ests


def score_arrays(references: np.ndarray, estimates: np.ndarray, stems: Sequence[str] = STEMS) -> dict:
    """All metrics of one track, (n, c, t) arrays in the order of ``stems`` (default: the model
    order): a record without the track name, its stems in the order of ``stems``."""
    refs, ests = _align(references, estimates)
    c_values, flags = csdr(refs, ests)
    record = {"csdr": {}, "usdr": {}, "usdr_mdx": {}, "flags": {}}
    for i, stem in enumerate(stems):
        undefined = flags[i] == "silent reference"
        record["csdr"][stem] = _json_float(c_values[i])
        record["usdr"][stem] = None if undefined else usdr(refs[i], ests[i])
        record["usdr_mdx"][stem] = None if undefined else usdr_mdx(refs[i], ests[i])
        if flags[i]:
            record["flags"][stem] = flags[i]
    return record


def _json_float(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
