"""`mixit listen`: a static listening page for separations and evaluations.

Inputs (each optionally named ``LABEL=PATH``, as in `mixit report`):

- a `mixit separate` output folder: every folder holding audio files is a track, every file
  in it a stem (``mixture.*`` is the track's mixture); any number of stems per track, so the
  12 outputs of a MixIT model (``out0`` ... ``out11``) work;
- a `mixit eval` results folder (it holds ``eval_config.json``): the estimates of its stems
  (MUSDB18-HQ's four, or the stem set of the prepared folder it scored), the per-track scores,
  and the mixture and reference stems named by its configuration.

Several inputs are shown side by side, track by track (matched by track name), for A/B
listening. For each track the page has a player, a spectrogram and the integrated loudness
of the mixture, of every reference and of every stem of every input. Audio is cut to the
``seconds`` where the mixture is loudest (or kept whole) and encoded small through ffmpeg.

:func:`plan` finds and checks everything (all problems at once, before any audio is
decoded); :func:`write_page` then writes ``OUT/index.html`` and ``OUT/assets/``.
The HTML itself is :mod:`mixitcli.listen_page`.

Writing (issue 20): the command holds OUT's lock (:func:`mixitcli.lock.folder_lock`), so a
second `mixit listen` into it is refused, naming the first. Every picture, audio file and the
index go through a temporary name and are renamed when complete, so a full disk leaves no
0-byte or half file under a final name. OUT first gets a marker file (``.mixit-listen``) and
loses its old index.html, so that a page whose writing failed or was stopped is still known as
ours (the rerun replaces it) and never shows an index that points at missing assets. On a
failure or a stop signal the assets written so far are removed (without its index the page is
of no use, and a full disk gets its space back); the marker stays until a page is complete.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixitcli import audio
from mixitcli.data.errors import with_problems
from mixitcli.evaluate import CONFIG, ESTIMATES, RECORDS
from mixitcli.listen_page import CODECS, DB_RANGE, MIXTURE, REFERENCE, stem_order
from mixitcli.lock import LOCK_NAME, folder_lock
from mixitcli.report import SUMMARY_JSON, TABLE_STEMS, table_order
from mixitcli.signals import Interrupted, raise_on_stop
from mixitcli.storage import (
    atomic_write_text,
    atomic_write_with,
    diagnose_write_failure,
    remove_stale_temporaries,
    temp_path,
)

"""Opus (WebM) is half the size of MP3 for the same quality; MP3 plays in every browser,
including old Safari. Headless Chromium decodes both (tests/test_listen.py)."""
GENERATOR = "mixit listen"
ENCODERS = min(4, os.cpu_count() or 1)
"""ffmpeg processes encoding at once (each holds one excerpt in memory)."""
ASSETS = "assets"
MARKER = ".mixit-listen"
"""Written into OUT before anything else and removed when the page is complete: a folder that
holds it is a page of ours whose writing did not finish."""


class ListenError(Exception):
    """The inputs or the output folder cannot make a page; ``problems`` lists every problem found."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        self.problems = list(problems)
        super().__init__(with_problems(message, self.problems))


# -- inputs ----------------------------------------------------------------------------------


@dataclass
class Source:
    """One INPUT: its stems per track and, for an evaluation, its scores and references.

    Attributes:
        label: the column heading (LABEL= or the folder's name).
        path: the folder.
        kind: "separate" or "eval".
        tracks: track name -> stem name -> audio file.
        mixtures: track name -> mixture file, where the input has one.
        references: track name -> stem -> reference file (eval only).
        records: track name -> the per-track record of results.jsonl (eval only).
        summary: summary.json (eval only; None when the evaluation did not finish).
        stems: the evaluated stems (eval only), in table order.
    """

    label: str
    path: Path
    kind: str
    tracks: dict[str, dict[str, Path]] = field(default_factory=dict)
    mixtures: dict[str, Path] = field(default_factory=dict)
    references: dict[str, dict[str, Path]] = field(default_factory=dict)
    records: dict[str, dict] = field(default_factory=dict)
    summary: dict | None = None
    stems: tuple[str, ...] = TABLE_STEMS


