"""MUSDB18-HQ: the reader, the layout check, source activity detection and `mixit prepare-musdb`.

Layout (docs/method.md §2.2): ``ROOT/{train,test}/<Artist - Title>/{mixture,vocals,drums,bass,other}.wav``,
stereo 44.1 kHz; 100 train tracks (86 after taking out the standard 14 validation tracks) and
50 test tracks.

Validation split: the standard validation tracks that ``ROOT/train`` holds. A tree with none
of them (your own stems, MoisesDB converted to this layout) gets validation tracks held out
of train instead (issue 10): :func:`held_out_tracks` picks them by a hash of the track name,
about 10 % and at least 2 by default, so the split is the same on every machine and run.

Only the HQ (WAV) version is read. The compressed MUSDB18 (``*.stem.mp4``) is recognised and
refused with a clear message: its stems are AAC-coded, so numbers computed on it are not
comparable with the paper's (which are on MUSDB18-HQ). Convert it with `musdbconvert` from the
`musdb` package if you must, knowing that.

A prepared folder ``DIR`` (written by :func:`prepare_musdb`)::

    DIR/salient/<stem>.jsonl   per stem, one line per salient 8 s segment of a training track:
                               {"track": "A Classic Education - NightOwl", "path": "/abs/.../bass.wav",
                                "start": 176400, "length": 352800}   (samples at 44.1 kHz)
    DIR/train.txt, DIR/valid.txt, DIR/test.txt   track names, one per line, sorted
    DIR/summary.json           root, tracks per split, how the validation tracks were chosen
                               ("validation": standard / held out / none, "validation_tracks"),
                               segments per stem, hours, SAD settings
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mixitcli.audio import SAMPLE_RATE
from mixitcli.data import manifest as mf
from mixitcli.data.errors import DataError, LayoutError, PreparedDataError
from mixitcli.data.parallel import Task, run_parallel
from mixitcli.stems import STEMS
from mixitcli.storage import check_writable, remove_stale_temporaries

SOURCES = ("mixture", *STEMS)
"""The five WAV files of a track: the mixture and the stems (in the model order, :mod:`mixitcli.stems`)."""

SUBSETS = ("train", "valid", "test")

VALID_SHARE = 0.10
MIN_VALID_TRACKS = 2
"""Without the standard validation tracks, about ``VALID_SHARE`` of the training tracks (and at
least ``MIN_VALID_TRACKS``) are held out for validation (issue 10)."""

NO_VALIDATION_FIX = (
    "make some with `mixit prepare-musdb ROOT --out DIR`: when ROOT/train holds none of the 14 standard "
    "validation tracks, it holds out --valid-tracks N training tracks for validation (default about 10 %, at least 2)"
)
"""The fix, quoted wherever an empty validation split is refused (finetune, select-channels)."""

VALIDATION_TRACKS = (
    "Actions - One Minute Smile",
    "Clara Berry And Wooldog - Waltz For My Victims",
    "Johnny Lokke - Promises & Lies",
    "Patrick Talbot - A Reason To Leave",
    "Triviul - Angelsaint",
    "Alexander Ross - Goodbye Bolero",
    "Fergessen - Nos Palpitants",
    "Leaf - Summerghost",
    "Skelpolu - Human Mistakes",
    "Young Griffo - Pennies",
    "ANiMAL - Rockshow",
    "James May - On The Line",
    "Meaxic - Take A Step",
    "Traffic Experiment - Sirens",
)
"""The standard 14-track validation split, taken out of train (docs/method.md §2.2)."""

HQ_HINT = (
    "mixit needs MUSDB18-HQ (WAV stems, https://zenodo.org/records/3338373): the compressed "
    "MUSDB18 (.stem.mp4) has AAC-coded stems, so scores on it are not comparable with the paper's"
)


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


@dataclass(frozen=True)
class MusdbTrack:
    """One MUSDB18-HQ track folder.

    Attributes:
        name: "Artist - Title".
        subset: "train", "valid" or "test".
        folder: the folder holding mixture.wav and the four stem WAVs.
    """

    name: str
    subset: str
    folder: Path

    def path(self, source: str) -> Path:
        """The WAV of ``source`` (mixture, vocals, drums, bass or other)."""
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}: use one of {SOURCES}")
        return self.folder / f"{source}.wav"

    @property
    def mixture(self) -> Path:
        return self.path("mixture")

    @property
    def vocals(self) -> Path:
        return self.path("vocals")

    @property
    def drums(self) -> Path:
        return self.path("drums")

    @property
    def bass(self) -> Path:
        return self.path("bass")

    @property
    def other(self) -> Path:
        return self.path("other")

    def frames(self) -> int:
        """Length in samples (of mixture.wav)."""
        import soundfile as sf

        return sf.info(str(self.mixture)).frames

    def load(self, source: str = "mixture", *, start: int = 0, frames: int = -1) -> np.ndarray:
        """Samples [start, start + frames) of one source (frames=-1: to the end) as float32 (c, t)."""
        import soundfile as sf

        data, _ = sf.read(str(self.path(source)), start=start, frames=frames, dtype="float32", always_2d=True)
        return np.ascontiguousarray(data.T)  # (t, c) -> (c, t)

    def load_stems(self, stems: tuple[str, ...] = STEMS) -> np.ndarray:
        """All of ``stems`` as float32 (n, c, t), in the order given."""
        return np.stack([self.load(s) for s in stems])


# --- layout -------------------------------------------------------------------------------


def _check_track(folder: Path, rel: str) -> list[str]:
    import soundfile as sf

    problems, infos = [], {}
    for source in SOURCES:
        p = folder / f"{source}.wav"
        if not p.is_file():
            problems.append(f"{rel}: missing {source}.wav")
            continue
        try:
            infos[source] = sf.info(str(p))
        except Exception as e:
            problems.append(f"{rel}/{source}.wav: not a readable WAV ({str(e).splitlines()[0][:120]})")
    for source, i in infos.items():
        if i.samplerate != SAMPLE_RATE:
            problems.append(f"{rel}/{source}.wav: {i.samplerate} Hz, expected {SAMPLE_RATE}")
        if i.channels != 2:
            problems.append(f"{rel}/{source}.wav: {i.channels} channel(s), expected 2")
        if "mixture" in infos and i.frames != infos["mixture"].frames:
            problems.append(f"{rel}/{source}.wav: {i.frames} samples, but mixture.wav has {infos['mixture'].frames}")
    return problems


def _track_folders(root: Path, split: str, problems: list[str]) -> list[Path]:
    folder = root / split
    if not folder.is_dir():
        problems.append(f"missing folder {split}/")
        return []
    tracks = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not tracks:
        problems.append(f"{split}/ holds no track folders")
    return tracks


def validate_musdb(root: str | Path, splits: tuple[str, ...] = ("train", "test")) -> None:
    """Check the layout of ``root`` (every file's header), reporting every problem at once.

    Raises:
        LayoutError: with ``problems`` listing each missing or malformed folder or file, or
            the compressed-MUSDB18 hint when .stem.mp4 files are found.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise LayoutError(f"{root}: no such folder")
    if next(root.glob("*/*.stem.mp4"), None) is not None:
        raise LayoutError(f"{root} holds the compressed MUSDB18 (*.stem.mp4). {HQ_HINT}.")
    problems: list[str] = []
    for split in splits:
        for folder in _track_folders(root, split, problems):
            problems += _check_track(folder, f"{split}/{folder.name}")
    if problems:
        raise LayoutError(f"{root} is not a complete MUSDB18-HQ tree ({len(problems)} problem(s)):", problems)


def held_out_tracks(names: list[str], count: int | None = None) -> list[str]:
    """The training tracks held out for validation when none of the standard ones is present.

    The tracks whose names have the smallest BLAKE2b hashes are taken, so the choice depends
    on the names only (not on their order, the machine or the run) and mostly survives
    adding tracks.

    Args:
        names: the training track names.
        count: how many to hold out, 1 <= count < len(names); None: about 10 % and at least 2
            (``max(2, ceil(0.1 * n))``), but always leaving one training track.

    Returns:
        The held-out names, sorted (empty when fewer than 2 tracks exist and ``count`` is None).

    Raises:
        DataError: ``count`` leaves no training track or is below 1.
    """
    if count is None:
        count = min(max(MIN_VALID_TRACKS, math.ceil(VALID_SHARE * len(names))), len(names) - 1)
    elif not 1 <= count < len(names):
        raise DataError(
            f"--valid-tracks {count}: ROOT/train holds {len(names)} track(s); hold out between 1 and "
            f"{len(names) - 1} so that training keeps at least one" if len(names) > 1 else
            f"--valid-tracks {count}: ROOT/train holds {len(names)} track(s), too few to hold any out; add tracks"
        )
    ranked = sorted(names, key=lambda n: (hashlib.blake2b(n.encode(), digest_size=8).digest(), n))
    return sorted(ranked[: max(count, 0)])


def _validation_names(root: Path, valid_tracks: int | None) -> tuple[set[str], str]:
    """(validation track names, how they were chosen: "standard", "held out" or "none")."""
    names = [f.name for f in _track_folders(root, "train", [])]
    standard = {n for n in names if n in VALIDATION_TRACKS}
    if standard:
        if valid_tracks is not None:
            raise DataError(
                f"--valid-tracks {valid_tracks}: {root}/train holds {len(standard)} of the standard validation "
                "tracks, which are the validation split; drop --valid-tracks (it is for trees without them)"
            )
        return standard, "standard"
    held = set(held_out_tracks(names, valid_tracks))
    return held, ("held out" if held else "none")


def scan_musdb(root: str | Path, subset: str = "test", *, validate: bool = True, valid_tracks: int | None = None) -> list[MusdbTrack]:
    """The tracks of one subset, sorted by name.

    Args:
        root: the MUSDB18-HQ folder (holding train/ and test/).
        subset: "train" (the 86 training tracks), "valid" (the standard 14) or "test" (50).
            In a tree without any standard validation track, "valid" are the tracks
            :func:`held_out_tracks` holds out of train, and "train" the rest.
        validate: check the layout of the folder read first (raises LayoutError).
        valid_tracks: ``count`` of :func:`held_out_tracks` (None: its default).
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    root = Path(root).expanduser()
    split = "test" if subset == "test" else "train"
    if validate:
        validate_musdb(root, (split,))
    problems: list[str] = []
    folders = _track_folders(root, split, problems)
    if problems:
        raise LayoutError(f"{root}:", problems)
    valid = _validation_names(root, valid_tracks)[0] if split == "train" else set()
    tracks = [MusdbTrack(name=f.name, subset=_subset_of(f.name, split, valid), folder=f.resolve()) for f in folders]
    return [t for t in tracks if t.subset == subset]


def _subset_of(name: str, split: str, valid: set[str]) -> str:
    return "test" if split == "test" else ("valid" if name in valid else "train")


def load_prepared_tracks(prep_dir: str | Path, subset: str) -> list[MusdbTrack]:
    """The tracks of ``subset`` listed in a `mixit prepare-musdb` folder.

    Raises:
        PreparedDataError: DIR is not prepared, or a listed track folder has moved.
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    prep_dir = Path(prep_dir)
    summary, listing = prep_dir / mf.SUMMARY, prep_dir / f"{subset}.txt"
    if not summary.is_file() or not listing.is_file():
        raise PreparedDataError(f"{prep_dir}: not a prepared MUSDB folder; run `mixit prepare-musdb ROOT --out {prep_dir}`")
    root = Path(json.loads(summary.read_text())["root"])
    split = "test" if subset == "test" else "train"
    tracks = [MusdbTrack(name=n, subset=subset, folder=root / split / n) for n in listing.read_text().splitlines() if n]
    moved = [str(t.folder) for t in tracks if not t.folder.is_dir()]
    if moved:
        raise PreparedDataError(f"{prep_dir}: {len(moved)} listed track folder(s) are gone, e.g. {moved[0]}; prepare again")
    return tracks


# --- source activity detection ------------------------------------------------------------


def salient_segments(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, config: SadConfig = SadConfig()) -> tuple[list[int], int]:
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


def _sad_track(folder: str, stems: tuple[str, ...], config: SadConfig) -> dict:
    track = MusdbTrack(name=Path(folder).name, subset="train", folder=Path(folder))
    out = {"frames": track.frames(), "segments": {}, "candidates": 0}
    for stem in stems:
        out["segments"][stem], out["candidates"] = salient_segments(track.load(stem), SAMPLE_RATE, config)
    return out


def prepare_musdb(
    root: str | Path, out: str | Path, *, workers: int = 1, progress: bool = True, config: SadConfig = SadConfig(),
    valid_tracks: int | None = None,
) -> dict:
    """Validate MUSDB18-HQ, run SAD on every stem of the training tracks, write DIR (see module doc).

    Args:
        valid_tracks: without any standard validation track in ROOT/train, hold out this many
            training tracks for validation (None: about 10 %, at least 2; see :func:`held_out_tracks`).

    Returns:
        The summary written to ``DIR/summary.json``; ``validation`` says how the validation
        tracks were chosen ("standard", "held out" or "none").

    Raises:
        LayoutError: the layout check failed (every problem listed).
        DataError: ``valid_tracks`` does not fit the tree.
    """
    root = Path(root).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    remove_stale_temporaries(out, out / "salient")  # of a killed run
    check_writable(out)  # a read-only --out is found before the SAD work, not after it
    validate_musdb(root)
    how = _validation_names(root, valid_tracks)[1]  # checks --valid-tracks before the heavy work
    tracks = {s: scan_musdb(root, s, validate=False, valid_tracks=valid_tracks) for s in SUBSETS}
    results: dict[str, dict] = {}
    tasks = [Task(key=t.name, args=(str(t.folder), STEMS, config), weight=1.0) for t in tracks["train"]]
    run_parallel(
        _sad_track, tasks, workers=workers, label="prepare-musdb SAD",
        on_result=lambda task, r: results.__setitem__(task.key, r),
        on_crash=lambda task: results.__setitem__(task.key, None), progress=progress,
    )
    crashed = [k for k, r in results.items() if r is None]
    if crashed:
        raise LayoutError(f"{root}: reading these tracks crashed the WAV reader:", crashed)
    length = config.segment_seconds * SAMPLE_RATE
    for stem in STEMS:
        rows = [
            {"track": t.name, "path": str(t.path(stem)), "start": s, "length": length}
            for t in tracks["train"] for s in results[t.name]["segments"][stem]
        ]
        mf.write_jsonl(out / "salient" / f"{stem}.jsonl", rows)
    for subset, listed in tracks.items():
        mf.write_text_atomic(out / f"{subset}.txt", "".join(f"{t.name}\n" for t in listed))
    hours = {s: round(sum(t.frames() for t in listed) / SAMPLE_RATE / 3600, 4) for s, listed in tracks.items()}
    n_segments = {stem: sum(len(r["segments"][stem]) for r in results.values()) for stem in STEMS}
    summary = {
        "root": str(root),
        "tracks": {s: len(listed) for s, listed in tracks.items()},
        "validation": how,
        "validation_tracks": [t.name for t in tracks["valid"]],
        "validation_tracks_missing": sorted(set(VALIDATION_TRACKS) - {t.name for t in tracks["valid"]}),
        "segments": n_segments,
        "candidate_segments": sum(r["candidates"] for r in results.values()),
        "salient_hours": {stem: round(n * config.segment_seconds / 3600, 4) for stem, n in n_segments.items()},
        "hours": hours,
        "sample_rate": SAMPLE_RATE,
        "sad": asdict(config),
    }
    mf.write_json(out / mf.SUMMARY, summary)
    return summary


def describe(summary: dict) -> str:
    """A few human-readable lines about a prepare-musdb summary, for the CLI."""
    n = summary["tracks"]
    lines = [
        "tracks: " + ", ".join(f"{count} {s}" for s, count in n.items()),
        "salient 8 s segments: " + ", ".join(f"{s} {count}" for s, count in summary["segments"].items()),
    ]
    how = summary.get("validation", "standard")
    names = summary.get("validation_tracks", [])
    shown = f": {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}" if names else ""
    if how == "held out":
        lines.append(
            f"validation: none of the standard validation tracks is in train/, so {n['valid']} of the "
            f"{n['train'] + n['valid']} training tracks are held out (chosen by a hash of the name; --valid-tracks N sets how many){shown}"
        )
    elif how == "none":
        lines.append(
            "validation: none (train/ holds no standard validation track and too few tracks to hold any out); "
            "finetune and select-channels need validation tracks: add training tracks and prepare again"
        )
    else:
        lines.append(f"validation: {n['valid']} standard validation track(s) taken out of train/{shown}")
    return "\n".join(lines)
