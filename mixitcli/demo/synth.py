"""Synthetic multi-instrument songs with true stems, made with numpy from a seed.

The music behind `mixit make-demo-data` (issue 6; the files are written by
:mod:`mixitcli.demo.data`). A song has a tempo, a key (major, minor, dorian or mixolydian),
two chord progressions (verse and chorus) and a plan of sections (intro, verse, break, chorus,
groove, outro) that switches stems off: no vocals or bass in the intro, no drums in a break, no
"other" in a groove. Stems:

- drums: kick (pitch-swept sine), snare (tone + band-passed noise), closed and open hi-hats
  (high-passed noise), a crash at each chorus, fills before a chorus;
- bass: band-limited saw or square following the chord roots, with a filter-like envelope
  (a bright wavetable crossfading into a dark one);
- vocals: a monophonic melody with glides, delayed vibrato, vowel formants (harmonic
  amplitudes shaped by F1-F3 of a, e, i, o, u; diphthongs), breath and consonant noise;
- other: detuned stereo pads, plucked arpeggios and/or rhythmic chord stabs;
- guitar (only with ``guitar=True``, for `make demo-stems`, issue 21): a fifth instrument in its
  own stem, a plucked guitar-like line picking chord tones in a rhythm (harmonics of a string
  plucked near one end, the higher ones dying away faster, with a touch of inharmonicity and
  pick noise), playing in verses, choruses and the outro only.

Each song draws its own timbres, pans, room (a noise reverb), echo and levels from its seed,
so songs differ. Oscillators are band-limited wavetables (no aliasing) rendered per note with
numpy; a 30 s song takes about 0.3 s on one core. Audio is float (c, t), channels first.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from mixitcli.audio import SAMPLE_RATE
from mixitcli.stems import STEMS

SECTION_STEMS = {
    "intro": ("other",),  # drums join with hi-hats only in some songs
    "verse": ("vocals", "drums", "bass", "other"),
    "break": ("vocals", "other"),  # the bass stays in some songs
    "chorus": ("vocals", "drums", "bass", "other"),
    "groove": ("vocals", "drums", "bass"),
    "outro": ("drums", "bass", "other"),
}
"""Which stems play in each kind of section: every stem is off in at least one kind."""
GUITAR = "guitar"
GUITAR_SECTIONS = ("verse", "chorus", "outro")
"""Where the guitar of a ``guitar=True`` song plays: it is silent in intros, breaks and grooves."""
_PICKING = ((0, 2, 4, 6, 8, 10, 12, 14), (0, 3, 6, 8, 11, 14), (0, 2, 3, 6, 8, 10, 11, 14), (0, 4, 6, 8, 12, 14))
"""Picking rhythms of the guitar, 16th-note steps of a bar."""
_CYCLE = ("verse", "break", "chorus", "groove", "verse", "chorus")

_SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
}
_PROGRESSIONS = (
    (0, 5, 3, 4),
    (0, 4, 5, 3),
    (5, 3, 0, 4),
    (0, 3, 4, 3),
    (0, 5, 1, 4),
    (0, 6, 5, 4),
    (0, 3, 0, 4),
    (3, 4, 0, 0),
)
_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_VOWELS = {  # formant frequencies F1, F2, F3 in Hz (an adult male voice; scaled per song)
    "a": (730, 1090, 2440),
    "e": (530, 1840, 2480),
    "i": (270, 2290, 3010),
    "o": (570, 840, 2410),
    "u": (300, 870, 2240),
}
_GROOVES = {  # 16 steps per bar: kick, snare, closed hat, open hat
    "rock": ((0, 8, 10), (4, 12), tuple(range(0, 16, 2)), ()),
    "four": ((0, 4, 8, 12), (4, 12), (0, 4, 8, 12), (2, 6, 10, 14)),
    "half": ((0, 3, 10), (8,), tuple(range(16)), ()),
    "break": ((0, 10), (4, 7, 12, 15), tuple(range(0, 16, 2)), (14,)),
}
_BASS_RHYTHMS = ((0, 2, 4, 6, 8, 10, 12, 14), (0, 3, 6, 8, 11, 14), (0, 8), (0, 4, 8, 12), (0, 6, 8, 10, 14))
_STAB_RHYTHMS = ((2, 6, 10, 14), (0, 6, 12), (0, 3, 6, 10, 12))
_TABLE = 4096  # wavetable length (one period)


@dataclass(frozen=True)
class Section:
    """A part of a song. ``start``/``stop`` are sample indices; ``stems`` are those that play."""

    kind: str
    start: int
    stop: int
    stems: tuple[str, ...]


@dataclass
class Song:
    """A synthesised song.

    Attributes:
        stems: name (bass, drums, vocals, other, and guitar when asked for) -> float32 (c=2, t)
            at ``sample_rate``, peaks below 1 together (the mixture does not clip).
        sample_rate: in Hz.
        tempo_bpm: beats per minute (4 beats a bar).
        key: e.g. "F# dorian".
        sections: the plan, in time order, covering [0, t).
    """

    stems: dict[str, np.ndarray]
    sample_rate: int
    tempo_bpm: float
    key: str
    sections: list[Section]

    @property
    def mixture(self) -> np.ndarray:
        """The sum of the stems, float32 (2, t)."""
        return np.sum(list(self.stems.values()), axis=0, dtype=np.float32)


# --------------------------------------------------------------------------- signal helpers


def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _wavetable(amps: np.ndarray) -> np.ndarray:
    """One period of sum_k amps[k-1] sin(2 pi k x), sampled at _TABLE points plus a wrap point."""
    spec = np.zeros(_TABLE // 2 + 1, np.complex128)
    spec[1 : len(amps) + 1] = -0.5j * _TABLE * np.asarray(amps)
    table = np.fft.irfft(spec, _TABLE)
    return np.append(table, table[0])  # (_TABLE + 1,): no modulo in the lookup


def _harmonics(f0: float, sr: int, wanted: int) -> np.ndarray:
    """Harmonic numbers 1..H with H * f0 below 0.45 sr (no aliasing)."""
    return np.arange(1, max(1, min(wanted, int(0.45 * sr / f0))) + 1, dtype=np.float64)


def _osc(table: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Linear-interpolated wavetable lookup; ``phase`` in cycles (>= 0), (t,) -> (t,)."""
    pos = phase * _TABLE
    i = pos.astype(np.int64)
    frac = pos - i
    i &= _TABLE - 1  # the period (a power of two)
    return table[i] + frac * (table[i + 1] - table[i])


