"""Reading a prepared stems folder (`mixit prepare-stems` / `prepare-musdb`), checked before use.

Training, channel selection and evaluation read a prepared folder through this module, and it
checks what they read when they start, not when a worker meets it halfway through a run
(issue 20): every problem is reported at once, naming the file and line.

- ``summary.json``: the stem set (:func:`prepared_stems`; a folder prepared before stem sets
  existed holds MUSDB18-HQ's four);
- ``train.txt`` / ``valid.txt`` / ``test.txt``: no name twice, every name a song of ``tracks.jsonl``;
- ``tracks.jsonl``: every file of a listed song exists and has the song's length, which is not 0;
- ``salient/<stem>.jsonl``: every line a JSON object ``{"track", "path", "start", "length"}``
  whose path exists and whose segment ends within the file.

The folder's layout is described in :mod:`mixitcli.data.prepare_stems`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixitcli.data.errors import PreparedDataError, with_problems
from mixitcli.stems import MIXTURE, STEMS

SUBSETS = ("train", "valid", "test")
SUMMARY, TRACKS = "summary.json", "tracks.jsonl"


@dataclass(frozen=True)
class PreparedTrack:
    """One song of a prepared folder: where its mixture and stems are.

    Attributes:
        name: the track name.
        subset: "train", "valid" or "test".
        folder: the song's folder in the collection.
        frames: its length in samples (44.1 kHz).
        mixture_path: the mixture (a file of the collection, or the sum written by prepare-stems).
        stem_paths: stem -> its file, or None for a stem the song lacks (silence).
    """

    name: str
    subset: str
    folder: Path
    frames: int
    mixture_path: Path
    stem_paths: dict[str, Path | None] = field(default_factory=dict)

    @property
    def mixture(self) -> Path:
        return self.mixture_path

    def path(self, source: str) -> Path | None:
        """The file of ``source`` (``mixture`` or a stem); None for a silent stem."""
        if source == MIXTURE:
            return self.mixture_path
        if source not in self.stem_paths:
            raise ValueError(f"unknown source {source!r}: this song has {MIXTURE}, {', '.join(self.stem_paths)}")
        return self.stem_paths[source]

    def load(self, source: str = MIXTURE, *, start: int = 0, frames: int = -1) -> np.ndarray:
        """Samples [start, start + frames) of one source (frames=-1: to the end) as float32 (c, t);
        zeros for a silent stem."""
        import soundfile as sf

        path = self.path(source)
        if path is None:
            n = (self.frames - start) if frames < 0 else min(frames, self.frames - start)
            return np.zeros((2, max(n, 0)), np.float32)
        data, _ = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
        return np.ascontiguousarray(data.T)  # (t, c) -> (c, t)

    def load_stems(self, stems: tuple[str, ...]) -> np.ndarray:
        """All of ``stems`` as float32 (n, c, t), in the order given."""
        return np.stack([self.load(s) for s in stems])


def prepared_summary(prep_dir: str | Path) -> dict:
    """``DIR/summary.json`` of a prepared stems folder.

    Raises:
        PreparedDataError: DIR is not a prepared stems folder (the message says how to make one).
    """
    path = Path(prep_dir) / SUMMARY
    if not path.is_file() or not (Path(prep_dir) / "valid.txt").is_file():
        raise PreparedDataError(
            f"{prep_dir}: not a prepared stems folder; make one with `mixit prepare-stems ROOT --out {prep_dir}` "
            f"(or `mixit prepare-musdb MUSDB18HQ --out {prep_dir}`)"
        )
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PreparedDataError(f"{path}: not readable JSON ({e}); prepare the folder again") from e
    if not isinstance(summary, dict) or "root" not in summary:
        raise PreparedDataError(f"{path}: not a summary written by prepare-stems; prepare the folder again")
    return summary


def prepared_stems(prep_dir: str | Path) -> tuple[str, ...]:
    """The stem set of a prepared folder, in output order (MUSDB18-HQ's four for a folder
    prepared before stem sets were recorded)."""
    return tuple(prepared_summary(prep_dir).get("stems", STEMS))


def prepare_command(prep_dir: str | Path, summary: dict | None = None) -> str:
    """The command that prepares ``prep_dir`` again, as it was prepared."""
    summary = summary if summary is not None else prepared_summary(prep_dir)
    stems, rest = summary.get("stems", list(STEMS)), summary.get("rest")
    if tuple(stems) == STEMS and summary.get("layout", "folders") == "folders" and not rest:
        return f"mixit prepare-musdb {summary['root']} --out {prep_dir}"
    listed = [s for s in stems if s != rest]
    return (
        f"mixit prepare-stems {summary['root']} --out {prep_dir} --stems {','.join(listed)}"
        + (f" --rest {rest}" if rest else "")
        + (" --layout moisesdb" if summary.get("layout") == "moisesdb" else "")
    )


def _fail(prep_dir: Path, problems: list[str], what: str) -> None:
    if problems:
        raise PreparedDataError(
            with_problems(
                f"{prep_dir}: {what} ({len(problems)} problem(s)); prepare it again: {prepare_command(prep_dir)}",
                problems,
            )
        )


def read_listing(prep_dir: str | Path, subset: str) -> list[str]:
    """The track names of ``DIR/<subset>.txt``, each once.

    Raises:
        PreparedDataError: a name listed twice (file and lines named), or no listing at all.
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    prep_dir = Path(prep_dir)
    prepared_summary(prep_dir)
    path = prep_dir / f"{subset}.txt"
    if not path.is_file():
        raise PreparedDataError(f"{path}: missing; prepare the folder again: {prepare_command(prep_dir)}")
    names, first, problems = [], {}, []
    for line, name in enumerate(path.read_text().splitlines(), start=1):
        if not name:
            continue
        if name in first:
            problems.append(f"{subset}.txt line {line}: {name!r} again (first on line {first[name]})")
            continue
        first[name] = line
        names.append(name)
    _fail(prep_dir, problems, f"{subset}.txt lists a track twice")
    return names


