"""Source activity detection: BSRNN's unsupervised SAD, as the authors' recipe runs it per stem
of each training song (docs/method.md §2.2). Dynamic mixing draws its stems from the salient
segments it finds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixitcli.audio import SAMPLE_RATE


@dataclass(frozen=True)
class SadConfig:
    """Source activity detection of BSRNN as run by the official recipe (docs/method.md §2.2).

    Attributes:
        segment_seconds: segment length; segments hop by half of it (full segments only).
        n_chunks: equal chunks per segment.
        min_active: a segment is salient when at least this many chunks exceed the threshold.
        quantile: percentile (0-100) of all chunk energies of the stem in the track.
        zero_energy: the energy an exactly-zero chunk counts as.
        min_threshold: floor of the threshold (energy = sum of squares over both channels).
    """

    segment_seconds: int = 8
    n_chunks: int = 10
    min_active: int = 5
    quantile: float = 15.0
    zero_energy: float = 1e-5
    min_threshold: float = 1e-3


def salient_segments(
    audio: np.ndarray, sample_rate: int = SAMPLE_RATE, config: SadConfig = SadConfig()
) -> tuple[list[int], int]:
    """BSRNN's unsupervised source activity detection on one stem of one track.

    Args:
        audio: (c, t) float audio of the stem.
        sample_rate: Hz.
        config: the SAD constants.

    Returns:
        (starts, n_segments): start samples of the salient segments (each
        ``segment_seconds * sample_rate`` long) and the number of candidate segments.
    """
    if audio.ndim != 2:
        raise ValueError(f"expected audio shaped (channels, samples), got {audio.shape}")
    length = config.segment_seconds * sample_rate
    hop, chunk = length // 2, length // config.n_chunks
    starts = list(range(0, audio.shape[1] - length + 1, hop))
    if not starts:
        return [], 0
    energy = np.empty((len(starts), config.n_chunks))  # (segments, chunks)
    for i, s in enumerate(starts):
        seg = audio[:, s : s + chunk * config.n_chunks].astype(np.float64)  # (c, n*chunk)
        seg = seg.reshape(audio.shape[0], config.n_chunks, chunk)  # (c, n, chunk)
        energy[i] = np.einsum("cnk,cnk->n", seg, seg)
    energy[energy == 0.0] = config.zero_energy
    threshold = max(float(np.percentile(energy, config.quantile)), config.min_threshold)
    active = (energy > threshold).sum(axis=1)  # (segments,)
    return [s for s, a in zip(starts, active) if a >= config.min_active], len(starts)