def _envelope(n_gate: int, n_release: int, sr: int, attack_s: float, decay_s: float, sustain: float) -> np.ndarray:
    """Attack, exponential decay to ``sustain``, then a linear release to exactly zero. (n_gate + n_release,)"""
    t = np.arange(n_gate + n_release) / sr
    env = np.where(t < attack_s, t / max(attack_s, 1e-4), sustain + (1 - sustain) * np.exp(-(t - attack_s) / decay_s))
    env[n_gate:] *= np.linspace(1.0, 0.0, n_release) if n_release else 1.0
    return env


def _add(track: np.ndarray, start: int, x: np.ndarray) -> None:
    """track[..., start:start + len] += x, cut at the end of the track."""
    stop = min(track.shape[-1], start + x.shape[-1])
    if stop > start:
        track[..., start:stop] += x[..., : stop - start]


def _pan(x: np.ndarray, pan: float) -> np.ndarray:
    """Constant-power pan of mono (t,) to (2, t); pan in [-1 (left), 1 (right)]."""
    angle = (pan + 1.0) * np.pi / 4
    return np.stack([np.cos(angle) * x, np.sin(angle) * x])


def _shaped_noise(rng: np.random.Generator, n: int, sr: int, lo_hz: float, hi_hz: float) -> np.ndarray:
    """White noise band-passed (2nd-order Butterworth-like magnitudes) and scaled to unit RMS. (n,)"""
    f = np.fft.rfftfreq(n, 1 / sr) + 1e-3
    gain = 1 / np.sqrt(1 + (f / hi_hz) ** 4) / np.sqrt(1 + (lo_hz / f) ** 4)
    x = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * gain, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _fft_size(n: int) -> int:
    """A length >= n of the form 2^a 3^b 5^c, at most ~10 % above n (numpy's FFT is fast there)."""
    best = 1 << (n - 1).bit_length()
    for odd in (1, 3, 5, 9, 15, 25, 27, 45, 75, 81, 125, 135):
        best = min(best, odd << max(0, (math.ceil(n / odd) - 1).bit_length()))
    return best