def _frames(path: Path, cache: dict[Path, int]) -> int | None:
    """A file's length in samples (None: missing or unreadable)."""
    if path not in cache:
        import soundfile as sf

        try:
            cache[path] = int(sf.info(str(path)).frames)
        except Exception:
            cache[path] = None
    return cache[path]


def _old_tracks(prep_dir: Path, summary: dict, subset: str, names: list[str]) -> list[PreparedTrack]:
    """The tracks of a folder prepared before tracks.jsonl existed: MUSDB18-HQ's files in ROOT."""
    split = "test" if subset == "test" else "train"
    tracks = []
    for name in names:
        folder = Path(summary["root"]) / split / name
        mixture = folder / f"{MIXTURE}.wav"
        frames = _frames(mixture, {}) or 0
        tracks.append(PreparedTrack(name, subset, folder, frames, mixture, {s: folder / f"{s}.wav" for s in STEMS}))
    return tracks


def load_prepared_tracks(prep_dir: str | Path, subset: str) -> list[PreparedTrack]:
    """The songs of ``subset`` in a prepared folder, in the listing's order, checked.

    Raises:
        PreparedDataError: not prepared; a name listed twice or unknown; a song's file gone, of
            another length than recorded, or a song of no samples (all problems at once).
    """
    prep_dir = Path(prep_dir)
    summary = prepared_summary(prep_dir)
    names = read_listing(prep_dir, subset)
    if not (prep_dir / TRACKS).is_file():
        tracks = _old_tracks(prep_dir, summary, subset, names)
    else:
        rows, problems = {}, []
        for line, text in enumerate((prep_dir / TRACKS).read_text().splitlines(), start=1):
            try:
                row = json.loads(text)
                rows[(row["subset"], row["track"])] = (line, row)
            except (ValueError, TypeError, KeyError) as e:
                problems.append(f"{TRACKS} line {line}: not a track record ({type(e).__name__}: {e})")
        tracks = []
        for name in names:
            if (subset, name) not in rows:
                problems.append(f"{subset}.txt lists {name!r}, which {TRACKS} does not hold")
                continue
            line, row = rows[(subset, name)]
            stems = {s: Path(p) if p is not None else None for s, p in row["stems"].items()}
            tracks.append(
                PreparedTrack(name, subset, Path(row["folder"]), int(row["frames"]), Path(row["mixture"]), stems)
            )
        _fail(prep_dir, problems, f"{TRACKS} does not fit {subset}.txt")
    problems, cache = [], {}
    for track in tracks:
        if track.frames <= 0:
            problems.append(f"{track.name}: no samples (an empty track)")
            continue
        for source in (MIXTURE, *track.stem_paths):
            path = track.path(source)
            if path is None:
                continue
            frames = _frames(path, cache)
            if frames is None:
                problems.append(f"{track.name}: {path} is gone or unreadable")
            elif frames != track.frames:
                problems.append(f"{track.name}: {path} has {frames} samples, {TRACKS} says {track.frames}")
    _fail(prep_dir, problems, f"the {subset} songs do not match their files")
    return tracks


def read_salient(prep_dir: str | Path, stem: str) -> list[tuple[str, int, int]]:
    """The salient segments of ``stem``: (path, start, length) per line of ``salient/<stem>.jsonl``.

    Raises:
        PreparedDataError: the file is missing, or lines that are not segment records, name a
            missing file or end past its end (each named by its line; all at once).
    """
    prep_dir = Path(prep_dir)
    path = prep_dir / "salient" / f"{stem}.jsonl"
    if not path.is_file():
        raise PreparedDataError(f"{prep_dir}: no salient/{stem}.jsonl; prepare it again: {prepare_command(prep_dir)}")
    rows, problems, cache = [], [], {}
    where = f"salient/{stem}.jsonl line"
    for line, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            r = json.loads(text)
        except ValueError as e:
            problems.append(f"{where} {line}: not JSON ({e})")
            continue
        ints = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        if not (
            isinstance(r, dict)
            and isinstance(r.get("path"), str)
            and isinstance(r.get("track"), str)
            and ints(r.get("start"))
            and ints(r.get("length"))
            and r["start"] >= 0
            and r["length"] > 0
        ):
            problems.append(
                f'{where} {line}: not a segment {{"track", "path", "start" >= 0, "length" > 0}}: {text[:120]}'
            )
            continue
        frames = _frames(Path(r["path"]), cache)
        if frames is None:
            problems.append(f"{where} {line}: {r['path']} does not exist or is not readable audio")
        elif r["start"] + r["length"] > frames:
            problems.append(
                f"{where} {line}: the segment [{r['start']}, {r['start'] + r['length']}) ends past the end of "
                f"{r['path']} ({frames} samples)"
            )
        else:
            rows.append((r["path"], r["start"], r["length"]))
    _fail(prep_dir, problems, f"salient/{stem}.jsonl is damaged")
    return rows