def _split_label(spec: str) -> tuple[str, Path]:
    label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
    return label, Path(path)


def _audio_files(folder: Path, exclude: Path | None) -> list[Path]:
    files = [
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in audio.AUDIO_EXTENSIONS and not p.name.startswith(".")
    ]
    if exclude is not None:
        files = [p for p in files if not p.resolve().is_relative_to(exclude)]
    return sorted(files)


def read_separate(label: str, folder: Path, *, exclude: Path | None = None) -> Source:
    """A `mixit separate` output: each folder holding audio files is a track named by its
    path under ``folder`` (``folder``'s own name for files directly in it); each file is a stem."""
    source = Source(label or folder.name, folder, "separate")
    for path in _audio_files(folder, exclude):
        track = path.parent.relative_to(folder).as_posix() if path.parent != folder else folder.resolve().name
        if path.stem == MIXTURE:
            source.mixtures[track] = path
        else:
            source.tracks.setdefault(track, {}).setdefault(path.stem, path)
    for track in [t for t in source.mixtures if t not in source.tracks]:  # a mixture alone is not a separation
        del source.mixtures[track]
    return source


def read_eval(label: str, folder: Path, *, musdb: Path | None = None) -> tuple[Source, list[str]]:
    """A `mixit eval` results folder: estimates, per-track records, summary, references.

    Args:
        musdb: where MUSDB18-HQ (or the prepared stems folder scored) is now (None: the path in
            eval_config.json).

    Returns:
        (source, problems): problems name what is missing and how to fix it.
    """

    problems: list[str] = []
    try:
        config = json.loads((folder / CONFIG).read_text())
        summary = json.loads((folder / SUMMARY_JSON).read_text()) if (folder / SUMMARY_JSON).is_file() else None
    except (OSError, ValueError) as e:
        return Source(label or folder.name, folder, "eval"), [
            f"{folder}: cannot read {CONFIG} or {SUMMARY_JSON} ({e}); run `mixit eval` into it again"
        ]
    if not label:
        model = (summary or {}).get("model") or config.get("model") or folder.name
        label = Path(str(model)).name or str(model)
    stems = tuple((summary or {}).get("stems") or config.get("stems") or TABLE_STEMS)
    source = Source(label, folder, "eval", summary=summary, stems=table_order(stems))
    if (folder / RECORDS).is_file():
        for line in (folder / RECORDS).read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interrupted eval
                continue
            source.records[record["track"]] = record
    if not source.records:
        problems.append(f"{folder}: no scored track in {RECORDS}; run `mixit eval` into it first")
    estimates = _estimates_folder(folder, config)
    root = Path(musdb if musdb is not None else (config.get("data") or config["musdb"])).expanduser()
    if not root.is_dir():
        problems.append(
            f"{folder}: the references are in {root} (from {CONFIG}), which does not exist; give --musdb PATH (where it is now)"
        )
    tracks = _reference_tracks(root, config, list(source.records), problems) if root.is_dir() else {}
    for name in source.records:
        found = {s: _find_audio(estimates / name, s) for s in source.stems}
        missing = [s for s, p in found.items() if p is None]
        if missing:
            problems.append(f"{estimates / name}: no estimate of {', '.join(missing)}")
            continue
        source.tracks[name] = found
        if name in tracks:  # a stem the song lacks (silence) has no reference to play
            refs = {s: tracks[name].path(s) for s in (MIXTURE, *source.stems) if tracks[name].path(s) is not None}
            absent = [str(p) for p in refs.values() if not p.is_file()]
            if absent:
                problems.append(f"{name}: no {', '.join(absent)} (references of {folder}); give --musdb PATH")
            source.mixtures[name] = refs.pop(MIXTURE)
            source.references[name] = refs
    return source, problems


def _reference_tracks(root: Path, config: dict, names: list[str], problems: list[str]) -> dict:
    """Track name -> its song (``.path(source)``) in MUSDB18-HQ or the prepared folder that was scored."""
    from mixitcli.data.errors import DataError
    from mixitcli.data.musdb import MusdbTrack

    subset = config.get("subset", "test")
    if config.get("data"):
        from mixitcli.data.prepared import load_prepared_tracks

        try:
            return {t.name: t for t in load_prepared_tracks(root, subset)}
        except DataError as e:
            problems.append(str(e))
            return {}
    split = "test" if subset == "test" else "train"
    return {n: MusdbTrack(name=n, subset=subset, folder=root / split / n) for n in names}