class _Reverb:
    """Convolution of mono (t,) signals with one stereo impulse response (2, r), in float32 FFTs."""

    def __init__(self, ir: np.ndarray, t: int) -> None:
        self.t, self.n = t, _fft_size(t + ir.shape[-1])
        self.spectrum = np.fft.rfft(ir.astype(np.float32), self.n, axis=-1)  # (2, n // 2 + 1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(t,) -> (2, t): the tail past t is cut."""
        y = np.fft.irfft(np.fft.rfft(x.astype(np.float32), self.n) * self.spectrum, self.n, axis=-1)
        return y[:, : self.t]


# --------------------------------------------------------------------------- the song's plan


@dataclass(frozen=True)
class _Plan:
    """Musical decisions shared by every instrument; times in 16th-note steps."""

    sr: int
    n: int  # samples
    step: float  # samples per 16th note
    n_steps: int
    root: int  # MIDI pitch class 0..11 of the key
    scale: tuple[int, ...]
    progressions: dict[str, tuple[int, ...]]  # "verse" / "chorus" -> scale degrees
    chord_steps: int  # steps per chord
    step_section: np.ndarray  # (n_steps,) index into sections
    sections: list[Section]
    bounds: list[tuple[int, int]]  # each section's [first, last) steps

    def at(self, s: int) -> int:
        return int(round(s * self.step))

    def section(self, s: int) -> Section:
        return self.sections[self.step_section[min(s, self.n_steps - 1)]]

    def section_end(self, s: int) -> int:
        """The first step after the section holding step s."""
        return self.bounds[self.step_section[s]][1]

    def first_of_section(self, s: int) -> bool:
        return self.bounds[self.step_section[s]][0] == s

    def plays(self, stem: str, s: int) -> bool:
        return stem in self.section(s).stems

    def pitch(self, degree: int, octave: int) -> int:
        """MIDI pitch of a scale degree (any integer) in an octave (MIDI octave 4 = C4..B4)."""
        return 12 * (octave + 1) + self.root + 12 * (degree // 7) + self.scale[degree % 7]

    def chord(self, s: int) -> int:
        """The scale degree of the chord root at step s."""
        kind = self.section(s).kind
        progression = self.progressions["chorus" if kind == "chorus" else "verse"]
        return progression[(s // self.chord_steps) % len(progression)]


def _plan(rng: np.random.Generator, seconds: float, sr: int) -> tuple[_Plan, float, str]:
    """Draw tempo, key, progressions and sections. Returns (plan, tempo in bpm, key name)."""
    tempo = float(rng.uniform(84, 150))
    step = sr * 60.0 / tempo / 4
    n = int(round(seconds * sr))
    n_steps = math.ceil(n / step)
    # Sections of 4 bars, or shorter ones so that even a short song holds every kind.
    length = next((k for k in (64, 32, 16) if round(n_steps / k) >= 5), 8)
    n_sections = max(1, round(n_steps / length))  # a remainder under half a section joins the last one
    bounds = [(i * length, (i + 1) * length if i + 1 < n_sections else n_steps) for i in range(n_sections)]
    kinds = ["intro"] + [_CYCLE[i % len(_CYCLE)] for i in range(n_sections - 1)]
    if len(kinds) >= 7:
        kinds[-1] = "outro"
    hats_intro, bass_break = rng.random() < 0.5, rng.random() < 0.5
    sections, step_section = [], np.zeros(n_steps, np.int64)
    for i, (kind, (first, last)) in enumerate(zip(kinds, bounds)):
        stems = (
            SECTION_STEMS[kind]
            + (("drums",) if kind == "intro" and hats_intro else ())
            + (("bass",) if kind == "break" and bass_break else ())
        )
        sections.append(
            Section(
                kind,
                min(n, int(round(first * step))),
                min(n, int(round(last * step))),
                tuple(s for s in STEMS if s in stems),
            )
        )
        step_section[first:last] = i
    mode = str(rng.choice(list(_SCALES)))
    root = int(rng.integers(12))
    picks = rng.choice(len(_PROGRESSIONS), 2, replace=False)
    plan = _Plan(
        sr=sr,
        n=n,
        step=step,
        n_steps=n_steps,
        root=root,
        scale=_SCALES[mode],
        progressions={"verse": _PROGRESSIONS[picks[0]], "chorus": _PROGRESSIONS[picks[1]]},
        chord_steps=int(rng.choice([8, 16, 16, 32])),
        step_section=step_section,
        sections=sections,
        bounds=bounds,
    )
    return plan, tempo, f"{_NOTE_NAMES[root]} {mode}"


# --------------------------------------------------------------------------- instruments


def _drums(rng: np.random.Generator, p: _Plan) -> np.ndarray:
    """Kick, snare, hats and crash on a groove, with fills; (2, n)."""
    sr = p.sr
    t = np.arange(int(0.45 * sr)) / sr
    f_hi, f_lo, sweep = rng.uniform(110, 180), rng.uniform(42, 60), rng.uniform(0.015, 0.04)
    phase = f_lo * t + (f_hi - f_lo) * sweep * (1 - np.exp(-t / sweep))
    kick = np.tanh(1.5 * np.sin(2 * np.pi * phase) * np.exp(-t / rng.uniform(0.08, 0.2)))
    kick[: int(0.003 * sr)] += 0.3 * rng.standard_normal(int(0.003 * sr))
    t_snare = t[: int(0.3 * sr)]
    snare_tone = np.sin(2 * np.pi * rng.uniform(160, 230) * t_snare) * np.exp(-t_snare / 0.05)
    snare_noise = rng.uniform(0.5, 1.2)
    snare = [
        snare_tone
        + snare_noise
        * _shaped_noise(rng, len(t_snare), sr, 900, 7000)
        * np.exp(-t_snare / rng.uniform(0.06, 0.14))
        * 0.4
        for _ in range(3)
    ]
    hat_decay = rng.uniform(0.02, 0.05)
    hat_lo = rng.uniform(5000, 8000)
    hats = [
        0.25 * _shaped_noise(rng, int(0.15 * sr), sr, hat_lo, 16000) * np.exp(-t[: int(0.15 * sr)] / hat_decay)
        for _ in range(3)
    ]
    t_open = np.arange(int(0.5 * sr)) / sr
    open_hat = 0.2 * _shaped_noise(rng, len(t_open), sr, hat_lo, 16000) * np.exp(-t_open / 0.18)
    t_crash = np.arange(int(1.8 * sr)) / sr
    crash = 0.25 * _shaped_noise(rng, len(t_crash), sr, 3000, 15000) * np.exp(-t_crash / 0.5)

    groove = _GROOVES[str(rng.choice(list(_GROOVES)))]
    hat_pan, jitter = rng.uniform(-0.5, 0.5), 0.004 * sr
    centre, side = np.zeros(p.n), np.zeros((2, p.n))
    for s in range(p.n_steps):
        if not p.plays("drums", s):
            continue
        sec, pos = p.section(s), s % 16
        at = p.at(s) + int(abs(rng.normal(0, jitter)))  # late, never early: sections start clean
        velocity = rng.uniform(0.75, 1.0)
        hats_only = sec.kind == "intro"
        next_beat = s - s % 4 + 4
        fill = next_beat == p.section_end(s) < p.n_steps and p.section(next_beat).kind == "chorus"
        if fill and not hats_only:  # a snare roll on the last beat before a chorus
            _add(centre, at, snare[s % 3] * (0.5 + 0.12 * (s % 4 + 1)))
            continue
        if not hats_only and pos in groove[0]:
            _add(centre, at, kick * velocity)
        if not hats_only and pos in groove[1]:
            _add(centre, at, snare[s % 3] * velocity)
        if pos in groove[2]:
            _add(side, at, _pan(hats[s % 3] * velocity * (1.0 if pos % 4 == 0 else 0.7), hat_pan))
        if pos in groove[3] and not hats_only:
            _add(side, at, _pan(open_hat * velocity, hat_pan))
        if sec.kind == "chorus" and p.first_of_section(s):
            _add(side, at, _pan(crash, -hat_pan))
    return _pan(centre, 0.0) + side


def _bass(rng: np.random.Generator, p: _Plan) -> np.ndarray:
    """Chord roots (with octave and fifth jumps) on a rhythm, saw or square with a pluck; (2, n)."""
    sr = p.sr
    rhythm = _BASS_RHYTHMS[rng.integers(len(_BASS_RHYTHMS))]
    square = rng.random() < 0.4
    bright, dark = rng.uniform(8, 20), rng.uniform(1.5, 4)
    pluck, gate = rng.uniform(0.04, 0.2), rng.uniform(0.6, 0.95)
    up = int(rng.choice([0, 12]))
    out = np.zeros(p.n)
    onsets = [s for s in range(p.n_steps) if s % 16 in rhythm and p.plays("bass", s)]
    for i, s in enumerate(onsets):
        nxt = onsets[i + 1] if i + 1 < len(onsets) else s + 16
        length = min(nxt - s, 8, p.section_end(s) - s)
        degree = p.chord(s) + (4 if rng.random() < 0.12 else 0)
        midi = p.pitch(degree, 1) + up + (12 if rng.random() < 0.15 else 0)
        midi += 12 if midi < 33 else 0  # nothing below A1 (55 Hz)
        f0 = _hz(midi)
        k = _harmonics(f0, sr, 40)
        base = np.where(k % 2 == 1, 1 / k, 0.0) if square else 1 / k
        n_gate, n_rel = int(length * p.step * gate), int(0.02 * sr)
        phase = f0 * np.arange(n_gate + n_rel) / sr + rng.random()
        mix = np.exp(-np.arange(n_gate + n_rel) / (pluck * sr))  # bright -> dark: a low-pass sweeping down
        tone = mix * _osc(_wavetable(base * np.exp(-k / bright)), phase) + (1 - mix) * _osc(
            _wavetable(base * np.exp(-k / dark)), phase
        )
        tone += 0.5 * np.sin(2 * np.pi * phase)  # sub
        _add(out, p.at(s), tone * _envelope(n_gate, n_rel, sr, 0.004, 0.3, 0.7) * rng.uniform(0.8, 1.0))
    return _pan(out, rng.uniform(-0.1, 0.1))


def _formant_amps(f0: float, k: np.ndarray, vowel: str, shift: float, tilt: float) -> np.ndarray:
    """Harmonic amplitudes of a voice: a source spectrum k^-tilt shaped by three resonances."""
    f = k * f0
    gain = np.zeros_like(f)
    for formant, amp, width in zip(_VOWELS[vowel], (1.0, 0.6, 0.3), (80.0, 100.0, 140.0)):
        gain += amp / (1 + ((f - formant * shift) / width) ** 2)
    return k**-tilt * (0.05 + gain)


def _melody(rng: np.random.Generator, p: _Plan) -> list[tuple[int, int, int]]:
    """Notes (start step, length in steps, MIDI pitch) of the lead, sung where vocals play."""
    motifs = []
    for _ in range(3):
        pos, cells = int(rng.choice([0, 0, 2])), []
        while pos < 14:
            length = int(rng.choice([1, 2, 2, 3, 4, 4, 6, 8]))
            if rng.random() < 0.15:
                pos += 2  # a rest
                continue
            cells.append((pos, min(length, 16 - pos)))
            pos += length
        motifs.append(cells)
    form = [int(rng.integers(3)) for _ in range(4)]  # motif of each bar in a 4-bar phrase
    degree, notes = 0, []
    for (first, last), section in zip(p.bounds, p.sections):
        if "vocals" not in section.stems:
            continue
        sung = []
        for bar in range(first // 16, math.ceil(last / 16)):
            if bar % 4 == 3 and last - first > 16 and rng.random() < 0.35:
                continue  # breathe between phrases
            sung += [
                (bar * 16 + pos, length) for pos, length in motifs[form[bar % 4]] if first <= bar * 16 + pos < last
            ]
        if not sung:  # a short section that the motifs miss: one long note
            sung = [(first, 8)]
        for s, length in sung:
            degree = int(np.clip(degree + rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]), -3, 9))
            if s % 4 == 0:  # strong beats land on a chord tone
                chord = p.chord(s)
                degree = min((chord + c + 7 * o for c in (0, 2, 4) for o in (-1, 0, 1)), key=lambda d: abs(d - degree))
            lift = 2 if section.kind == "chorus" else 0
            notes.append((s, min(length, last - s), p.pitch(degree + lift, 4)))
    return notes


def _vocals(rng: np.random.Generator, p: _Plan) -> np.ndarray:
    """A sung lead: glides, vibrato, vowel formants, breath and consonants, echo; (2, n)."""
    sr = p.sr
    shift, tilt = rng.uniform(0.95, 1.25), rng.uniform(0.6, 1.2)
    register = int(rng.choice([-12, 0])) if shift < 1.1 else 0
    vib_rate, vib_depth = rng.uniform(4.5, 6.5), rng.uniform(0.15, 0.5)  # Hz, semitones
    breath = rng.uniform(0.03, 0.15)  # noise RMS relative to the voiced part
    noise = _shaped_noise(rng, sr, sr, 2000, 10000)  # 1 s, looped
    hiss = _shaped_noise(rng, sr // 10, sr, 4000, 12000)
    vowels = list(_VOWELS)
    out = np.zeros(p.n)
    prev_midi, prev_end = None, -1
    for s, length, midi in _melody(rng, p):
        midi += register
        n_gate, n_rel = int(length * p.step * rng.uniform(0.8, 1.0)), int(0.06 * sr)
        t = np.arange(n_gate + n_rel) / sr
        bend = vib_depth * np.sin(2 * np.pi * vib_rate * t) * np.clip(t / 0.25 - 0.4, 0, 1)
        if prev_midi is not None and s - prev_end <= 1:
            bend += (prev_midi - midi) * np.exp(-t / 0.04)  # legato glide from the last note
        f = _hz(midi) * 2.0 ** (bend / 12)
        phase = np.cumsum(f) / sr
        k = _harmonics(_hz(max(midi, prev_midi or midi) + 1), sr, 60)  # room for vibrato and glide
        a, b = rng.choice(vowels, 2)
        morph = np.clip(t / max(t[-1], 1e-3) * rng.uniform(0, 1.5), 0, 1)  # a diphthong in some notes
        tone = (1 - morph) * _osc(_wavetable(_formant_amps(_hz(midi), k, str(a), shift, tilt)), phase)
        tone += morph * _osc(_wavetable(_formant_amps(_hz(midi), k, str(b), shift, tilt)), phase)
        tone /= np.sqrt(np.mean(tone**2)) + 1e-9
        tone += breath * np.resize(np.roll(noise, -int(rng.integers(sr))), len(tone))
        env = _envelope(n_gate, n_rel, sr, 0.03, 0.4, 0.8)
        note = tone * env * rng.uniform(0.7, 1.0)
        if rng.random() < 0.3:
            note[: len(hiss)] += 0.4 * hiss[: len(note)]  # an "s" or "t"
        _add(out, p.at(s), note)
        prev_midi, prev_end = midi, s + length
    stereo = _pan(out, rng.uniform(-0.15, 0.15))
    if rng.random() < 0.6:  # ping-pong echo
        delay, feedback = int(p.step * rng.choice([3, 4, 6])), rng.uniform(0.2, 0.4)
        for tap in range(1, 5):
            _add(stereo[tap % 2], delay * tap, out * feedback**tap)
    return stereo


def _chord_tone(
    rng: np.random.Generator, p: _Plan, midi: float, n_gate: int, n_rel: int, brightness: float
) -> np.ndarray:
    k = _harmonics(_hz(midi), p.sr, 30)
    phase = _hz(midi) * np.arange(n_gate + n_rel) / p.sr + rng.random()
    return _osc(_wavetable(np.exp(-k / brightness) / k), phase)


def _other(rng: np.random.Generator, p: _Plan) -> np.ndarray:
    """Chords: a detuned stereo pad, a plucked arpeggio and/or rhythmic stabs; (2, n)."""
    sr = p.sr
    layers = {"pad": rng.random() < 0.7, "arp": rng.random() < 0.6, "stab": rng.random() < 0.5}
    if not (layers["pad"] or layers["arp"]):  # stabs alone would leave the intro empty
        layers["pad"] = True
    octave, bright = int(rng.choice([3, 4])), rng.uniform(2, 8)
    detune, width = rng.uniform(0.05, 0.15), rng.uniform(0.4, 0.9)  # semitones, pan
    arp_rate, arp_pan, stab_pan = int(rng.choice([1, 2, 2])), rng.uniform(-0.7, 0.7), rng.uniform(-0.6, 0.6)
    stab_rhythm = _STAB_RHYTHMS[rng.integers(len(_STAB_RHYTHMS))]
    seventh = rng.random() < 0.4
    out = np.zeros((2, p.n))
    for s in range(p.n_steps):
        if not p.plays("other", s):
            continue
        sec = p.section(s)
        degree = p.chord(s)
        tones = [p.pitch(degree + d, octave) for d in ((0, 2, 4, 6) if seventh else (0, 2, 4))]
        if layers["pad"] and (s % p.chord_steps == 0 or p.first_of_section(s)):
            length = min(p.chord_steps - s % p.chord_steps, p.section_end(s) - s)
            n_gate, n_rel = int(length * p.step), int(0.25 * sr)
            env = _envelope(n_gate, n_rel, sr, 0.15, 1.0, 0.8) * 0.25
            for side, shift in ((-width, -detune), (width, detune)):  # two voices a few cents apart, left and right
                voice = sum(_chord_tone(rng, p, m + shift, n_gate, n_rel, bright) for m in tones)
                _add(out, p.at(s), _pan(voice * env, side))
        arp_on = layers["arp"] and (sec.kind in ("chorus", "outro") or not layers["pad"])
        if arp_on and s % arp_rate == 0:
            i = (s // arp_rate) % (2 * len(tones) - 2)
            midi = tones[i if i < len(tones) else 2 * len(tones) - 2 - i] + 12
            n_gate, n_rel = int(arp_rate * p.step * 0.9), int(0.01 * sr)
            env = _envelope(n_gate, n_rel, sr, 0.002, 0.08, 0.2) * 0.3
            _add(out, p.at(s), _pan(_chord_tone(rng, p, midi, n_gate, n_rel, bright * 2) * env, arp_pan))
        if layers["stab"] and s % 16 in stab_rhythm and sec.kind != "intro":
            n_gate, n_rel = int(1.5 * p.step), int(0.02 * sr)
            env = _envelope(n_gate, n_rel, sr, 0.003, 0.12, 0.3) * 0.2
            stab = sum(_chord_tone(rng, p, m, n_gate, n_rel, bright * 1.5) for m in tones)
            _add(out, p.at(s), _pan(stab * env, stab_pan))
    return out


def _pluck(rng: np.random.Generator, f0: float, n_gate: int, sr: int, brightness: float, position: float) -> np.ndarray:
    """One plucked-string note of ``n_gate`` samples plus a short damping release; (n,).

    Harmonic k has the amplitude of a string plucked at ``position`` of its length
    (|sin(pi k position)| / k) and dies away at a rate growing with k^2, so the note starts
    bright and mellows; the partials are slightly stretched (inharmonicity) and the pick adds
    2 ms of noise.
    """
    n_rel = int(0.015 * sr)
    t = np.arange(n_gate + n_rel) / sr
    k = _harmonics(f0 * 1.02, sr, 24)  # (H,)
    amps = np.abs(np.sin(np.pi * k * position)) / k
    decay = 2.5 + (k / brightness) ** 2  # per second
    freq = k * f0 * np.sqrt(1 + 2e-4 * k**2)
    phase = rng.random(len(k))
    partials = np.sin(2 * np.pi * (freq[:, None] * t[None] + phase[:, None])) * np.exp(
        -decay[:, None] * t[None]
    )  # (H, n)
    note = (amps[:, None] * partials).sum(axis=0)
    attack = int(0.002 * sr)
    note[:attack] += 0.3 * rng.standard_normal(attack) * np.linspace(1, 0, attack)
    note[n_gate:] *= np.linspace(1.0, 0.0, n_rel)  # the next pick damps the string
    return note


def _guitar(rng: np.random.Generator, p: _Plan) -> np.ndarray:
    """A picked guitar line on the chord tones (root, fifth, octave, third) in its sections; (2, n)."""
    sr = p.sr
    rhythm = _PICKING[rng.integers(len(_PICKING))]
    octave = int(rng.choice([2, 3]))
    brightness, position = rng.uniform(6, 14), rng.uniform(0.08, 0.22)
    order = (0, 4, 7, 2) if rng.random() < 0.5 else (0, 2, 4, 7)  # scale steps above the chord root
    out = np.zeros(p.n)
    onsets = [s for s in range(p.n_steps) if s % 16 in rhythm and p.plays(GUITAR, s)]
    for i, s in enumerate(onsets):
        nxt = onsets[i + 1] if i + 1 < len(onsets) else s + 4
        length = min(nxt - s, 6, p.section_end(s) - s)
        midi = p.pitch(p.chord(s) + order[i % len(order)], octave)
        midi += 12 if midi < 40 else 0  # nothing below E2, the guitar's lowest string
        note = _pluck(rng, _hz(midi), int(length * p.step), sr, brightness, position)
        _add(out, p.at(s), note * rng.uniform(0.7, 1.0))
    return _pan(out, rng.uniform(-0.6, 0.6))


def _room(rng: np.random.Generator, sr: int) -> np.ndarray:
    """A stereo noise reverb: decorrelated channels, -60 dB at its end (so tails end); (2, r)."""
    t60, predelay = rng.uniform(0.4, 1.2), int(rng.uniform(0.005, 0.025) * sr)
    t = np.arange(int(t60 * sr)) / sr
    tail = np.stack([_shaped_noise(rng, len(t), sr, 200, rng.uniform(3000, 8000)) for _ in range(2)]) * 10 ** (
        -3 * t / t60
    )
    ir = np.concatenate([np.zeros((2, predelay)), tail], axis=1)
    return ir / np.sqrt(np.sum(ir**2, axis=1, keepdims=True))


# --------------------------------------------------------------------------- songs


def synthesize_song(seed: int, seconds: float, sample_rate: int = SAMPLE_RATE, *, guitar: bool = False) -> Song:
    """Synthesise one song with true stems. The same (seed, seconds, sample_rate, guitar) gives the same song.

    Args:
        seed: any non-negative integer; different seeds give different tempo, key, timbres, mix.
        seconds: length in seconds (> 0). Below ~10 s a song may not hold every kind of section.
        sample_rate: in Hz.
        guitar: add a fifth stem, ``guitar`` (a picked line in :data:`GUITAR_SECTIONS`). The
            four other stems are drawn as without it; only the common master gain differs.

    Returns:
        A :class:`Song` with stems float32 (2, round(seconds * sample_rate)).

    Raises:
        ValueError: a negative seed, or seconds or sample_rate not positive.
    """
    if not (seconds > 0 and math.isfinite(seconds)) or sample_rate <= 0 or seed < 0:
        raise ValueError(f"seed must be >= 0 and seconds, sample_rate > 0; got {seed}, {seconds}, {sample_rate}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x50_4E_47]))
    plan, tempo, key = _plan(rng, seconds, sample_rate)
    if guitar:
        sections = [
            dataclasses.replace(x, stems=x.stems + (GUITAR,)) if x.kind in GUITAR_SECTIONS else x for x in plan.sections
        ]
        plan = dataclasses.replace(plan, sections=sections)
    # One generator per instrument, so that changing one instrument keeps the others.
    *instrument_rngs, mix_rng = rng.spawn(len(STEMS) + 1)
    gens = dict(zip(STEMS, instrument_rngs))
    raw = {
        "drums": _drums(gens["drums"], plan),
        "bass": _bass(gens["bass"], plan),
        "vocals": _vocals(gens["vocals"], plan),
        "other": _other(gens["other"], plan),
    }
    reverb = _Reverb(_room(mix_rng, sample_rate), plan.n)
    sends = {
        "vocals": mix_rng.uniform(0.1, 0.35),
        "other": mix_rng.uniform(0.15, 0.4),
        "drums": mix_rng.uniform(0.03, 0.12),
    }
    levels_db = {"vocals": 0.0, "drums": -1.0, "bass": -3.0, "other": -4.0}
    stems = {}
    for name in STEMS:
        x = raw[name]
        if name in sends:
            x = x + sends[name] * reverb(x.mean(axis=0))
        rms = np.sqrt(np.mean(x**2))
        stems[name] = x / (rms + 1e-12) * 10 ** ((levels_db[name] + mix_rng.uniform(-3, 3)) / 20)
    if guitar:  # its own generator, so that the other instruments and their mix stay as they are
        guitar_rng = np.random.default_rng(np.random.SeedSequence([seed, 0x50_4E_47, len(STEMS)]))
        x = _guitar(guitar_rng, plan)
        x = x + guitar_rng.uniform(0.1, 0.3) * reverb(x.mean(axis=0))
        stems[GUITAR] = x / (np.sqrt(np.mean(x**2)) + 1e-12) * 10 ** (guitar_rng.uniform(-5, -1) / 20)
    # Master: a loudness drawn per song (mixture RMS in dBFS), then a common gain keeps peaks < 1.
    mixture = sum(stems.values())
    gain = 10 ** (mix_rng.uniform(-20, -14) / 20) / (np.sqrt(np.mean(mixture**2)) + 1e-12)
    peak = max(np.abs(mixture).max(), max(np.abs(x).max() for x in stems.values())) * gain
    gain *= min(1.0, 0.95 / peak)
    return Song(
        stems={n: (x * gain).astype(np.float32) for n, x in stems.items()},
        sample_rate=sample_rate,
        tempo_bpm=tempo,
        key=key,
        sections=plan.sections,
    )
