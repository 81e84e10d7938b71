"""The demo's datasets, written from synthetic songs: `mixit make-demo-data`.

Issue 6 asks for a demo that runs every stage here, with no download. This module writes the
two datasets the pipeline reads (docs/method.md §2), from songs of :mod:`mixitcli.demo.synth`:

- unlabeled music, FMA-like (``OUT/unlabeled/<3 digits>/<6 digits>.<ext>``): mixtures only,
  in FLAC, MP3, WAV and Ogg Vorbis, mostly 44.1 kHz with every fifth file at 48 kHz so that
  `mixit prepare-fma --audio-dir` resamples some;
- a MUSDB18-HQ-layout set with true stems
  (``OUT/musdb/{train,test}/<Artist - Title>/{mixture,vocals,drums,bass,other}.wav``), 16-bit
  stereo 44.1 kHz WAV like the real dataset, with the mixture the exact integer sum of the
  stems; a few training songs carry standard validation names so the validation split exists.
  With ``guitar``, every song has a fifth stem, ``guitar.wav`` (`make demo-stems`, issue 21).

Everything follows from the seed: the same options write the same files (bit for bit, except
that Ogg streams carry a random serial number; their audio is identical).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mixitcli import audio
from mixitcli.audio import SAMPLE_RATE
from mixitcli.data.musdb import SOURCES, VALIDATION_TRACKS
from mixitcli.demo.synth import GUITAR, synthesize_song
from mixitcli.progress import Progress
from mixitcli.storage import atomic_write_text

UNLABELED_FORMATS = (".flac", ".mp3", ".wav", ".ogg")
"""Formats of the unlabeled songs, in turn (FMA itself is MP3)."""
HIGH_RATE, HIGH_RATE_EVERY = 48000, 5
"""Every fifth unlabeled song is written at 48 kHz (prepare-fma resamples it to 44.1 kHz)."""
MARKER = "demo.json"
"""Written in OUT when a run starts and rewritten with the summary when it ends."""

# Words of the made-up "Artist - Title" names of the MUSDB-like songs.
_WORDS = (
    "Amber",
    "Static",
    "Velvet",
    "Paper",
    "Neon",
    "Silver",
    "Hollow",
    "Crimson",
    "Quiet",
    "Electric",
    "Northern",
    "Glass",
    "Wild",
    "Lunar",
    "Broken",
    "Golden",
    "Distant",
    "Midnight",
    "Copper",
    "Ivory",
)
_NOUNS = (
    "Harbour",
    "Engines",
    "Foxes",
    "Orchard",
    "Signals",
    "Tides",
    "Lanterns",
    "Machines",
    "Rivers",
    "Pilots",
    "Echoes",
    "Gardens",
    "Satellites",
    "Winters",
    "Sparrows",
    "Horizons",
    "Mirrors",
    "Cities",
    "Comets",
    "Roads",
)


class DemoDataError(ValueError):
    """The options of make-demo-data are unusable, or OUT holds something it must not replace.

    Attributes:
        problems: every problem found, so the CLI can report them all at once.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def exact_sum_int16(stems: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantise stems to 16 bits so that their integer sum is the mixture and nothing clips.

    Args:
        stems: float (n, c, t) in [-1, 1) full scale.

    Returns:
        (stems, mixture): int16 (n, c, t) and int16 (c, t) with mixture == stems.sum(0) exactly.
        A common gain below 1 is applied only when the sum or a stem would reach full scale.
    """
    if stems.ndim != 3:
        raise ValueError(f"stems must be shaped (n, c, t), got {stems.shape}")
    scale = 32767.0
    peak = max(float(np.abs(stems.sum(axis=0)).max(initial=0.0)), float(np.abs(stems).max(initial=0.0)))
    if peak * scale > 32760:  # rounding moves the sum by at most n/2 LSB: keep that margin
        scale *= 32760 / (peak * scale)
    q = np.round(stems * scale).astype(np.int32)
    mixture = q.sum(axis=0)
    if np.abs(mixture).max(initial=0) > 32767:  # cannot happen for n <= 14 stems; never write a wrapped sum
        raise RuntimeError(f"exact_sum_int16: the mixture reaches {np.abs(mixture).max()} after rounding")
    return q.astype(np.int16), mixture.astype(np.int16)


def _write_pcm16(path: Path, data: np.ndarray, sample_rate: int) -> None:
    """Write int16 (c, t) as a 16-bit WAV, via a temporary name.

    audio.write takes floats; writing the integers themselves keeps the exact sum whatever
    float scaling the libsndfile at hand uses.
    """
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    sf.write(str(tmp), np.ascontiguousarray(data.T), sample_rate, format="WAV", subtype="PCM_16")
    tmp.replace(path)


def _song_seed(seed: int, kind: int, index: int) -> int:
    """A song's own seed: independent across the unlabeled set (kind 0), MUSDB train (1) and test (2)."""
    return int(np.random.SeedSequence([seed, kind, index]).generate_state(1)[0])


def _check(counts: dict[str, int], seconds: tuple[str, float], valid: tuple[str, int, int] | None = None) -> None:
    """Raise DemoDataError listing every problem: negative ``counts`` (name -> value), non-positive
    ``seconds`` (name, value), ``valid`` = (name, n_valid, n_train) out of 0..min(n_train, 14)."""
    problems = [f"{name} must be >= 0, got {n}" for name, n in counts.items() if n < 0]
    if not (seconds[1] > 0 and math.isfinite(seconds[1])):
        problems.append(f"{seconds[0]} must be a positive number of seconds, got {seconds[1]}")
    if valid is not None and not 0 <= valid[1] <= min(valid[2], len(VALIDATION_TRACKS)):
        top = min(max(valid[2], 0), len(VALIDATION_TRACKS))
        problems.append(
            f"{valid[0]} must be between 0 and {top} (the train songs, at most {len(VALIDATION_TRACKS)} names), got {valid[1]}"
        )
    if problems:
        raise DemoDataError(problems)


def make_unlabeled(
    out_dir: str | Path, n_songs: int, seconds: float, seed: int, *, on_song: Callable[[str], None] | None = None
) -> dict:
    """Write ``n_songs`` mixtures as an FMA-like folder: ``out_dir/<3 digits>/<6 digits>.<ext>``.

    Formats take turns (FLAC 16/24-bit, MP3, WAV, Ogg Vorbis); every fifth song is at 48 kHz;
    all are stereo. `mixit prepare-fma --audio-dir out_dir` reads the folder.

    Args:
        out_dir: folder to write into (created).
        n_songs: number of songs (>= 0).
        seconds: length of each song in seconds (> 0).
        seed: the set's seed; song i's seed derives from (seed, i).
        on_song: called with each written file's path relative to ``out_dir``.

    Returns:
        {"dir", "songs", "seconds" (total), "files" (relative paths), "formats" and
        "sample_rates" (counts)}.

    Raises:
        DemoDataError: a negative count or seed, or a non-positive length.
    """
    _check({"n_songs": n_songs, "seed": seed}, ("seconds", seconds))
    out_dir = Path(out_dir)
    files, formats, rates = [], {}, {}
    for i in range(n_songs):
        rate = HIGH_RATE if i % HIGH_RATE_EVERY == HIGH_RATE_EVERY - 1 else SAMPLE_RATE
        ext = UNLABELED_FORMATS[i % len(UNLABELED_FORMATS)]
        rel = f"{i // 1000:03d}/{i:06d}{ext}"
        song = synthesize_song(_song_seed(seed, 0, i), seconds, rate)
        audio.write(out_dir / rel, song.mixture, rate, bits="24" if i % 3 == 0 else "16")
        files.append(rel)
        formats[ext] = formats.get(ext, 0) + 1
        rates[str(rate)] = rates.get(str(rate), 0) + 1
        if on_song:
            on_song(rel)
    return {
        "dir": str(out_dir),
        "songs": n_songs,
        "seconds": n_songs * seconds,
        "files": files,
        "formats": formats,
        "sample_rates": rates,
    }


def _track_names(seed: int, n: int, taken: set[str]) -> list[str]:
    """``n`` made-up "Artist - Title" names, none in ``taken`` or repeated."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    names: list[str] = []
    while len(names) < n:
        artist = (
            f"The {rng.choice(_WORDS)} {rng.choice(_NOUNS)}"
            if rng.random() < 0.5
            else f"{rng.choice(_WORDS)} {rng.choice(_NOUNS)}"
        )
        name = f"{artist} - {rng.choice(_WORDS)} {rng.choice(_NOUNS)}"
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def make_musdb(
    out_dir: str | Path,
    n_train: int,
    n_test: int,
    seconds: float,
    seed: int,
    *,
    n_valid: int = 3,
    guitar: bool = False,
    on_song: Callable[[str], None] | None = None,
) -> dict:
    """Write a MUSDB18-HQ-layout set: ``out_dir/{train,test}/<Artist - Title>/{mixture,vocals,drums,bass,other}.wav``
    (and ``guitar.wav`` with ``guitar``).

    Stereo 44.1 kHz 16-bit WAV; each mixture is the exact sum of its stems' samples (see
    :func:`exact_sum_int16`). The first ``n_valid`` training songs are named after standard
    validation tracks (``mixitcli.data.musdb.VALIDATION_TRACKS``), so prepare-musdb puts them
    in the validation split; the other names are made up.

    Args:
        out_dir: folder to write into (created).
        n_train: songs in train/, validation ones included (>= 0).
        n_test: songs in test/ (>= 0).
        seconds: length of each song in seconds (> 0; prepare-musdb needs >= 8 to find segments).
        seed: the set's seed.
        n_valid: how many training songs carry validation names (0 .. min(n_train, 14)).
        guitar: every song gets a fifth stem, a plucked guitar-like line (:func:`synthesize_song`).
        on_song: called with each written track's "split/name".

    Returns:
        {"root", "songs", "seconds" (total), "tracks": {"train", "valid", "test": names}}.

    Raises:
        DemoDataError: a negative count or seed, a non-positive length, or n_valid out of range.
    """
    _check({"n_train": n_train, "n_test": n_test, "seed": seed}, ("seconds", seconds), ("n_valid", n_valid, n_train))
    out_dir = Path(out_dir)
    names = _track_names(seed, n_train - n_valid + n_test, set(VALIDATION_TRACKS))
    splits = {
        "train": list(VALIDATION_TRACKS[:n_valid]) + names[: n_train - n_valid],
        "test": names[n_train - n_valid :],
    }
    sources = SOURCES + ((GUITAR,) if guitar else ())
    for kind, (split, tracks) in enumerate(splits.items(), start=1):
        for i, name in enumerate(tracks):
            song = synthesize_song(_song_seed(seed, kind, i), seconds, SAMPLE_RATE, guitar=guitar)
            stems, mixture = exact_sum_int16(np.stack([song.stems[s] for s in sources[1:]]))
            folder = out_dir / split / name
            for source, data in zip(sources, [mixture, *stems]):
                _write_pcm16(folder / f"{source}.wav", data, SAMPLE_RATE)
            if on_song:
                on_song(f"{split}/{name}")
    tracks = {"train": splits["train"][n_valid:], "valid": splits["train"][:n_valid], "test": splits["test"]}
    return {
        "root": str(out_dir),
        "songs": n_train + n_test,
        "seconds": (n_train + n_test) * seconds,
        "tracks": tracks,
        "stems": list(sources[1:]),
    }


def make_demo_data(
    out: str | Path,
    *,
    songs: int = 40,
    musdb_train: int = 12,
    musdb_test: int = 4,
    musdb_valid: int | None = None,
    seconds: float = 30.0,
    seed: int = 0,
    guitar: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write both demo datasets: ``out/unlabeled/`` (:func:`make_unlabeled`) and ``out/musdb/`` (:func:`make_musdb`).

    Checks every option first and reports all problems at once. ``out/demo.json`` marks the
    folder as ours (written first) and holds the summary (rewritten at the end).

    Args:
        out: output folder (created).
        songs, musdb_train, musdb_test, seconds, seed: see the two generators (``n_songs``,
            ``n_train``, ``n_test``, ...). The defaults make 20 min of unlabeled music and 16
            MUSDB-like songs, in about 30 s on one core.
        musdb_valid: ``n_valid`` of :func:`make_musdb` (None: min(3, musdb_train // 2), so train keeps songs).
        guitar: the MUSDB-layout songs get a fifth stem, guitar.wav (:func:`make_musdb`).
        overwrite: replace out/unlabeled and out/musdb when a previous run left them.
        progress: show the progress bar (:mod:`mixitcli.progress`) on stderr.

    Returns:
        {"out", "seed", "seconds_per_song", "unlabeled": ..., "musdb": ..., "elapsed_s"}.

    Raises:
        DemoDataError: bad options, or out/unlabeled or out/musdb already exist (without
            ``overwrite``, or without the marker that says a previous run made them).
    """
    out = Path(out)
    targets = [out / "unlabeled", out / "musdb"]
    musdb_valid = min(3, max(musdb_train, 0) // 2) if musdb_valid is None else musdb_valid
    problems = [f"{out} is a file, not a folder"] if out.exists() and not out.is_dir() else []
    try:
        counts = {"--songs": songs, "--musdb-train": musdb_train, "--musdb-test": musdb_test, "--seed": seed}
        _check(counts, ("--seconds", seconds), ("--musdb-valid", musdb_valid, musdb_train))
    except DemoDataError as e:
        problems += e.problems
    existing = [p for p in targets if p.is_dir() and any(p.iterdir())]
    if existing and not overwrite:
        problems.append(
            f"{', '.join(map(str, existing))} already exist(s); pass --overwrite to replace, or choose another OUT"
        )
    elif existing and not (out / MARKER).is_file():
        problems.append(
            f"{', '.join(map(str, existing))} exist(s) but {out / MARKER} does not: not made by make-demo-data, so not replaced"
        )
    if problems:
        raise DemoDataError(problems)
    for p in existing:
        shutil.rmtree(p)
    out.mkdir(parents=True, exist_ok=True)
    options = {
        "songs": songs,
        "musdb_train": musdb_train,
        "musdb_test": musdb_test,
        "musdb_valid": musdb_valid,
        "seconds": seconds,
        "seed": seed,
        "guitar": guitar,
    }
    atomic_write_text(out / MARKER, json.dumps({"complete": False, "options": options}, indent=2))
    began = time.perf_counter()
    with Progress(enabled=progress) as display:
        bar = display.bar("synthesising", songs + musdb_train + musdb_test, unit="songs")

        def advance(label: str) -> None:  # the song just written, shown until the next one
            bar.advance(info=label)

        unlabeled = make_unlabeled(targets[0], songs, seconds, seed, on_song=advance)
        musdb = make_musdb(
            targets[1], musdb_train, musdb_test, seconds, seed, n_valid=musdb_valid, guitar=guitar, on_song=advance
        )
        bar.update(info="")  # the final line counts the songs; it names none
    summary = {
        "complete": True,
        "options": options,
        "out": str(out),
        "seed": seed,
        "seconds_per_song": seconds,
        "unlabeled": unlabeled,
        "musdb": musdb,
        "elapsed_s": round(time.perf_counter() - began, 2),
    }
    atomic_write_text(out / MARKER, json.dumps(summary, indent=2))
    return summary


def describe(summary: dict) -> str:
    """A few lines for the terminal: what was written where, and the commands that read it."""
    u, m = summary["unlabeled"], summary["musdb"]
    formats = ", ".join(f"{n} {ext[1:]}" for ext, n in sorted(u["formats"].items()))
    rates = ", ".join(f"{n} at {int(r) / 1000:g} kHz" for r, n in sorted(u["sample_rates"].items()))
    t = m["tracks"]
    lines = [
        f"unlabeled: {u['songs']} songs of {summary['seconds_per_song']:g} s in {u['dir']} ({formats}; {rates})",
        f"musdb: {len(t['train'])} train + {len(t['valid'])} valid (in train/) + {len(t['test'])} test songs in {m['root']}"
        + (f" (stems: {', '.join(m['stems'])})" if GUITAR in m.get("stems", []) else ""),
        f"took {summary['elapsed_s']:.1f} s. Next: mixit prepare-fma --audio-dir {u['dir']} --out ...; mixit prepare-musdb {m['root']} --out ...",
    ]
    if summary["seconds_per_song"] < 10:
        lines.append("note: songs under 10 s give prepare-fma no 10 s clips, and prepare-musdb uses 8 s segments")
    return "\n".join(lines)
