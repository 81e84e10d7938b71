"""`mixit prepare-fma`: FMA (or any folder of music) -> 10 s clips for MixIT pre-training.

Pipeline (docs/method.md §2.1, issue #3):

1. :func:`locate_fma` / :func:`locate_audio_dir` find the audio and, for FMA, the metadata;
   :func:`scan` lists the files (sorted, so every machine sees the same list).
2. :func:`prepare_fma` runs :func:`mixitcli.data.clips.process_file` on this shard's files in
   worker processes, journaling each finished file (kept clips or rejection) in
   ``DIR/shards/<I>-of-<N>/journal.jsonl``. Re-running the same command resumes: journaled
   files are skipped, never decoded again; a file that was mid-decode when the run was
   killed is decoded from scratch (its partial store file is never renamed into place).
   A store that cannot be written (full disk, read-only folder, I/O error) is never held
   against the source file: the run stops with a StorageError that names the folder and
   about how much more space the other files need, and the rerun decodes them (issue 11).
3. :func:`merge_shards` turns the shard journals into ``manifest.jsonl``, ``rejected.jsonl``,
   ``summary.json`` and ``index.npz`` (formats in :mod:`mixitcli.data.manifest`). A plain run
   (shard 0/1) merges by itself at the end. With ``--shard I/N`` on N machines writing to
   one shared DIR, the last shard to finish merges; on separate disks, copy every
   ``DIR/shards/*`` folder into one DIR and run ``mixit prepare-fma --merge --out DIR``.
   A merge holds the merge lock and every shard's lock (its own run's included, from the
   decoding through the merge), so a second run on the same DIR is refused instead of
   pulling ``done.json`` from under it.

Shard membership is a hash of the file's path relative to the audio root. The train/valid
split is FMA's own when tracks.csv is there (its set/split column, as the authors'
``fma_split.py``; test tracks are left out at the scan), otherwise a hash of the track key.
Both are deterministic and independent of the number of shards or workers.

File names whose bytes are not UTF-8 (issue 20) are prepared like any other: the journal, the
manifest and the store name them by :func:`printable` (the undecodable bytes written as
``\\xNN``), and only the decoder sees the real name. A store file found shorter than its
journal says when a run resumes (a disk that failed, a copy cut short) is decoded again.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import re
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mixitcli.audio import AUDIO_EXTENSIONS
from mixitcli.data import manifest as mf
from mixitcli.data.clips import (
    PARTIAL_SUFFIX,
    REASONS,
    STORE_CHANNELS,
    STORE_DTYPE,
    WRITE_FAILED,
    ClipRules,
    process_file,
)
from mixitcli.data.errors import DataError, LayoutError, MetadataError, PrepareError
from mixitcli.data.parallel import Task, run_parallel, wait_for_orphans
from mixitcli.storage import SPACE_ERRORS, StorageError, StorageWarning, describe_os_error, remove_stale_temporaries

SUBSETS = ("small", "medium", "large", "full")
"""FMA subsets, nested: small ⊂ medium ⊂ large ⊂ full."""

DEFAULT_VALID_FRACTION = 0.01
"""Share of tracks held out for pre-training validation when the split is not FMA's own
(``--audio-dir`` collections, FMA without tracks.csv): a few hundred clips of a small
collection, a few thousand of FMA large (docs/method.md §2.1)."""

FMA_SPLITS = {"training": "train", "validation": "valid", "test": None}
"""FMA's own split (tracks.csv column set/split) -> ours, as the authors' ``fma_split.py``:
training -> train, validation -> valid (their "dev"); test tracks are not used (None)."""


@dataclass(frozen=True)
class AudioSource:
    """Where the audio is and how to read its track list.

    Attributes:
        kind: "fma" (FMA layout, track key = 6-digit id) or "dir" (any tree of audio files,
            track key = path relative to ``audio_root`` without its suffix).
        audio_root: the folder that is scanned.
        subset: the FMA subset (None for "dir").
        metadata: FMA ``tracks.csv``; None: every audio file under ``audio_root`` is used.
    """

    kind: str
    audio_root: Path
    subset: str | None = None
    metadata: Path | None = None

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "audio_root": str(self.audio_root),
            "subset": self.subset,
            "metadata": str(self.metadata) if self.metadata else None,
        }


@dataclass(frozen=True)
class SourceFile:
    path: Path  # absolute
    rel: str  # relative to the audio root, posix
    track: str
    size: int  # bytes
    fma_split: str | None = None  # "train" / "valid" from tracks.csv; None: split by hash at merge


@dataclass
class Scan:
    """The files to process and what the scan skipped (counts are over the whole tree)."""

    source: AudioSource
    files: list[SourceFile]
    not_in_subset: int = 0
    other_files: int = 0
    metadata_tracks_without_file: int = 0
    fma_test_split: int = 0

    def stats(self) -> dict:
        return {
            "audio_files": len(self.files),
            "not_in_subset": self.not_in_subset,
            "fma_test_split": self.fma_test_split,
            "other_files": self.other_files,
            "metadata_tracks_without_file": self.metadata_tracks_without_file,
        }


@dataclass(frozen=True)
class PrepareConfig:
    """Options of one `mixit prepare-fma` run.

    Attributes:
        out: the prepared folder DIR.
        rules: how files become clips (changing them needs a new DIR).
        workers: worker processes (0: in this process).
        shard: (I, N), 0 <= I < N: this run does the files whose path hashes to I.
        valid_fraction: share of tracks in the validation split, chosen by a hash of the track
            key (applied at merge). None: FMA's own split where tracks.csv gives one (its test
            tracks are left out), else DEFAULT_VALID_FRACTION.
        progress: show a progress bar.
    """

    out: Path
    rules: ClipRules = field(default_factory=ClipRules)
    workers: int = 1
    shard: tuple[int, int] = (0, 1)
    valid_fraction: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise DataError(f"--shard {i}/{n}: the index is 0-based, so use 0/{n} ... {n - 1}/{n}")
        _check_fraction(self.valid_fraction)


def _check_fraction(valid_fraction: float | None) -> None:
    if valid_fraction is not None and not 0.0 <= valid_fraction < 1.0:
        raise DataError(f"--valid-fraction must be in [0, 1), got {valid_fraction}")


def parse_shard(text: str) -> tuple[int, int]:
    """ "I/N" -> (I, N); raises DataError for anything else."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise DataError(f"--shard must look like I/N (e.g. 0/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))