def _estimates_folder(folder: Path, config: dict) -> Path:
    """OUT/estimates for `eval --model`; the --estimates folder (as given, or relative to here) otherwise."""
    if config.get("model") or not config.get("estimates"):
        return folder / ESTIMATES
    given = Path(config["estimates"]).expanduser()
    return given if given.is_dir() else folder


def _find_audio(folder: Path, stem: str) -> Path | None:
    return next(
        (folder / f"{stem}{ext}" for ext in audio.AUDIO_EXTENSIONS if (folder / f"{stem}{ext}").is_file()), None
    )


def read_inputs(specs: Sequence[str], *, musdb: Path | None = None, exclude: Path | None = None) -> list[Source]:
    """Every ``[LABEL=]PATH``, recognised as an eval results folder or a separate output folder.

    Raises:
        ListenError: listing every input that is missing, empty, unrecognised or incomplete,
            and labels given twice.
    """
    sources, problems = [], []
    for spec in specs:
        label, path = _split_label(spec)
        if path.is_file() and path.name == SUMMARY_JSON:
            path = path.parent  # `mixit report` takes summary.json files: accept them too
        if not path.exists():
            problems.append(f"{path}: no such folder")
        elif not path.is_dir():
            problems.append(
                f"{path}: not a folder; give a `mixit separate` output folder or a `mixit eval` results folder"
            )
        elif not any(path.iterdir()):
            problems.append(f"{path}: empty folder")
        elif (path / CONFIG).is_file():
            source, found = read_eval(label, path, musdb=musdb)
            problems += found
            sources.append(source)
        else:
            source = read_separate(label, path, exclude=exclude)
            if source.tracks:
                sources.append(source)
            else:
                problems.append(
                    f"{path}: not a `mixit separate` output (no audio files {', '.join(audio.AUDIO_EXTENSIONS[:4])}, ... in it) "
                    f"nor a `mixit eval` results folder (no {CONFIG})"
                )
    labels = [s.label for s in sources]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        problems.append(f"label(s) {', '.join(twice)} name more than one input; name them: LABEL=PATH")
    if problems:
        raise ListenError("cannot make a listening page from these inputs:", problems)
    return sources


# -- tracks ----------------------------------------------------------------------------------


@dataclass
class TrackPlan:
    """One track of the page: where its audio is and how long it is.

    Attributes:
        name: track name (as in the inputs).
        mixture: the mixture file (None: the sum of the first input's stems is played).
        references: stem -> reference file (from an evaluation; empty otherwise).
        outputs: input label -> stem -> file (inputs without this track are left out).
        frames, sample_rate: the common length and rate of all its files.
    """

    name: str
    mixture: Path | None
    references: dict[str, Path]
    outputs: dict[str, dict[str, Path]]
    frames: int = 0
    sample_rate: int = 0


def plan_tracks(sources: Sequence[Source]) -> list[TrackPlan]:
    """Match the inputs' tracks by name (in the order they first appear) and check that all
    files of a track have one length and one sample rate, without decoding them.

    Raises:
        ListenError: every unreadable file and every track whose files differ in length or rate.
    """
    names: list[str] = []
    for s in sources:
        names += [n for n in s.tracks if n not in names]
    tracks, problems = [], []
    for name in names:
        mixture = next((s.mixtures[name] for s in sources if name in s.mixtures), None)
        references = next((s.references[name] for s in sources if name in s.references), {})
        outputs = {s.label: s.tracks[name] for s in sources if name in s.tracks}
        track = TrackPlan(name, mixture, references, outputs)
        files = (
            ([mixture] if mixture else [])
            + list(references.values())
            + [p for o in outputs.values() for p in o.values()]
        )
        shapes = {}
        for path in files:
            try:
                i = audio.info(path)
                shapes[path] = (i.frames, i.sample_rate)
            except audio.AudioError as e:
                problems.append(str(e))
        if len({f for f, _ in shapes.values()}) > 1 or len({r for _, r in shapes.values()}) > 1:
            listing = ", ".join(f"{p.name} {f} samples at {r} Hz" for p, (f, r) in shapes.items())
            problems.append(
                f"{name}: its stems have different lengths or sample rates ({listing}); all stems of a track must line up"
            )
        elif shapes:
            track.frames, track.sample_rate = next(iter(shapes.values()))
        tracks.append(track)
    if problems:
        raise ListenError("the audio files do not fit together:", problems)
    return tracks


