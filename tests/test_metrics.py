"""Scores (mixitcli/metrics.py): cSDR through museval, uSDR by hand, silent stems."""

import museval
import numpy as np
import pytest

from mixitcli.metrics import csdr, score_arrays, usdr, usdr_mdx

SR = 44100


def at_snr(reference: np.ndarray, snr_db: float, rng) -> np.ndarray:
    """reference + noise scaled so that 10 log10(|s|^2 / |noise|^2) is exactly snr_db."""
    noise = rng.standard_normal(reference.shape)
    noise *= np.sqrt(np.sum(reference**2) / np.sum(noise**2) / 10 ** (snr_db / 10))
    return reference + noise


def test_usdr_of_a_known_snr():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((2, 3 * SR))
    left, right = at_snr(s[0], 10.0, rng), at_snr(s[1], 20.0, rng)
    est = np.stack([left, right])
    assert usdr(s, est) == pytest.approx(15.0, abs=1e-6)  # paper: mean of per-channel SNRs
    p = np.sum(s**2, axis=1)  # signal power per channel
    n = np.array([p[0] / 10, p[1] / 100])  # noise power per channel at 10 and 20 dB
    assert usdr_mdx(s, est) == pytest.approx(10 * np.log10(p.sum() / n.sum()), abs=1e-6)  # MDX21: pooled
    assert usdr(s, np.zeros_like(s)) == pytest.approx(0.0, abs=1e-9)
    assert usdr_mdx(s, s) == pytest.approx(10 * np.log10((p.sum() + 1e-7) / 1e-7))


def test_csdr_is_museval():
    rng = np.random.default_rng(1)
    refs = rng.standard_normal((2, 2, 3 * SR))
    ests = np.stack([at_snr(refs[0], 8.0, rng), at_snr(refs[1], 3.0, rng)])
    values, flags = csdr(refs, ests)
    direct = museval.evaluate(refs.transpose(0, 2, 1), ests.transpose(0, 2, 1), win=SR, hop=SR)[0]
    np.testing.assert_allclose(values, np.nanmedian(direct, axis=1), rtol=0, atol=1e-9)
    assert flags == [None, None]
    assert values[0] == pytest.approx(8.0, abs=0.3)  # white noise at 8 dB reads about 8 dB


def test_silent_stems_are_scored_as_defined():
    rng = np.random.default_rng(2)
    refs = rng.standard_normal((3, 2, 3 * SR))
    ests = np.stack([at_snr(refs[0], 6.0, rng), np.zeros((2, 3 * SR)), at_snr(refs[2], 12.0, rng)])
    refs[2] = 0.0  # silent reference; its estimate is noise
    record = score_arrays(refs, ests, stems=("vocals", "bass", "drums"))
    assert record["flags"] == {"bass": "silent estimate", "drums": "silent reference"}
    assert record["csdr"]["bass"] == 0.0 and record["usdr"]["bass"] == pytest.approx(0.0, abs=1e-9)
    assert record["csdr"]["drums"] is None and record["usdr"]["drums"] is None and record["usdr_mdx"]["drums"] is None
    # The remaining stem gets exactly what museval gives it on its own reference and estimate.
    alone = museval.evaluate(refs[:1].transpose(0, 2, 1), ests[:1].transpose(0, 2, 1), win=SR, hop=SR)[0]
    assert record["csdr"]["vocals"] == pytest.approx(float(np.nanmedian(alone)), abs=1e-9)
