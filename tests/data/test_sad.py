"""Salient-segment detection (mixitcli/data/sad.py) on constructed signals: the 15th-percentile
threshold, its floor, silent and short stems."""

from __future__ import annotations

import numpy as np
import pytest

from mixitcli.data.sad import salient_segments
from tests.builders import noise

from .conftest import SR

SEG = 8 * SR  # SAD segments: 8 s, hop 4 s, chunks of 0.8 s
CHUNK = SEG // 10


def chunked(amplitudes: list[float]) -> np.ndarray:
    """A stereo signal that is constant within each 0.8 s chunk: (c=2, len * CHUNK)."""
    return np.repeat(np.asarray(amplitudes, np.float32), CHUNK)[None].repeat(2, axis=0)


def test_sad_percentile_threshold():
    """20 chunks (16 s, segments at 0, 4, 8 s). Chunk energies E = a² * CHUNK * 2:
    6 chunks at 0.01 (E = 7.056), 4 at 0.02, 10 at 0.1. Over the 30 (segment, chunk) pairs the
    15th percentile is 7.056 (7 pairs have it), so only the louder chunks count as active:
    segment 0 has 4 (< 5: dropped), segments 1 and 2 have 9 and 10."""
    x = chunked([0.01] * 6 + [0.02] * 4 + [0.1] * 10)
    assert salient_segments(x, SR) == ([SEG // 2, SEG], 3)


def test_sad_floor():
    """Zero chunks count as 1e-5 and the threshold is floored at 1e-3: chunks at 1e-4
    (E = 7.1e-4) are then inactive even though they are above the 15th percentile."""
    x = chunked([0.0] * 5 + [1e-4] * 5 + [0.1] * 10)
    assert salient_segments(x, SR) == ([SEG // 2, SEG], 3)


def test_sad_edge_cases():
    assert salient_segments(np.zeros((2, 20 * SR), np.float32), SR) == ([], 4)  # silent stem
    assert salient_segments(noise(7.9).T, SR) == ([], 0)  # shorter than one segment
    loud_first = np.concatenate([noise(8).T, np.zeros((2, 12 * SR), np.float32)], axis=1)
    assert salient_segments(loud_first, SR) == ([0, SEG // 2], 4)  # 10 and 5 active chunks
    with pytest.raises(ValueError, match="channels, samples"):
        salient_segments(np.zeros(100), SR)