# -- audio analysis --------------------------------------------------------------------------


def loudest_window(mixture: np.ndarray, rate: int, seconds: float, *, step_s: float = 0.5) -> tuple[int, int]:
    """The ``seconds`` of ``mixture`` (c, t) with the most energy, starting on a ``step_s`` grid.

    Returns:
        (start, stop) in samples; the whole signal when it is not longer than ``seconds``.
    """
    t = mixture.shape[-1]
    length = int(round(seconds * rate))
    if t <= length:
        return 0, t
    step = max(1, int(round(step_s * rate)))
    energy = np.concatenate([[0.0], np.cumsum(np.square(mixture, dtype=np.float64).sum(axis=0))])  # (t + 1,)
    starts = np.append(np.arange(0, t - length + 1, step), t - length)
    best = int(starts[np.argmax(energy[starts + length] - energy[starts])])
    return best, best + length


def loudness(x: np.ndarray, rate: int) -> float | None:
    """Integrated loudness (ITU-R BS.1770, pyloudnorm) of (c, t) audio in LUFS.

    Returns:
        LUFS; ``-inf`` when every 400 ms block is below the -70 LUFS gate; None when the audio
        is digitally silent (all samples zero) or shorter than one 400 ms block.
    """
    import pyloudnorm

    if not np.any(x) or x.shape[-1] < int(0.4 * rate):
        return None
    value = pyloudnorm.Meter(rate).integrated_loudness(np.ascontiguousarray(x.T, dtype=np.float64))
    return float(value)


F_MIN = 30.0
"""Lowest frequency of the spectrograms in Hz (their top is the Nyquist frequency)."""
PICTURE = (150, 460)
"""Spectrogram picture size in pixels (height = log-frequency bins, width = time columns)."""


def spectrogram_db(x: np.ndarray, rate: int, *, size: tuple[int, int] = PICTURE, f_min: float = F_MIN) -> np.ndarray:
    """Log-frequency magnitude spectrogram in dB (re amplitude 1) of the channel mean of (c, t) audio.

    The STFT (librosa, 2048 samples, hop 512) is interpolated onto ``size[0]`` log-spaced
    frequencies from ``f_min`` to Nyquist and its frames max-pooled (or repeated) to
    exactly ``size[1]`` columns, one per pixel of the picture.

    Returns:
        (bins, columns) float32, lowest frequency first.
    """
    import librosa

    bins, columns = size
    mono = np.asarray(x, np.float32).mean(axis=0)
    mono = np.pad(mono, (0, max(0, 2048 - mono.shape[-1])))
    magnitude = np.abs(
        librosa.stft(mono, n_fft=2048, hop_length=512, center=False)
    )  # (1025, frames); no padding: no false click at the cut edges
    db = librosa.amplitude_to_db(magnitude, ref=1.0, amin=1e-10, top_db=None)
    linear = librosa.fft_frequencies(sr=rate, n_fft=2048)
    wanted = np.geomspace(f_min, rate / 2, bins)
    below = np.clip(np.searchsorted(linear, wanted) - 1, 0, len(linear) - 2)  # linear interpolation between bins
    w = ((wanted - linear[below]) / (linear[below + 1] - linear[below]))[:, None]
    log_db = (1 - w) * db[below] + w * db[below + 1]  # (bins, frames)
    edges = np.linspace(0, log_db.shape[1], columns + 1).astype(int)  # frames of each column
    pooled = [
        log_db[:, a : max(b, a + 1)].max(axis=1) for a, b in zip(edges[:-1], np.minimum(edges[1:], log_db.shape[1]))
    ]
    return np.stack(pooled, axis=1).astype(np.float32)


