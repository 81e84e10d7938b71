"""`mixit prepare-stems`: any set of stems, from a folders tree or MoisesDB, ready for training (issue 21).

`mixit prepare-musdb` is this command with MUSDB18-HQ's defaults (:func:`mixitcli.data.musdb.musdb_spec`:
the four stems, the five files every song must have); there is one code path.

What it does (docs/stems.md):

1. read the layout (:mod:`mixitcli.data.layouts`) and check every file's header, reporting
   every problem at once;
2. resolve the stem set: the ``--stems`` asked for (default: every stem name found), plus
   ``--rest NAME``, the sum of the stems found but not listed (without it they are dropped);
3. split the songs: ``ROOT/test`` is the test split (MoisesDB, which has none: the
   ``--test-tracks`` tracks with the smallest hash of their folder name), and the validation
   tracks are held out of the training songs as prepare-musdb does (the standard MUSDB18-HQ
   validation tracks when present, else ``--valid-tracks`` by a hash of the name);
4. per song, in worker processes: build each stem (a file as it is; a sum of files, a padded or
   mono one written as float WAV under ``DIR/audio/``; nothing for a stem the song lacks, which
   is silence), the mixture (``mixture.wav``, or the sum of every stem file), the residual of
   a mixture against the sum of its stems, and, for training songs, the source activity
   detection of docs/method.md §2.2 on every stem.

The prepared folder ``DIR``::

    DIR/summary.json           root, layout, stems (the ordered stem set), rest, tracks per split,
                               validation, silent stems per song, mixture residuals, segments, SAD
    DIR/tracks.jsonl           one line per song: {"track", "subset", "folder", "title", "frames",
                               "mixture": path, "stems": {stem: path, or null for silence}}
    DIR/salient/<stem>.jsonl   per stem, one line per salient 8 s segment of a training song:
                               {"track", "path", "start", "length"} (samples at 44.1 kHz)
    DIR/train.txt, valid.txt, test.txt   track names, one per line, sorted
    DIR/audio/<song>/<name>.wav          audio that is no single file of ROOT (sums, padded stems,
                                         a missing mixture): float32, so that sums never clip
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mixitcli.audio import SAMPLE_RATE
from mixitcli.data import manifest as mf
from mixitcli.data.errors import DataError, LayoutError
from mixitcli.data.layouts import HQ_HINT, LAYOUTS, Song, read_folders, read_moisesdb
from mixitcli.data.parallel import Task, run_parallel
from mixitcli.data.prepared import SUBSETS
from mixitcli.data.sad import SadConfig, salient_segments
from mixitcli.data.splits import VALIDATION_TRACKS, held_out_tracks
from mixitcli.stems import check_stems, default_order
from mixitcli.storage import check_writable, remove_stale_temporaries

TRACKS = "tracks.jsonl"
AUDIO = "audio"
RESIDUAL_WARN_DB = -60.0
"""A mixture whose difference from the sum of its stems is louder than this (dB relative to the
mixture's power) gets a warning: the same -60 dB below which the fine-tuning loss calls a stem
inactive (docs/method.md §4)."""
TEST_SHARE = 0.2
"""MoisesDB has no test split: about this share of its tracks (at least 1) is held out for testing."""


@dataclass(frozen=True)
class StemsSpec:
    """What `prepare-stems` makes of a collection (the command's options).

    Attributes:
        layout: "folders" (``ROOT/{train,test}/<song>/<stem>.wav``) or "moisesdb".
        stems: the stems to keep, in output order (None: every stem name found).
        rest: the name of a stem that sums every stem found but not listed (None: those are dropped).
        valid_tracks: training songs held out for validation when ROOT/train holds none of the
            standard MUSDB18-HQ validation tracks (None: about 10 %, at least 2).
        test_tracks: MoisesDB only: tracks held out for testing (None: about 20 %, at least 1).
        required: files every song must have (prepare-musdb: mixture and the four stems); a song
            without another listed stem gets silence for it.
        command: the command, for the progress bar and messages.
    """

    layout: str = "folders"
    stems: tuple[str, ...] | None = None
    rest: str | None = None
    valid_tracks: int | None = None
    test_tracks: int | None = None
    required: tuple[str, ...] = ()
    command: str = "prepare-stems"


@dataclass
class _Job:
    """One song's work for a worker process (picklable)."""

    name: str
    subset: str
    rel: str
    frames: int
    mixture: str | None
    groups: dict[str, list[str]]  # stem -> the files summed into it (empty: silence)
    dropped: list[str]  # files of unlisted stems without --rest: part of the mixture only
    reshape: list[str] = field(default_factory=list)
    title: str = ""


# --- the stem set and the splits ----------------------------------------------------------------


def stem_set(spec: StemsSpec, songs: list[Song]) -> tuple[tuple[str, ...], dict[str, int]]:
    """The prepared folder's stems (listed ones, then the rest) and in how many songs each name was found.

    Raises:
        StemsError: a repeated or malformed name (the rest included).
        DataError: a listed stem that no song has, or ``--rest`` without ``--stems``.
    """
    found = Counter(name for song in songs for name in song.files)
    if spec.rest is not None and spec.stems is None:
        raise DataError(
            f"--rest {spec.rest} needs --stems: without --stems every stem found is kept, so nothing is left for the rest"
        )
    listed = check_stems(spec.stems if spec.stems is not None else default_order(found))
    stems = check_stems(listed + ((spec.rest,) if spec.rest else ()), what="--stems with --rest")
    unknown = [s for s in listed if s not in found]
    if unknown:
        kind = "category" if spec.layout == "moisesdb" else "file"
        have = ", ".join(sorted(found)) or "none"
        raise DataError(f"--stems: no song has {', '.join(unknown)} (no {kind} of that name); the songs have: {have}")
    return stems, dict(found)


def _test_names(names: list[str], count: int | None) -> list[str]:
    """MoisesDB's test tracks: ``count`` (default about 20 %, at least 1) by a hash of the name."""
    if count is None:
        count = min(max(1, math.ceil(TEST_SHARE * len(names))), len(names) - 1)
    return held_out_tracks(names, count, option="--test-tracks", where="the tree") if count else []


def assign_subsets(songs: list[Song], spec: StemsSpec) -> tuple[dict[str, str], str]:
    """Each song's subset (train, valid or test), keyed by its ``rel``, and how validation was chosen.

    Raises:
        DataError: --valid-tracks with standard validation tracks present, --test-tracks outside
            MoisesDB, or a count that leaves no training song.
    """
    if spec.test_tracks is not None and spec.layout != "moisesdb":
        raise DataError(
            "--test-tracks is for --layout moisesdb (MoisesDB has no test split); the folders layout's test songs are ROOT/test"
        )
    if spec.layout == "moisesdb":
        test = set(_test_names([s.name for s in songs], spec.test_tracks))
        for song in songs:
            song.split = "test" if song.name in test else "train"
    train = [s.name for s in songs if s.split == "train"]
    standard = {n for n in train if n in VALIDATION_TRACKS}
    if standard:
        if spec.valid_tracks is not None:
            raise DataError(
                f"--valid-tracks {spec.valid_tracks}: ROOT/train holds {len(standard)} of the standard validation "
                "tracks, which are the validation split; drop --valid-tracks (it is for trees without them)"
            )
        valid, how = standard, "standard"
    else:
        valid = set(held_out_tracks(train, spec.valid_tracks))
        how = "held out" if valid else "none"
    subsets = {s.rel: "test" if s.split == "test" else ("valid" if s.name in valid else "train") for s in songs}
    return subsets, how


def _jobs(songs: list[Song], subsets: dict[str, str], stems: tuple[str, ...], spec: StemsSpec) -> list[_Job]:
    listed = set(stems) - {spec.rest}
    jobs = []
    for song in songs:
        groups = {s: [str(p) for p in song.files.get(s, [])] for s in stems if s != spec.rest}
        unlisted = [str(p) for name, paths in song.files.items() if name not in listed for p in paths]
        if spec.rest:
            groups[spec.rest] = unlisted
        jobs.append(
            _Job(
                name=song.name,
                subset=subsets[song.rel],
                rel=song.rel,
                frames=song.frames,
                mixture=str(song.mixture) if song.mixture else None,
                groups=groups,
                dropped=[] if spec.rest else unlisted,
                reshape=[str(p) for p in song.reshape],
                title=song.title,
            )
        )
    return jobs


# --- one song (in a worker process) -------------------------------------------------------------


def _read(path: str, frames: int) -> np.ndarray:
    """A file as float32 (2, frames): mono duplicated, a shorter file padded with silence."""
    import soundfile as sf

    data, _ = sf.read(path, dtype="float32", always_2d=True)
    x = np.ascontiguousarray(data.T)  # (t, c) -> (c, t)
    if x.shape[0] == 1:
        x = np.repeat(x, 2, axis=0)
    return np.pad(x, ((0, 0), (0, frames - x.shape[1]))) if x.shape[1] < frames else x[:, :frames]


def _write(path: Path, x: np.ndarray) -> None:
    """A float32 WAV (c, t), through a temporary name: a killed run never leaves half a file."""
    import soundfile as sf

    from mixitcli.storage import naming, temp_path

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with naming(path):
            sf.write(str(tmp), np.ascontiguousarray(x.T), SAMPLE_RATE, format="WAV", subtype="FLOAT")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _residual(mixture: str, total: np.ndarray, block: int = 1 << 20) -> tuple[float, float]:
    """(power of the mixture file, power of mixture - total), summed in float64; the mixture is
    read block by block, so a long song costs one block besides ``total`` (2, t)."""
    import soundfile as sf

    power = residual = 0.0
    with sf.SoundFile(mixture) as f:
        for start in range(0, total.shape[1], block):
            m = f.read(block, dtype="float32", always_2d=True).T  # (t, c) -> (c, b)
            d = m - total[:, start : start + m.shape[1]]
            power += float(np.sum(np.square(m, dtype=np.float64)))
            residual += float(np.sum(np.square(d, dtype=np.float64)))
    return power, residual


def prepare_song(job: _Job, out: str, config: SadConfig) -> dict:
    """Build one song's stems and mixture, measure the mixture's residual, and find the salient
    segments of its stems when it is a training song.

    Returns:
        {"frames", "mixture": path, "stems": {stem: path or None}, "segments": {stem: starts},
        "candidates", "residual_db": None or dB, "mixture_summed": bool}.
    """
    frames = job.frames
    derived = Path(out) / AUDIO / job.rel
    total = np.zeros((2, frames), np.float32)  # every stem file: what the mixture should be
    result = {"frames": frames, "stems": {}, "segments": {}, "candidates": 0, "residual_db": None}
    for stem, files in job.groups.items():
        if not files:
            result["stems"][stem], result["segments"][stem] = None, []  # a stem the song lacks: silence
            continue
        x = _read(files[0], frames)
        for other in files[1:]:  # one file in memory besides the sum
            x += _read(other, frames)
        if len(files) == 1 and files[0] not in job.reshape:
            result["stems"][stem] = files[0]
        else:
            result["stems"][stem] = str(derived / f"{stem}.wav")
            _write(derived / f"{stem}.wav", x)
        total += x
        if job.subset == "train":
            result["segments"][stem], result["candidates"] = salient_segments(x, SAMPLE_RATE, config)
        del x
    for path in job.dropped:
        total += _read(path, frames)
    if job.mixture is not None:
        power, residual = _residual(job.mixture, total)
        if power > 0:
            result["residual_db"] = round(10 * math.log10(max(residual, 1e-30) / power), 1)
        result["mixture"], result["mixture_summed"] = job.mixture, False
    else:
        result["mixture"], result["mixture_summed"] = str(derived / "mixture.wav"), True
        _write(derived / "mixture.wav", total)
    return result


# --- the command --------------------------------------------------------------------------------


def read_layout(root: Path, spec: StemsSpec) -> list[Song]:
    """The songs of ROOT in ``spec.layout``.

    Raises:
        LayoutError: every problem of the tree at once (or the compressed-MUSDB18 hint).
    """
    if spec.layout not in LAYOUTS:
        raise DataError(f"--layout {spec.layout}: choose one of {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise LayoutError(f"{root}: no such folder")
    if spec.layout == "moisesdb":
        songs, problems = read_moisesdb(root)
        what = "MoisesDB tree"
    else:
        if next(root.glob("*/*.stem.mp4"), None) is not None:
            raise LayoutError(f"{root} holds the compressed MUSDB18 (*.stem.mp4). {HQ_HINT}.")
        songs, problems = read_folders(root, required=spec.required)
        what = "MUSDB18-HQ tree" if spec.required else "stems tree (ROOT/{train,test}/<song>/<stem>.wav)"
    if problems:
        raise LayoutError(f"{root} is not a complete {what} ({len(problems)} problem(s)):", problems)
    return songs


def prepare_stems(
    root: str | Path,
    out: str | Path,
    spec: StemsSpec = StemsSpec(),
    *,
    workers: int = 1,
    progress: bool = True,
    config: SadConfig = SadConfig(),
) -> dict:
    """Prepare a stems collection into DIR (see the module doc); every check comes before the work.

    Returns:
        The summary written to ``DIR/summary.json``.

    Raises:
        LayoutError: the tree's problems, all at once.
        StemsError, DataError: the stem set or the split options do not fit the tree.
    """
    root = Path(root).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    remove_stale_temporaries(out, out / "salient")  # of a killed run
    remove_stale_temporaries(out / AUDIO, recursive=True)
    check_writable(out)  # a read-only --out is found before the work, not after it
    songs = read_layout(root, spec)
    stems, found = stem_set(spec, songs)
    subsets, how = assign_subsets(songs, spec)
    jobs = _jobs(songs, subsets, stems, spec)
    results: dict[str, dict] = {}
    tasks = [Task(key=j.rel, args=(j, str(out), config), weight=max(j.frames, 1)) for j in jobs]
    run_parallel(
        prepare_song,
        tasks,
        workers=workers,
        label=spec.command,
        progress=progress,
        on_result=lambda task, r: results.__setitem__(task.key, r),
        on_crash=lambda task: results.__setitem__(task.key, None),
    )
    crashed = [k for k, r in results.items() if r is None]
    if crashed:
        raise LayoutError(f"{root}: reading these songs crashed the WAV reader:", crashed)
    by_subset = {s: sorted((j for j in jobs if j.subset == s), key=lambda j: j.name) for s in SUBSETS}
    rows = [
        {
            "track": j.name,
            "subset": j.subset,
            "folder": str(root / j.rel),
            "title": j.title,
            "frames": j.frames,
            "mixture": results[j.rel]["mixture"],
            "stems": results[j.rel]["stems"],
        }
        for s in SUBSETS
        for j in by_subset[s]
    ]
    mf.write_jsonl(out / TRACKS, rows)
    length = config.segment_seconds * SAMPLE_RATE
    for stem in stems:
        mf.write_jsonl(
            out / "salient" / f"{stem}.jsonl",
            (
                {"track": j.name, "path": results[j.rel]["stems"][stem], "start": start, "length": length}
                for j in by_subset["train"]
                for start in results[j.rel]["segments"][stem]
            ),
        )
    for subset, listed in by_subset.items():
        mf.write_text_atomic(out / f"{subset}.txt", "".join(f"{j.name}\n" for j in listed))
    summary = _summary(root, spec, stems, found, how, by_subset, results, config)
    mf.write_json(out / mf.SUMMARY, summary)
    return summary


def _summary(
    root: Path,
    spec: StemsSpec,
    stems: tuple[str, ...],
    found: dict[str, int],
    how: str,
    by_subset: dict[str, list[_Job]],
    results: dict[str, dict],
    config: SadConfig,
) -> dict:
    """The prepared folder's summary.json (module doc)."""
    train = [results[j.rel] for j in by_subset["train"]]
    n_segments = {stem: sum(len(r["segments"][stem]) for r in train) for stem in stems}
    listed = [s for s in stems if s != spec.rest]
    return {
        "root": str(root),
        "layout": spec.layout,
        "stems": list(stems),
        "rest": spec.rest,
        "rest_of": sorted(n for n in found if n not in listed) if spec.rest else [],
        "dropped": sorted(n for n in found if n not in listed) if not spec.rest else [],
        "tracks": {s: len(listed_) for s, listed_ in by_subset.items()},
        "validation": how,
        "validation_tracks": [j.name for j in by_subset["valid"]],
        "validation_tracks_missing": sorted(set(VALIDATION_TRACKS) - {j.name for j in by_subset["valid"]}),
        "test_split": "hash" if spec.layout == "moisesdb" else "ROOT/test",
        "silent": {
            stem: sorted(j.name for s in SUBSETS for j in by_subset[s] if results[j.rel]["stems"][stem] is None)
            for stem in stems
        },
        "mixture_summed": sorted(j.name for s in SUBSETS for j in by_subset[s] if results[j.rel]["mixture_summed"]),
        "mixture_residual_db": {
            j.name: results[j.rel]["residual_db"]
            for s in SUBSETS
            for j in by_subset[s]
            if results[j.rel]["residual_db"] is not None and results[j.rel]["residual_db"] > RESIDUAL_WARN_DB
        },
        "segments": n_segments,
        "candidate_segments": sum(r["candidates"] for r in train),
        "salient_hours": {stem: round(n * config.segment_seconds / 3600, 4) for stem, n in n_segments.items()},
        "hours": {s: round(sum(j.frames for j in listed_) / SAMPLE_RATE / 3600, 4) for s, listed_ in by_subset.items()},
        "sample_rate": SAMPLE_RATE,
        "sad": asdict(config),
    }


def describe(summary: dict) -> str:
    """A few human-readable lines about a prepared stems folder, for the CLI."""
    n = summary["tracks"]
    stems = summary.get("stems", list(summary["segments"]))
    lines = [
        "tracks: " + ", ".join(f"{count} {s}" for s, count in n.items()),
        "stems: "
        + ", ".join(stems)
        + (
            f" ({summary['rest']} = {' + '.join(summary['rest_of']) or 'nothing: silent'})"
            if summary.get("rest")
            else ""
        )
        + (f"; dropped (no --rest): {', '.join(summary['dropped'])}" if summary.get("dropped") else ""),
        "salient 8 s segments: " + ", ".join(f"{s} {count}" for s, count in summary["segments"].items()),
    ]
    silent = {s: len(names) for s, names in summary.get("silent", {}).items() if names}
    if silent:
        lines.append("silence for a stem a song lacks: " + ", ".join(f"{s} in {k} song(s)" for s, k in silent.items()))
    if summary.get("mixture_summed"):
        lines.append(f"mixture: the sum of the stems in {len(summary['mixture_summed'])} song(s) without mixture.wav")
    how, names = summary.get("validation", "standard"), summary.get("validation_tracks", [])
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
    if summary.get("test_split") == "hash":
        lines.append(
            f"test: {n['test']} of {sum(n.values())} tracks (chosen by a hash of the track folder's name; --test-tracks N sets how many)"
        )
    return "\n".join(lines)


def warnings(summary: dict) -> list[str]:
    """What the user must know about a prepared folder: mixtures that are not the sum of their stems."""
    return [
        f"{track}: mixture.wav differs from the sum of its stem files by {db:+.1f} dB (the residual's level relative to "
        f"the mixture); training mixes the stems, while validation and eval separate mixture.wav, so check the stems"
        for track, db in summary.get("mixture_residual_db", {}).items()
    ]