# --- finding and listing the audio ------------------------------------------------------


def locate_fma(root: str | Path, subset: str, metadata: str | Path | None = None) -> AudioSource:
    """Find ``fma_<subset>/`` (or a larger subset's folder) and ``tracks.csv``.

    Args:
        root: the folder that holds ``fma_<subset>/``, or that folder itself.
        subset: small, medium, large or full.
        metadata: a folder holding ``tracks.csv`` or the file itself; default: look for
            ``fma_metadata/tracks.csv`` beside the audio folder.

    Raises:
        LayoutError: ROOT is missing or holds no FMA audio folder.
        MetadataError: an unknown subset, a --metadata that does not exist, or a larger
            subset's folder that cannot be filtered without metadata.
    """
    root = Path(root).expanduser().resolve()
    if subset not in SUBSETS:
        raise MetadataError(f"unknown subset {subset!r}: use one of {', '.join(SUBSETS)}")
    if not root.is_dir():
        raise LayoutError(f"{root}: no such folder")
    audio_root = next(
        (root / f"fma_{s}" for s in SUBSETS[SUBSETS.index(subset) :] if (root / f"fma_{s}").is_dir()), None
    )
    if audio_root is None:
        numbered = any(p.is_dir() and re.fullmatch(r"\d{3}", p.name) for p in root.iterdir())
        if not (root.name.startswith("fma_") or numbered):
            raise LayoutError(
                f"{root} holds no fma_{subset}/ folder (nor a larger subset's), and is not an FMA "
                "audio folder itself (no 3-digit subfolders). Pass the folder that holds "
                f"fma_{subset}/, or use --audio-dir for any folder of audio files."
            )
        audio_root = root
    if metadata is not None:
        given = Path(metadata).expanduser().resolve()
        csv_path = given / "tracks.csv" if given.is_dir() else given
        if not csv_path.is_file():
            raise MetadataError(f"--metadata {given}: no tracks.csv there")
    else:
        candidates = [root / "fma_metadata" / "tracks.csv", audio_root.parent / "fma_metadata" / "tracks.csv"]
        csv_path = next((c for c in candidates if c.is_file()), None)
    folder_subset = audio_root.name[4:] if audio_root.name.startswith("fma_") else None
    if csv_path is None and folder_subset in SUBSETS and folder_subset != subset:
        raise MetadataError(
            f"found {audio_root.name}/ but not fma_{subset}/: choosing the {subset} tracks out of it "
            "needs fma_metadata/tracks.csv (pass --metadata DIR)"
        )
    return AudioSource(kind="fma", audio_root=audio_root, subset=subset, metadata=csv_path)