def draw_spectrogram(db: np.ndarray, path: Path, *, vmax: float) -> None:
    """Write :func:`spectrogram_db`'s output as a PNG, one pixel per value, colours (magma)
    from ``vmax - DB_RANGE`` to ``vmax``; the page draws the axes. Written through a
    temporary name: ``path`` exists only complete."""
    from matplotlib.image import imsave

    atomic_write_with(
        path,
        lambda f: imsave(
            f,
            db,
            cmap="magma",
            vmin=vmax - DB_RANGE,
            vmax=vmax,
            origin="lower",
            format="png",
            pil_kwargs={"compress_level": 3},
        ),
    )


def frequency_ticks(rate: int, f_min: float = F_MIN) -> list[tuple[str, float]]:
    """(label, height from the bottom in %) of 100 Hz, 1 kHz and 10 kHz on the pictures' axis."""
    top = np.log(rate / 2 / f_min)
    return [
        (f"{f // 1000}k" if f >= 1000 else str(f), float(100 * np.log(f / f_min) / top))
        for f in (100, 1000, 10000)
        if f_min < f < rate / 2
    ]


def encode(x: np.ndarray, rate: int, path: Path, *, codec: str = "opus") -> None:
    """Encode (c, t) float audio into ``path`` with ffmpeg (raw float32 through a pipe),
    through a temporary name: ``path`` exists only complete.

    Raises:
        OSError: ffmpeg could not write (full disk, read-only folder, ...), naming ``path``.
        ListenError: ffmpeg failed otherwise (its last message is included).
    """
    suffix, _, args = CODECS[codec]
    data = np.ascontiguousarray(np.clip(x, -1, 1).T, dtype="<f4").tobytes()  # interleaved (t, c)
    tmp = temp_path(path)
    cmd = [
        "ffmpeg",
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "f32le",
        "-ar",
        str(rate),
        "-ac",
        str(x.shape[0]),
        "-i",
        "pipe:0",
        *args,
        "-f",
        suffix.lstrip("."),
        str(tmp),
    ]  # the temporary name says no format: -f does
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True)
        if proc.returncode != 0:
            message = proc.stderr.decode(errors="replace").strip()
            raise _write_error(message, path, len(data) // 8) or ListenError(
                f"{path}: ffmpeg could not encode {codec}: {message[-500:]}"
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_error(message: str, path: Path, nbytes: int) -> OSError | None:
    """The OS error behind an ffmpeg failure to write ``path`` (ffmpeg prints strerror), or None."""
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO):
        if os.strerror(code) in message:
            return OSError(code, os.strerror(code), str(path))
    return diagnose_write_failure(path, nbytes)


# -- the page --------------------------------------------------------------------------------


@dataclass
class Clip:
    """One player on the page: its files (relative to the page) and what they measure."""

    audio: str
    image: str
    lufs: float | None
    silent: bool


@dataclass
class TrackPage:
    """What the page shows of one track: ``clips[column][stem]``, columns "mixture",
    "reference" and each input's label."""

    name: str
    anchor: str
    start_s: float
    stop_s: float
    seconds: float
    mixture_note: str
    clips: dict[str, dict[str, Clip]]
    ticks: list[tuple[str, float]]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "x"


def check_out(out: Path, sources: Sequence[Source]) -> None:
    """Refuse an output folder that holds other things than a page of ours (finished, or with
    its :data:`MARKER` when its writing failed or was stopped), or that is an input."""
    problems = []
    if out.exists() and not out.is_dir():
        problems.append(f"{out}: is a file; --out must be a folder")
    elif out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()):
        index = out / "index.html"
        ours = (out / MARKER).is_file() or (
            index.is_file() and f'content="{GENERATOR}"' in index.read_text(errors="replace")[:2000]
        )
        if not ours:
            problems.append(
                f"{out}: not empty and not a page written by `mixit listen`; choose a new or empty folder (nothing was changed)"
            )
    for s in sources:
        if out.resolve() == s.path.resolve() or s.path.resolve().is_relative_to(out.resolve()):
            problems.append(f"{out}: holds the input {s.path}; choose another --out")
    if problems:
        raise ListenError("cannot write the page there:", problems)


