"""Clip positions (mixitcli/data/clips.py): 10 s clips every 5 s, plus one that ends at the end.
The rules that drop clips and files run through prepare-fma in tests/data/test_fma.py."""

from __future__ import annotations

import pytest

from mixitcli.data.clips import segment_starts

from .conftest import SR

L = 10 * SR


@pytest.mark.parametrize(
    "frames, expected",
    [
        (L - 1, []),
        (L, [0]),
        (L + 1, [0, 1]),  # the end clip, one sample later
        (20 * SR, [0, 5 * SR, 10 * SR]),  # the hops land on the end: no extra clip
        (17 * SR, [0, 5 * SR, 7 * SR]),
    ],
)
def test_segment_starts(frames, expected):
    assert segment_starts(frames, L, 5 * SR) == expected
