"""Reading audio (mixitcli/audio.py): non-finite samples (NaN, infinity; issue 10, item 3) are
read as 0 once, in read_blocks, and counted for the warning that names the file. How separate,
eval and prepare-fma report them: tests/test_separate.py, tests/test_evaluate.py and
tests/data/test_fma.py."""

from __future__ import annotations

import numpy as np

from mixitcli import audio
from tests.builders import float_wav, noise


def test_read_blocks_zeroes_and_reports_nonfinite_samples(tmp_path):
    x = noise(1.0, seed=1)
    x[100, 0], x[5000, 1], x[5001, 1] = np.nan, np.inf, -np.inf
    path = float_wav(tmp_path / "a.wav", x)
    seen = []
    blocks = list(
        audio.read_blocks(path, 4096, on_nonfinite=lambda first, bad: seen.append((first, np.argwhere(bad).tolist())))
    )
    got = np.concatenate(blocks, axis=1)  # (c, t)
    assert np.isfinite(got).all() and got[0, 100] == 0 and got[1, 5000] == got[1, 5001] == 0
    expected = x.T.copy()
    expected[~np.isfinite(expected)] = 0
    np.testing.assert_array_equal(got, expected)  # everything else untouched
    assert seen == [(0, [[0, 100]]), (4096, [[1, 904], [1, 905]])]  # block start, (channel, index in block)
    count = audio.NonFiniteCount()
    whole, _ = audio.read(path, on_nonfinite=count)
    np.testing.assert_array_equal(whole, expected)
    assert (
        count.samples == 3
        and audio.nonfinite_message(path, 3) == f"{path}: 3 non-finite sample(s) (NaN or infinity) replaced by 0"
    )