def locate_audio_dir(folder: str | Path) -> AudioSource:
    """Any folder tree of audio files. Raises LayoutError when it does not exist."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise LayoutError(f"{folder}: no such folder")
    return AudioSource(kind="dir", audio_root=folder)


def read_subset_ids(tracks_csv: Path, subset: str) -> set[int]:
    """Track ids of ``subset`` from FMA's tracks.csv (see :func:`read_tracks`)."""
    return set(read_tracks(tracks_csv, subset))


def read_tracks(tracks_csv: Path, subset: str) -> dict[int, str | None]:
    """Track id -> FMA's split (column set/split: "training", "validation", "test") of the
    tracks of ``subset`` in FMA's tracks.csv (two header rows; column set/subset). The split is
    None for every track when the file has no set/split column.

    Raises:
        MetadataError: unreadable file, no set/subset column, or a subset it does not list.
    """
    wanted = None if subset == "full" else set(SUBSETS[: SUBSETS.index(subset) + 1])
    csv.field_size_limit(2**31 - 1)  # artist bios are long
    tracks: dict[int, str | None] = {}
    values = Counter()
    try:
        with open(tracks_csv, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            top, sub = next(reader, None), next(reader, None)
            if top is None or sub is None:
                raise MetadataError(f"{tracks_csv}: expected two header rows")
            columns = {(a, b): j for j, (a, b) in enumerate(zip(top, sub))}
            col = columns.get(("set", "subset"))
            if col is None:
                raise MetadataError(f"{tracks_csv}: no 'set' / 'subset' column in the two header rows")
            split_col = columns.get(("set", "split"))
            for row in reader:
                if not row or not row[0].strip().isdigit():
                    continue  # the "track_id" index-name row, blank lines
                value = row[col].strip() if col < len(row) else ""
                values[value] += 1
                if wanted is None or value in wanted:
                    split = row[split_col].strip() if split_col is not None and split_col < len(row) else None
                    tracks[int(row[0])] = split
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MetadataError(f"{tracks_csv}: cannot read it ({e})") from e
    if subset != "full" and values[subset] == 0:
        known = ", ".join(sorted(v for v in values if v)) or "nothing"
        raise MetadataError(f"{tracks_csv} does not know the subset {subset!r} (its set/subset column lists: {known})")
    if not tracks:
        raise MetadataError(f"{tracks_csv}: no tracks in subset {subset!r}")
    unknown = sorted({v for v in tracks.values() if v is not None and v not in FMA_SPLITS})
    if unknown:
        raise MetadataError(
            f"{tracks_csv}: unknown value(s) {', '.join(map(repr, unknown))} in column set/split; expected {', '.join(FMA_SPLITS)}"
        )
    return tracks


def printable(name: str) -> str:
    """``name`` as valid UTF-8 text: a file name whose bytes are not UTF-8 (Python holds them as
    surrogate escapes, which UTF-8 encoding, hashes and JSON readers refuse) gets each such
    byte written as ``\\xNN``; any other name is returned as it is."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def scan(source: AudioSource) -> Scan:
    """List the audio files to process, sorted by relative path.

    Raises:
        LayoutError: no audio file (or none of the subset) under the folder.
        MetadataError: see :func:`read_subset_ids`.
    """
    ids = read_tracks(source.metadata, source.subset) if source.metadata else None
    result = Scan(source=source, files=[])
    found_ids: set[int] = set()
    n_audio = 0
    for dirpath, dirnames, filenames in os.walk(source.audio_root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or path.suffix.lower() not in AUDIO_EXTENSIONS:
                result.other_files += 1
                continue
            n_audio += 1
            rel = printable(path.relative_to(source.audio_root).as_posix())  # journal, store and manifest name
            if source.kind == "fma":
                track = printable(path.stem)
                if ids is not None:
                    if not (track.isdigit() and int(track) in ids):
                        result.not_in_subset += 1
                        continue
                    found_ids.add(int(track))
                    fma_split = ids[int(track)]
                    if fma_split is not None and FMA_SPLITS[fma_split] is None:
                        result.fma_test_split += 1  # FMA's test split is not used (never decoded)
                        continue
                    result.files.append(
                        SourceFile(
                            path=path,
                            rel=rel,
                            track=track,
                            size=path.stat().st_size,
                            fma_split=FMA_SPLITS.get(fma_split),
                        )
                    )
                    continue
            else:
                track = rel[: -len(path.suffix)]
            result.files.append(SourceFile(path=path, rel=rel, track=track, size=path.stat().st_size))
    if ids is not None:
        result.metadata_tracks_without_file = len(set(ids) - found_ids)
    if n_audio == 0:
        raise LayoutError(f"{source.audio_root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder tree")
    if not result.files:
        raise LayoutError(
            f"{source.audio_root}: none of its {n_audio} audio files is in subset {source.subset!r} "
            f"(outside FMA's test split) according to {source.metadata}"
        )
    result.files.sort(key=lambda f: f.rel)
    return result


# --- running one shard ------------------------------------------------------------------


def shard_of(rel: str, n_shards: int) -> int:
    """Which shard processes a file: a hash of its relative path (stable across machines)."""
    return zlib.crc32(rel.encode()) % n_shards


def _unit_hash(track: str) -> float:
    """A track key's deterministic position in [0, 1)."""
    return int.from_bytes(hashlib.blake2b(track.encode(), digest_size=8).digest(), "big") / 2.0**64


def split_of(track: str, valid_fraction: float) -> str:
    """ "valid" for a deterministic ``valid_fraction`` of track keys, else "train"."""
    return "valid" if _unit_hash(track) < valid_fraction else "train"


MIN_VALID_TRACKS = 2
"""Validation tracks held out at least whenever ``2 * MIN_VALID_TRACKS`` tracks are kept (issue 10):
mixtures of mixtures need clips of two tracks, so a smaller validation split cannot be used."""


def raised_to_minimum(tracks: set[str], valid_fraction: float) -> set[str]:
    """Kept tracks that :func:`split_of` puts in "train" but that go to "valid" so that at least
    ``MIN_VALID_TRACKS`` are held out when 4 or more tracks are kept: those nearest to the
    fraction's cut (smallest hash), so the choice is as deterministic as the split itself."""
    if len(tracks) < 2 * MIN_VALID_TRACKS:
        return set()
    in_valid = sum(split_of(t, valid_fraction) == "valid" for t in tracks)
    rest = sorted((t for t in tracks if split_of(t, valid_fraction) == "train"), key=lambda t: (_unit_hash(t), t))
    return set(rest[: max(0, MIN_VALID_TRACKS - in_valid)])


def _shard_dir(out: Path, shard: tuple[int, int]) -> Path:
    return out / mf.SHARDS / f"{shard[0]}-of-{shard[1]}"


def _check_config(shard_dir: Path, wanted: dict) -> None:
    path = shard_dir / "config.json"
    if path.exists():
        have = json.loads(path.read_text())
        diff = [k for k in ("source", "rules") if have.get(k) != wanted[k]]
        if diff:
            raise PrepareError(
                f"{shard_dir} was prepared with other {' and '.join(diff)}: "
                f"had {json.dumps({k: have.get(k) for k in diff})}, now {json.dumps({k: wanted[k] for k in diff})}. "
                f"Use a new --out folder, or delete {shard_dir} to start this shard again."
            )
    else:
        mf.write_json(path, wanted)


def _try_lock(path: Path, *, wait: bool = False):
    """An exclusive lock on ``path`` (an open handle; closing it, or any death of this process,
    releases it), or None when another process holds it and ``wait`` is False."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _lock(shard_dir: Path):
    """Hold an exclusive lock on the shard for this process's life (released even by kill -9)."""
    handle = _try_lock(shard_dir / "lock")
    if handle is None:
        raise PrepareError(f"{shard_dir} is being prepared by another running process; wait for it or stop it")
    return handle


def _merge_lock(out: Path):
    """The lock every merge takes first (waiting for a merge in progress to finish)."""
    return _try_lock(out / mf.SHARDS / "merge.lock", wait=True)


class _WriteFailed(Exception):
    """Internal: a store or the journal could not be written; carries the OSError."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _write_failure(error: OSError, shard_dir: Path, mine: list, done: dict[str, dict]) -> StorageError:
    """The message for a run stopped by a write error: where, how much more space, what is kept."""
    remaining = [f for f in mine if f.rel not in done]
    kept = [(f.size, done[f.rel]["store_frames"]) for f in mine if done.get(f.rel, {}).get("status") == "kept"]
    bytes_per_frame = STORE_CHANNELS * STORE_DTYPE.itemsize
    if kept and sum(size for size, _ in kept):
        ratio = sum(frames for _, frames in kept) * bytes_per_frame / sum(size for size, _ in kept)
        needed = sum(f.size for f in remaining) * ratio
    else:  # nothing kept yet: 16-bit PCM from a ~128 kbit/s MP3 is ~11x its size, from WAV/FLAC <= 1x
        needed = sum(
            f.size * (1.0 if f.path.suffix.lower() in (".wav", ".flac", ".aiff", ".aif") else 11.0) for f in remaining
        )
    message = describe_os_error(error, needed=int(needed) if error.errno in SPACE_ERRORS else None)
    return StorageError(
        f"prepare-fma stopped: {message}\n{len(mine) - len(remaining)} of {len(mine)} files are finished and "
        f"journaled in {shard_dir}; the same command decodes the other {len(remaining)} (none of them was "
        "rejected for this)."
    )


def _remove_partials(audio_dir: Path) -> int:
    """Delete half-written store files of killed runs (call only when no worker is alive)."""
    removed = 0
    for dirpath, _, filenames in os.walk(audio_dir):
        for name in filenames:
            if name.endswith(PARTIAL_SUFFIX):
                Path(dirpath, name).unlink(missing_ok=True)
                removed += 1
    return removed


def prepare_fma(source: AudioSource, config: PrepareConfig) -> dict | None:
    """Prepare this shard of ``source`` into ``config.out``, resuming any earlier run.

    Returns:
        The merged summary (see :func:`merge_shards`), or None when other shards of a
        sharded run are not finished yet.

    Raises:
        DataError (LayoutError, MetadataError, PrepareError): nothing usable to do; raised
        before any decoding. Broken audio files never raise: they are rejected.
        StorageError: a store or the journal could not be written; what is journaled is kept.
    """
    out = Path(config.out).expanduser().resolve()
    others = {n for (_, n) in mf.shard_dirs(out)} - {config.shard[1]}
    if others:
        raise PrepareError(f"{out} already holds a {sorted(others)[0]}-way sharded run; use the same N or a new --out")
    listing = scan(source)
    shard_dir = _shard_dir(out, config.shard)
    lock = _lock(shard_dir)
    try:
        _check_config(
            shard_dir, {"source": source.to_dict(), "rules": config.rules.to_dict(), "shard": list(config.shard)}
        )
        (shard_dir / "done.json").unlink(missing_ok=True)
        if not wait_for_orphans(shard_dir / "workers.lock"):
            raise PrepareError(f"{shard_dir}: worker processes of an earlier run are still alive; stop them first")
        _remove_partials(shard_dir / "audio")
        remove_stale_temporaries(shard_dir)
        journal = mf.Journal(shard_dir / "journal.jsonl")
        finished = journal.load()
        _forget_damaged_stores(out, finished)
        mine = [f for f in listing.files if shard_of(f.rel, config.shard[1]) == config.shard[0]]
        todo = [f for f in mine if f.rel not in finished]
        tasks = [
            Task(
                key=f.rel,
                args=(str(f.path), str(shard_dir / "audio" / f"{f.rel}.s16"), config.rules),
                weight=f.size,
                meta={"file": f},
            )
            for f in todo
        ]

        def on_result(task: Task, result: dict) -> None:
            f: SourceFile = task.meta["file"]
            if result["status"] == WRITE_FAILED:  # not journaled: the rerun decodes this file again
                raise _WriteFailed(OSError(result["errno"], result["strerror"], result["filename"]))
            record = {"file": f.rel, "track": f.track, **result}
            if f.fma_split is not None:
                record["fma_split"] = f.fma_split
            if result["status"] == "kept":
                record["store"] = (shard_dir / "audio" / f"{f.rel}.s16").relative_to(out).as_posix()
            try:
                journal.append(record)
            except OSError as e:
                raise _WriteFailed(e) from e
            finished[f.rel] = record

        def on_crash(task: Task) -> None:
            on_result(
                task,
                {
                    "status": "rejected",
                    "reason": "decoder_crashed",
                    "detail": "worker process died twice",
                    "seconds": 0.0,
                },
            )

        label = f"prepare-fma shard {config.shard[0]}/{config.shard[1]}" if config.shard[1] > 1 else "prepare-fma"
        try:
            run_parallel(
                process_file,
                tasks,
                workers=config.workers,
                on_result=on_result,
                on_crash=on_crash,
                label=label,
                log_path=shard_dir / "decoder.log",
                lock_path=shard_dir / "workers.lock",
                progress=config.progress,
            )
        except _WriteFailed as e:
            raise _write_failure(e.error, shard_dir, mine, finished) from None
        finally:
            journal.close()
        mf.write_json(
            shard_dir / "done.json",
            {"files": len(mine), "resumed": len(mine) - len(todo), "processed": len(todo), "scan": listing.stats()},
        )
        # Merge while still holding this shard's lock (issue 11: a second run on the same folder
        # must not delete done.json under a merge). The last shard to finish merges; a shard
        # still locked by its own run will merge when it finishes.
        with _merge_lock(out):
            others = _lock_other_shards(out, config.shard)
            if others is None:
                return None
            try:
                shards = mf.shard_dirs(out)
                n = config.shard[1]
                if all((i, n) in shards and (shards[(i, n)] / "done.json").exists() for i in range(n)):
                    return _merge_locked(out, config.valid_fraction)
                return None
            finally:
                for handle in others:
                    handle.close()
    finally:
        lock.close()


def _forget_damaged_stores(out: Path, finished: dict[str, dict]) -> None:
    """Drop from ``finished`` (and delete) every kept file whose store is missing or not the
    size its journal record says, so this run decodes it again; warn about them."""
    frame_bytes = STORE_CHANNELS * STORE_DTYPE.itemsize
    damaged = []
    for rel, record in list(finished.items()):
        if record.get("status") != "kept":
            continue
        store = out / record["store"]
        try:
            size = store.stat().st_size
        except OSError:
            size = None
        if size != record["store_frames"] * frame_bytes:
            damaged.append(
                f"{store} ({'missing' if size is None else f'{size} bytes'}, journaled {record['store_frames'] * frame_bytes})"
            )
            store.unlink(missing_ok=True)
            del finished[rel]
    if damaged:
        shown = "; ".join(damaged[:5]) + (f"; and {len(damaged) - 5} more" if len(damaged) > 5 else "")
        warnings.warn(
            f"{len(damaged)} store file(s) are damaged, so their sources are decoded again: {shown}",
            StorageWarning,
            stacklevel=3,
        )


def _lock_other_shards(out: Path, mine: tuple[int, int] | None) -> list | None:
    """Locks of every shard folder in ``out`` but ``mine``; None (and no lock kept) when
    another process is preparing one of them."""
    held = []
    for key, folder in sorted(mf.shard_dirs(out).items()):
        if key == mine:
            continue
        handle = _try_lock(folder / "lock")
        if handle is None:
            for h in held:
                h.close()
            return None
        held.append(handle)
    return held


# --- merging shards into the manifest ---------------------------------------------------


def merge_shards(out: str | Path, *, valid_fraction: float | None = None) -> dict:
    """Write manifest.jsonl, rejected.jsonl, summary.json and index.npz from the shard journals.

    The split: FMA's own (tracks.csv) for files that have one, when ``valid_fraction`` is
    None; otherwise a hash of the track key puts ``valid_fraction`` of the tracks (default
    DEFAULT_VALID_FRACTION) in "valid". Idempotent: it can be re-run (e.g. with a
    ``valid_fraction`` to re-split by hash) without decoding.

    Returns:
        The summary (also written to ``DIR/summary.json``).

    Raises:
        PrepareError: no shard, shards of different N, a shard not finished or being prepared
        by a running process, or shards prepared with different sources or rules.
    """
    out = Path(out).expanduser().resolve()
    _check_fraction(valid_fraction)
    if not mf.shard_dirs(out):
        raise PrepareError(f"{out}: no {mf.SHARDS}/<I>-of-<N> folders to merge; run `mixit prepare-fma` first")
    with _merge_lock(out):
        held = _lock_other_shards(out, None)
        if held is None:
            raise PrepareError(
                f"{out}: a shard is being prepared by a running process right now; "
                "it merges by itself when it finishes (or run --merge after it)"
            )
        try:
            return _merge_locked(out, valid_fraction)
        finally:
            for handle in held:
                handle.close()


def _merge_locked(out: Path, valid_fraction: float | None) -> dict:
    """:func:`merge_shards`'s work; the caller holds the merge lock and every shard's lock."""
    remove_stale_temporaries(out)
    shards = mf.shard_dirs(out)
    if not shards:
        raise PrepareError(f"{out}: no {mf.SHARDS}/<I>-of-<N> folders to merge; run `mixit prepare-fma` first")
    ns = sorted({n for _, n in shards})
    if len(ns) > 1:
        raise PrepareError(f"{out}: shards of different splits ({', '.join(f'N={n}' for n in ns)}); keep one N")
    n = ns[0]
    unfinished = [f"{i}/{n}" for i in range(n) if (i, n) not in shards or not (shards[(i, n)] / "done.json").exists()]
    if unfinished:
        raise PrepareError(
            f"{out}: shard(s) {', '.join(unfinished)} not finished; run them (or copy their folders in) first"
        )
    configs = [json.loads((shards[(i, n)] / "config.json").read_text()) for i in range(n)]
    for c in configs[1:]:
        if (c["source"]["kind"], c["source"]["subset"], c["rules"]) != (
            configs[0]["source"]["kind"],
            configs[0]["source"]["subset"],
            configs[0]["rules"],
        ):
            raise PrepareError(f"{out}: shards were prepared with different sources or rules: {configs[0]} vs {c}")
    rules = ClipRules(**configs[0]["rules"])
    records: dict[str, dict] = {}
    roots: dict[str, Path] = {}
    for i in range(n):
        for rel, record in mf.Journal(shards[(i, n)] / "journal.jsonl").load().items():
            records[rel] = record
            roots[rel] = Path(configs[i]["source"]["audio_root"])
    hash_fraction = DEFAULT_VALID_FRACTION if valid_fraction is None else valid_fraction
    by_fma = valid_fraction is None and any("fma_split" in r for r in records.values())
    # the minimum of validation tracks applies to the hash split; FMA's own split is taken as it is
    raised = (
        set()
        if by_fma
        else raised_to_minimum({r["track"] for r in records.values() if r["status"] == "kept"}, hash_fraction)
    )
    index = mf.IndexBuilder()
    per_split: Counter = Counter()
    tracks_per_split: dict[str, set] = {s: set() for s in mf.SPLITS}

    def manifest_rows():
        for rel in sorted(records):
            r = records[rel]
            if r["status"] != "kept":
                continue
            if by_fma and "fma_split" in r:
                split = r["fma_split"]
            else:
                split = "valid" if r["track"] in raised else split_of(r["track"], hash_fraction)
            per_split[split] += len(r["segments"])
            tracks_per_split[split].add(r["track"])
            for offset, store_offset in r["segments"]:
                row = {
                    "track": r["track"],
                    "source": str(roots[rel] / rel),
                    "offset": offset,
                    "length": rules.segment_frames,
                    "split": split,
                    "store": r["store"],
                    "store_offset": store_offset,
                }
                index.add(row)
                yield row

    rejected = (
        {"file": str(roots[rel] / rel), "track": r["track"], "reason": r["reason"], "detail": r.get("detail", "")}
        for rel, r in sorted(records.items())
        if r["status"] != "kept"
    )
    manifest_sha256 = mf.write_jsonl(out / mf.MANIFEST, manifest_rows())
    mf.write_jsonl(out / mf.REJECTED, rejected)
    index.save(out, rules.sample_rate, manifest_sha256=manifest_sha256)
    splits = {
        "segments_per_split": {s: per_split.get(s, 0) for s in mf.SPLITS},
        "tracks_per_split": {s: len(t) for s, t in tracks_per_split.items()},
        "valid_tracks_raised": len(raised),
    }
    splits["split_rule"] = "fma tracks.csv" if by_fma else "hash"
    summary = _summary(records, splits, rules, configs[0], shards[(0, n)], None if by_fma else hash_fraction, n)
    mf.write_json(out / mf.SUMMARY, summary)
    return summary


def _summary(records, splits, rules, config, shard0, valid_fraction, n_shards) -> dict:
    kept = [r for r in records.values() if r["status"] == "kept"]
    reasons = Counter(r["reason"] for r in records.values() if r["status"] == "rejected")
    store_frames = sum(r["store_frames"] for r in kept)
    n_segments = sum(len(r["segments"]) for r in kept)
    scan_stats = json.loads((shard0 / "done.json").read_text()).get("scan", {})
    return {
        "files_seen": len(records),
        "files_kept": len(kept),
        "files_rejected": dict(sorted(reasons.items())),
        "files_not_in_subset": scan_stats.get("not_in_subset", 0),
        "metadata_tracks_without_file": scan_stats.get("metadata_tracks_without_file", 0),
        "files_in_fma_test_split": scan_stats.get("fma_test_split", 0),
        "other_files": scan_stats.get("other_files", 0),
        "segments_kept": n_segments,
        "segments_dropped": {
            "silent": sum(r["dropped"] for r in kept),
            "nonfinite": sum(r.get("dropped_nonfinite", 0) for r in kept),
        },
        "files_with_nonfinite": sum(
            1 for r in records.values() if r.get("nonfinite_samples") or r.get("reason") == "nonfinite"
        ),
        **splits,
        "hours_seen": round(sum(r.get("seconds", 0.0) for r in records.values()) / 3600, 4),
        "hours_kept": round(store_frames / rules.sample_rate / 3600, 4),
        "hours_in_segments": round(n_segments * rules.segment_seconds / 3600, 4),
        "store_bytes": store_frames * STORE_CHANNELS * STORE_DTYPE.itemsize,
        "valid_fraction": valid_fraction,
        "shards": n_shards,
        "source": config["source"],
        "rules": config["rules"],
        "reasons": {k: REASONS[k] for k in sorted(reasons)},
    }


def describe(summary: dict) -> str:
    """A few human-readable lines about a summary, for the CLI."""
    rejected = ", ".join(f"{k} {v}" for k, v in summary["files_rejected"].items()) or "none"
    split = (
        "FMA's own split from tracks.csv"
        if summary.get("split_rule") == "fma tracks.csv"
        else f"{summary['valid_fraction']:g} of tracks held out by hash"
    )
    test = summary.get("files_in_fma_test_split", 0)
    return (
        f"files: {summary['files_seen']} seen, {summary['files_kept']} kept; rejected: {rejected}\n"
        f"split: {split}" + (f"; {test} files of FMA's test split left out" if test else "") + "\n"
        f"clips: {summary['segments_kept']} kept ({summary['segments_per_split']['train']} train, "
        f"{summary['segments_per_split']['valid']} valid), {summary['segments_dropped']['silent']} dropped as silent"
        + (
            f", {summary['segments_dropped']['nonfinite']} dropped for non-finite samples (NaN or infinity; "
            f"{summary['files_with_nonfinite']} file(s) held some)"
            if summary.get("files_with_nonfinite")
            else ""
        )
        + "\n"
        f"audio: {summary['hours_kept']:.2f} h kept of {summary['hours_seen']:.2f} h seen, "
        f"store {summary['store_bytes'] / 2**30:.2f} GiB\n" + _describe_valid(summary)
    )


def _describe_valid(summary: dict) -> str:
    tracks, raised = summary["tracks_per_split"], summary.get("valid_tracks_raised", 0)
    line = f"validation: {tracks['valid']} of {tracks['train'] + tracks['valid']} tracks held out"
    if raised:
        line += (
            f" ({raised} added: --valid-fraction {summary['valid_fraction']:g} gave {tracks['valid'] - raised}, "
            f"and at least {MIN_VALID_TRACKS} are held out whenever {2 * MIN_VALID_TRACKS} or more tracks are kept)"
        )
    elif tracks["valid"] < MIN_VALID_TRACKS:
        line += (
            f"; pretrain needs at least {MIN_VALID_TRACKS} validation tracks, so add tracks "
            f"(with {2 * MIN_VALID_TRACKS} or more kept, {MIN_VALID_TRACKS} are held out)"
        )
    return line


__all__ = [
    "SUBSETS",
    "AudioSource",
    "PrepareConfig",
    "Scan",
    "SourceFile",
    "describe",
    "locate_audio_dir",
    "locate_fma",
    "merge_shards",
    "parse_shard",
    "prepare_fma",
    "raised_to_minimum",
    "read_subset_ids",
    "read_tracks",
    "scan",
    "shard_of",
    "split_of",
]