def read_selection_counts(path: Path) -> dict:
    """A selection JSON (`mixit select-channels` or the official ``inst_head.json``):
    {"selected": {output index: stem}, "counts": {output index: {stem: count}}}.

    Raises:
        ListenError: unreadable, or neither format.
    """
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ListenError(f"{path}: cannot read the selection ({e})") from e
    if not isinstance(d, dict):
        d = {}
    if "selected" in d and "stems" in d:
        by_stem = dict(zip(d["stems"], d["selected"]))
    else:
        by_stem = d.get("by_stem") or {k: v for k, v in d.items() if k in TABLE_STEMS}
    if not by_stem or not all(isinstance(v, int) for v in by_stem.values()):
        raise ListenError(
            f"{path}: not a selection JSON (from `mixit select-channels`, or the official inst_head.json)"
        )
    counts = (
        {i: dict(zip(d["stems"], row)) for i, row in enumerate(d["counts"])} if "counts" in d and "stems" in d else {}
    )
    return {"selected": {int(v): k for k, v in by_stem.items()}, "counts": counts, "chunks": d.get("chunks")}


class _Progress:
    def __init__(self, console, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("listen"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.bar.start()
        self.task = self.bar.add_task("tracks", total=total, info="")

    def track(self, name: str) -> None:
        self.bar.update(self.task, info=name[:40])

    def done(self) -> None:
        self.bar.advance(self.task)

    def stop(self) -> None:
        self.bar.stop()


def render_track(
    track: TrackPlan, index: int, folder: Path, *, seconds: float | None, codec: str, pool: ThreadPoolExecutor
) -> TrackPage:
    """Decode one track, cut the excerpt, write its audio and pictures under ``folder``."""
    anchor = f"t{index + 1}-{_slug(track.name)}"
    first_label, first = next(iter(track.outputs.items()))
    if track.mixture is not None:
        mixture, note = audio.read(track.mixture)[0], ""
    else:
        mixture, note = np.zeros((1, 1), np.float32), f"the sum of the stems of {first_label}"
        for path in first.values():  # one stem in memory at a time
            mixture = mixture + audio.read(path)[0]
    rate = track.sample_rate
    start, stop = loudest_window(mixture, rate, seconds) if seconds else (0, mixture.shape[-1])

    def excerpt(path: Path) -> np.ndarray:  # only the excerpt is decoded (WAV/FLAC seek)
        return audio.read(path, start=start, frames=stop - start)[0]

    columns: dict[str, dict[str, Path | None]] = {MIXTURE: {MIXTURE: None}}
    if track.references:
        columns[REFERENCE] = dict(track.references)
    columns.update({label: {s: stems[s] for s in stem_order(stems)} for label, stems in track.outputs.items()})
    out = folder / anchor
    out.mkdir(parents=True, exist_ok=True)
    suffix = CODECS[codec][0]
    clips: dict[str, dict[str, Clip]] = {}
    pictures: dict[Path, np.ndarray] = {}  # drawn at the end, on the track's common colour scale
    jobs = []
    for c, (column, stems) in enumerate(columns.items()):
        clips[column] = {}
        for stem, path in stems.items():  # one excerpt in memory at a time (plus those being encoded)
            x = mixture[:, start:stop].copy() if path is None else excerpt(path)
            name = f"{c}-{_slug(column)}-{_slug(stem)}"
            jobs = [j for j in jobs if not j.done()]
            while len(jobs) >= ENCODERS:
                jobs.pop(0).result()
            jobs.append(pool.submit(encode, x, rate, out / f"{name}{suffix}", codec=codec))
            pictures[out / f"{name}.png"] = spectrogram_db(x, rate)
            rel = f"{ASSETS}/{anchor}/{name}"
            clips[column][stem] = Clip(
                audio=rel + suffix, image=rel + ".png", lufs=loudness(x, rate), silent=not np.any(x)
            )
        if column == MIXTURE:
            del mixture
    for job in jobs:
        job.result()
    vmax = max(float(db.max()) for db in pictures.values())
    for path, db in pictures.items():
        draw_spectrogram(db, path, vmax=vmax)
    return TrackPage(
        track.name, anchor, start / rate, stop / rate, track.frames / rate, note, clips, frequency_ticks(rate)
    )


def write_page(
    inputs: Sequence[str],
    out: str | Path,
    *,
    seconds: float | None = 30.0,
    codec: str = "opus",
    selection: str | Path | None = None,
    musdb: str | Path | None = None,
    title: str | None = None,
    console=None,
) -> Path:
    """`mixit listen`: read and check every input, then write OUT/index.html and OUT/assets/.

    Args:
        inputs: ``[LABEL=]PATH`` of `mixit separate` output folders or `mixit eval` results folders.
        out: the page folder (new, empty, or a page written before, which is replaced).
        seconds: excerpt length, chosen where the mixture is loudest (None: whole tracks).
        codec: "opus" (WebM) or "mp3".
        selection: a selection JSON whose counts are shown beside MixIT outputs ``out<i>``.
        musdb: where MUSDB18-HQ is, when it moved since the evaluation.
        title: the page title (default: the inputs' labels).
        console: a rich Console for progress (None: silent).

    Returns:
        The index.html written.

    Raises:
        ListenError: bad inputs, files that do not line up, a bad --out or selection (all
            before any audio is decoded); an encoding failure.
        MissingFFmpegError: ffmpeg is not on PATH.
        LockError: another command is writing into OUT.
        OSError: the page cannot be written (full disk, ...); what was written is removed.
        Interrupted: a stop signal arrived; what was written is removed.
    """
    if codec not in CODECS:
        raise ListenError(f"--codec {codec!r}: use one of {', '.join(CODECS)}")
    if seconds is not None and seconds <= 0:
        raise ListenError(f"--seconds must be above 0 (got {seconds}); use --full for whole tracks")
    audio.require_ffmpeg("Encoding the page's audio")
    out = Path(out)
    problems, counts, sources = [], None, []
    try:
        counts = read_selection_counts(Path(selection)) if selection else None
    except ListenError as e:
        problems.append(str(e))
    try:
        sources = read_inputs(inputs, musdb=Path(musdb) if musdb else None, exclude=out.resolve())
    except ListenError as e:
        problems += e.problems
    try:
        check_out(out, sources)
    except ListenError as e:
        problems += e.problems
    if problems:
        raise ListenError("cannot make a listening page (nothing was written):", problems)
    tracks = plan_tracks(sources)
    with raise_on_stop():
        try:
            with folder_lock(out):
                index = _write(
                    out, sources, tracks, seconds=seconds, codec=codec, counts=counts, title=title, console=console
                )
        except Interrupted as e:
            raise Interrupted(
                e.signum, f"{e}. The page was not finished and its files were removed: run the same command again."
            ) from None
    return index


def _write(out: Path, sources, tracks, *, seconds, codec, counts, title, console) -> Path:
    """:func:`write_page`'s writing, holding OUT's lock (see the module docstring)."""
    from mixitcli import listen_page

    atomic_write_text(out / MARKER, f"{GENERATOR}: a page is being written here\n")
    (out / "index.html").unlink(missing_ok=True)  # never an index whose assets are being replaced
    remove_stale_temporaries(out, locked=True)
    if (out / ASSETS).is_dir():
        shutil.rmtree(out / ASSETS)  # a page of ours, checked before
    progress = _Progress(console, len(tracks)) if console is not None else None
    pages = []
    try:
        with ThreadPoolExecutor(max_workers=ENCODERS) as pool:
            for i, track in enumerate(tracks):
                if progress:
                    progress.track(track.name)
                pages.append(render_track(track, i, out / ASSETS, seconds=seconds, codec=codec, pool=pool))
                if progress:
                    progress.done()
        html = listen_page.render(
            sources,
            pages,
            title=title or "Listening: " + " vs ".join(s.label for s in sources),
            seconds=seconds,
            codec=codec,
            selection=counts,
            generator=GENERATOR,
        )
        index = out / "index.html"
        atomic_write_with(index, lambda f: f.write(html.encode("utf-8")))
    except BaseException:
        shutil.rmtree(out / ASSETS, ignore_errors=True)  # of no use without the index; frees a full disk
        raise
    finally:
        if progress:
            progress.stop()
    (out / MARKER).unlink(missing_ok=True)
    return index
