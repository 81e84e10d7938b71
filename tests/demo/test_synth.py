"""The demo's synthesiser (mixitcli/demo/synth.py): songs of four (or five) stereo stems with
sections that switch stems off and on, seeded, each stem in its register."""

from __future__ import annotations

import numpy as np
import pytest

from mixitcli import audio
from mixitcli.demo.synth import synthesize_song
from mixitcli.stems import STEMS

SR = audio.SAMPLE_RATE


def db(x: np.ndarray, ref: float) -> float:
    """Mean power of x in dB relative to ref (a power)."""
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)) / ref + 1e-30)


@pytest.mark.parametrize("rate", [44100, 48000])
def test_song_has_four_stereo_stems_of_the_asked_length(rate):
    song = synthesize_song(1, 5.0, rate)
    assert set(song.stems) == set(STEMS)
    for x in song.stems.values():
        assert x.shape == (2, 5 * rate) and x.dtype == np.float32 and np.isfinite(x).all()
    assert np.abs(song.mixture).max() < 1.0
    assert song.sections[0].start == 0 and song.sections[-1].stop == 5 * rate
    assert all(a.stop == b.start for a, b in zip(song.sections, song.sections[1:]))


def test_same_seed_same_song_other_seed_other_song():
    a, b = synthesize_song(4, 6.0), synthesize_song(4, 6.0)
    for name in STEMS:
        np.testing.assert_array_equal(a.stems[name], b.stems[name])
    songs = [synthesize_song(seed, 6.0) for seed in range(6)]
    assert len({round(s.tempo_bpm, 3) for s in songs}) == 6
    assert len({s.key for s in songs}) >= 3
    mixtures = np.stack([s.mixture[0] for s in songs])
    corr = np.corrcoef(mixtures)
    assert np.abs(corr[~np.eye(6, dtype=bool)]).max() < 0.3  # not one song at other levels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sections_switch_stems_off_and_on(seed):
    """Every stem is silent at the end of some section that leaves it out, and sounds where it plays."""
    song = synthesize_song(seed, 12.0)
    kinds = [s.kind for s in song.sections]
    assert kinds[:5] == ["intro", "verse", "break", "chorus", "groove"], kinds
    assert "vocals" not in song.sections[0].stems and "bass" not in song.sections[0].stems
    for name, x in song.stems.items():
        power = np.mean(np.square(x, dtype=np.float64))
        off = [s for s in song.sections if name not in s.stems]
        on = [s for s in song.sections if name in s.stems]
        assert off and on, name
        # tails (release, echo, room) may ring into the next section, but not to its last quarter
        quiet = [db(x[:, s.stop - (s.stop - s.start) // 4 : s.stop], power) for s in off]
        assert min(quiet) < -60, (name, quiet)
        loud = [db(x[:, s.start : s.stop], power) for s in on]  # a hats-only intro is the quietest
        assert min(loud) > -25, (name, loud)


@pytest.mark.parametrize("seed", [0, 3])
def test_stems_occupy_their_registers(seed):
    """Bass energy lies mostly below 200 Hz, the voice's between 200 Hz and 4 kHz (formants), and
    the drums have a noisy top (hats, snare) above 4 kHz that the pitched stems lack."""
    song = synthesize_song(seed, 8.0)
    f = np.fft.rfftfreq(song.stems["bass"].shape[1], 1 / SR)

    def share(stem: str, lo: float, hi: float) -> float:
        power = np.abs(np.fft.rfft(song.stems[stem][0])) ** 2
        return power[(f >= lo) & (f < hi)].sum() / power.sum()

    assert share("bass", 0, 200) > 0.6
    assert share("vocals", 200, 4000) > 0.7
    assert share("drums", 4000, SR / 2) > 0.05
    assert max(share(s, 4000, SR / 2) for s in ("bass", "vocals", "other")) < 0.05


def test_a_guitar_song_adds_a_picked_line_in_its_sections_and_keeps_the_other_stems():
    """`make demo-stems`' fifth instrument (issue 21): the same song with a guitar stem that plays only
    in verses, choruses and the outro; the four other stems are the guitar-less song's up to the
    common master gain, and the guitar's energy lies in its register (82 Hz to a few kHz)."""
    plain, song = synthesize_song(2, 12.0), synthesize_song(2, 12.0, guitar=True)
    assert list(song.stems) == [*STEMS, "guitar"]
    gains = [np.abs(song.stems[s]).max() / np.abs(plain.stems[s]).max() for s in STEMS]
    for name, gain in zip(STEMS, gains):
        np.testing.assert_allclose(song.stems[name], plain.stems[name] * gain, atol=1e-6)
    assert max(gains) - min(gains) < 1e-5
    guitar = song.stems["guitar"]
    power = np.mean(np.square(guitar, dtype=np.float64))
    for section in song.sections:
        part = guitar[:, section.stop - (section.stop - section.start) // 4 : section.stop]
        assert (db(part, power) > -25) == (section.kind in ("verse", "chorus", "outro")), section.kind
    f = np.fft.rfftfreq(guitar.shape[1], 1 / SR)
    spectrum = np.abs(np.fft.rfft(guitar[0])) ** 2
    assert spectrum[(f > 75) & (f < 4000)].sum() / spectrum.sum() > 0.9
