"""On-disk formats of a prepared FMA folder, and the fast reader the samplers use.

A prepared folder ``DIR`` (written by `mixit prepare-fma`)::

    DIR/manifest.jsonl    one line per kept clip (the contract, human-readable):
                          {"track": "000002", "source": "/abs/fma_large/000/000002.mp3",
                           "offset": 220500, "length": 441000, "split": "train",
                           "store": "shards/0-of-1/audio/000/000002.mp3.s16", "store_offset": 0}
                          offset/length: samples at 44.1 kHz in the (resampled) source;
                          store: path relative to DIR; store_offset: frames into the store.
    DIR/rejected.jsonl    one line per rejected file: {"file", "track", "reason", "detail"}
    DIR/summary.json      files seen / kept / rejected by reason, clips kept and dropped,
                          hours, clips and tracks per split, store size, options
    DIR/index.npz         the manifest as numpy arrays (what the samplers load; derived),
                          with the SHA-256 of the manifest.jsonl it was built from
    DIR/shards/<I>-of-<N>/     one folder per shard (a plain run is shard 0-of-1)
        config.json       source and clip rules; a resume must match them
        journal.jsonl     one line per finished source file: the resume state
        done.json         present once every file of the shard is journaled
        audio/<rel>.s16   the file's kept audio, raw little-endian int16, interleaved
                          stereo (t, c=2), 44.1 kHz: frames = bytes / 4
        decoder.log       what the decoders printed (MP3 resync notes, ...)

The store holds each file's kept audio once (overlapping clips share it), so it is exactly
the kept audio's 16-bit PCM size; a 6 s crop is one ``pread`` of 1 MB.

Checks when a reader opens the folder (issue 20): :meth:`SegmentIndex.load` compares the
manifest's SHA-256 with the one in index.npz. An index that does not match (the manifest was
edited, or an older mixit wrote the index) is rebuilt from the manifest when every line of it is
valid, with a warning (:class:`mixitcli.storage.StorageWarning`); otherwise it is refused,
naming the file and line. :meth:`SegmentIndex.check_stores` (when a run starts) checks that
every store file covers its clips, so a truncated store is an error naming the file, both sizes
and the command that decodes it again, not a traceback in the middle of training.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shlex
import warnings
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixitcli.data.clips import PCM_SCALE, STORE_CHANNELS, STORE_DTYPE
from mixitcli.data.errors import PreparedDataError, with_problems
from mixitcli.storage import StorageWarning, atomic_write_text, describe_os_error, naming, temp_path

SPLITS = ("train", "valid")

MANIFEST = "manifest.jsonl"
REJECTED = "rejected.jsonl"
SUMMARY = "summary.json"
INDEX = "index.npz"
SHARDS = "shards"


write_text_atomic = atomic_write_text  # the project's one atomic text writer (mixitcli.storage)


def write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows) -> str:
    """Write rows (any iterable of dicts) as JSON lines, streaming, through a temporary name.

    Returns:
        The SHA-256 (hex) of the file written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    digest = hashlib.sha256()
    try:
        with naming(path), open(tmp, "wb") as f:
            for row in rows:
                line = (json.dumps(row) + "\n").encode()
                digest.update(line)
                f.write(line)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not stay full of our leftovers
        raise
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Journal:
    """Append-only record of finished files; survives ``kill -9`` at any moment.

    Each record is one JSON line written with a single ``write`` and flushed, so after a kill
    the file holds whole lines plus at most one torn last line, which :meth:`load` removes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None

    def load(self) -> dict[str, dict]:
        """Records by their ``file`` key (the last one wins); repairs a torn last line."""
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1  # everything after the last newline is torn
        records: dict[str, dict] = {}
        pos = 0
        for line in data[:good].splitlines(keepends=True):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                good = pos  # a damaged line: keep what came before it
                break
            records[record["file"]] = record
            pos += len(line)
        if good < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)
        return records

    def append(self, record: dict) -> None:
        """Append one record. If the write fails or is short (a full disk), the journal is
        cut back to its last whole line and the OSError raised: the record is simply not there."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab", buffering=0)
        data = (json.dumps(record) + "\n").encode()
        size = os.fstat(self._file.fileno()).st_size
        try:
            written = self._file.write(data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)", str(self.path))
        except OSError:
            with contextlib.suppress(OSError):
                os.truncate(self._file.fileno(), size)
            raise

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class IndexBuilder:
    """Collects manifest rows into compact arrays and saves them as ``index.npz``."""

    def __init__(self) -> None:
        self.stores: dict[str, int] = {}
        self.tracks: dict[str, int] = {}
        self.columns = {
            name: array(code)
            for name, code in (
                ("store_id", "i"),
                ("track_id", "i"),
                ("store_offset", "q"),
                ("length", "q"),
                ("split", "b"),
            )
        }

    def add(self, row: dict) -> None:
        c = self.columns
        c["store_id"].append(self.stores.setdefault(row["store"], len(self.stores)))
        c["track_id"].append(self.tracks.setdefault(row["track"], len(self.tracks)))
        c["store_offset"].append(row["store_offset"])
        c["length"].append(row["length"])
        c["split"].append(SPLITS.index(row["split"]))

    def arrays(self, sample_rate: int) -> dict[str, np.ndarray]:
        """The columns as index.npz holds them."""
        dtypes = {
            "store_id": np.int32,
            "track_id": np.int32,
            "store_offset": np.int64,
            "length": np.int64,
            "split": np.int8,
        }
        return {
            "stores": np.array(list(self.stores), dtype=str),
            "tracks": np.array(list(self.tracks), dtype=str),
            "sample_rate": np.array(sample_rate),
            **{name: np.frombuffer(col, dtype=col.typecode).astype(dtypes[name]) for name, col in self.columns.items()},
        }

    def save(self, prep_dir: Path, sample_rate: int, *, manifest_sha256: str) -> None:
        """Write index.npz (through a temporary name), recording the hash of the manifest it mirrors."""
        tmp = prep_dir / f".{INDEX}.{os.getpid()}.partial.npz"
        try:
            with naming(prep_dir / INDEX):
                np.savez(tmp, manifest_sha256=np.array(manifest_sha256), **self.arrays(sample_rate))
            tmp.replace(prep_dir / INDEX)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _row_problem(row) -> str | None:
    """What is wrong with one manifest row for the index (None: nothing)."""
    if not isinstance(row, dict):
        return "not a JSON object"
    wrong = []
    for key, ok in (
        ("track", lambda v: isinstance(v, str) and v),
        ("store", lambda v: isinstance(v, str) and v),
        ("store_offset", lambda v: type(v) is int and v >= 0),
        ("length", lambda v: type(v) is int and v > 0),
        ("split", lambda v: v in SPLITS),
    ):
        if key not in row:
            wrong.append(f"no {key!r}")
        elif not ok(row[key]):
            wrong.append(f"{key} {row[key]!r}")
    if wrong:
        return (
            "; ".join(wrong)
            + " (a clip needs a track, a store file, store_offset >= 0, length > 0 and split train or valid)"
        )
    return None


def _sample_rate_of(root: Path) -> int:
    """The prepared folder's sample rate: its summary's rules, else the model's 44.1 kHz."""
    from mixitcli.audio import SAMPLE_RATE

    try:
        return int(json.loads((root / SUMMARY).read_text())["rules"]["sample_rate"])
    except (OSError, ValueError, KeyError, TypeError):
        return SAMPLE_RATE


def shard_dirs(out: Path) -> dict[tuple[int, int], Path]:
    """The shard folders ``DIR/shards/<I>-of-<N>`` of a prepared folder: (I, N) -> folder."""
    found = {}
    for p in (Path(out) / SHARDS).glob("*-of-*"):
        m = re.fullmatch(r"(\d+)-of-(\d+)", p.name)
        if m and p.is_dir():
            found[(int(m.group(1)), int(m.group(2)))] = p
    return found


def prepare_command(out: str | Path) -> str:
    """The `mixit prepare-fma` command that prepared ``out`` (from its shards' config.json), for
    messages that ask to run it again: it resumes, decodes damaged store files again and
    writes the manifest and index anew. With several shards, one command per shard (``--shard I/N``)."""
    out = Path(out)
    shards = shard_dirs(out)
    if not shards:
        return f"mixit prepare-fma ... --out {out}"
    try:
        config = json.loads((sorted(shards.items())[0][1] / "config.json").read_text())
        source, rules = config["source"], config["rules"]
    except (OSError, ValueError, KeyError):
        return f"mixit prepare-fma ... --out {out}"
    root = Path(source["audio_root"])
    if source["kind"] == "dir":
        args = ["--audio-dir", str(root)]
    else:
        holder = root.parent if root.name.startswith("fma_") else root
        args = [str(holder), "--subset", str(source["subset"])]
        defaults = {str(holder / "fma_metadata" / "tracks.csv"), str(root.parent / "fma_metadata" / "tracks.csv")}
        if source.get("metadata") and source["metadata"] not in defaults:
            args += ["--metadata", source["metadata"]]
    if rules.get("silence_rule", "clip") != "clip":
        args += ["--silence-rule", rules["silence_rule"]]
    if rules.get("silence_db") is not None:
        args += ["--silence-db", f"{rules['silence_db']:g}"]
    if rules.get("keep_mono"):
        args.append("--keep-mono")
    n = sorted(shards)[0][1]
    if n > 1:
        args += ["--shard", f"I/{n}"]
    return shlex.join(["mixit", "prepare-fma", *args, "--out", str(out)]) + (
        f" (for each I of 0 ... {n - 1})" if n > 1 else ""
    )


def restore_command(root: Path) -> str:
    """The command that writes manifest.jsonl and index.npz of ``root`` again from the shard
    journals, without decoding (with the folder's own --valid-fraction, so the split stays)."""
    fraction = ""
    try:
        summary = json.loads((root / SUMMARY).read_text())
        if summary.get("split_rule") != "fma tracks.csv" and summary.get("valid_fraction") is not None:
            fraction = f" --valid-fraction {summary['valid_fraction']:g}"
    except (OSError, ValueError, TypeError):
        pass
    return f"mixit prepare-fma --merge --out {root}{fraction}"


@dataclass
class SegmentIndex:
    """The kept clips of a prepared FMA folder, as arrays (one entry per clip, s clips).

    Attributes:
        root: the prepared folder.
        stores: store file paths, relative to root.
        tracks: track keys.
        store_id, track_id: (s,) int32 indices into ``stores`` / ``tracks``.
        store_offset: (s,) int64 first frame of the clip in its store.
        length: (s,) int64 clip length in samples.
        split: (s,) int8, index into SPLITS ("train", "valid").
        sample_rate: Hz.
    """

    root: Path
    stores: list[str]
    tracks: list[str]
    store_id: np.ndarray
    track_id: np.ndarray
    store_offset: np.ndarray
    length: np.ndarray
    split: np.ndarray
    sample_rate: int

    @classmethod
    def load(cls, prep_dir: str | Path) -> SegmentIndex:
        """The index of a prepared folder, checked against its manifest.

        An index.npz that does not carry the SHA-256 of the current manifest.jsonl (the
        manifest was edited or replaced, or an older mixit wrote the index), or that cannot be
        read, is rebuilt from the manifest (and saved when the folder is writable), with a
        :class:`mixitcli.storage.StorageWarning`.

        Raises:
            PreparedDataError: DIR is not a finished `mixit prepare-fma` output, or its index
                is stale and the manifest cannot replace it (every bad line named).
        """
        root = Path(prep_dir)
        path, manifest = root / INDEX, root / MANIFEST
        if not manifest.is_file():
            raise PreparedDataError(
                f"{root}: no {MANIFEST}; run `mixit prepare-fma ... --out {root}` to the end "
                f"(or `mixit prepare-fma --merge --out {root}` after sharded runs)"
            )
        digest = file_sha256(manifest)
        why = f"{INDEX} is missing"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    fields = {name: z[name] for name in z.files}
                why = (
                    f"{MANIFEST} was changed after {INDEX} was written"
                    if "manifest_sha256" in fields
                    else f"{INDEX} carries no hash of its manifest (an older mixit wrote it)"
                )
                if str(fields.get("manifest_sha256", "")) == digest:
                    return cls._of(root, fields)
            except (OSError, ValueError, KeyError) as e:  # a damaged zip
                why = f"{INDEX} cannot be read ({type(e).__name__}: {e})"
        return cls._rebuilt(root, why)

    @classmethod
    def _of(cls, root: Path, z) -> SegmentIndex:
        return cls(
            root=root,
            stores=[str(s) for s in z["stores"]],
            tracks=[str(t) for t in z["tracks"]],
            store_id=z["store_id"],
            track_id=z["track_id"],
            store_offset=z["store_offset"],
            length=z["length"],
            split=z["split"],
            sample_rate=int(z["sample_rate"]),
        )

    @classmethod
    def _rebuilt(cls, root: Path, why: str) -> SegmentIndex:
        """The index built again from every line of manifest.jsonl (see :meth:`load`)."""
        manifest = root / MANIFEST
        builder, problems = IndexBuilder(), []
        digest = hashlib.sha256()
        with open(manifest, "rb") as f:
            for number, line in enumerate(f, start=1):
                digest.update(line)
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:  # UnicodeDecodeError included
                    problems.append(f"{manifest} line {number}: not a JSON line ({e})")
                    continue
                problem = _row_problem(row)
                if problem:
                    problems.append(f"{manifest} line {number}: {problem}")
                else:
                    builder.add(row)
        if not problems and not builder.stores:
            problems.append(f"{manifest}: no clip in it")
        if problems:
            raise PreparedDataError(
                with_problems(
                    f"{root}: {why}, and {MANIFEST} cannot replace it. Fix the lines below, or write both files again "
                    f"from the shard journals (no decoding): {restore_command(root)}",
                    problems,
                )
            )
        rate = _sample_rate_of(root)
        note = f"{root}: {why}; rebuilt {INDEX} from {MANIFEST} ({len(builder.columns['split'])} clips)"
        try:
            builder.save(root, rate, manifest_sha256=digest.hexdigest())
        except OSError as e:
            note += f", for this run only: it could not be saved ({describe_os_error(e)})"
        warnings.warn(note, StorageWarning, stacklevel=3)
        return cls._of(root, builder.arrays(rate))

    def __len__(self) -> int:
        return len(self.store_id)

    def in_split(self, split: str) -> np.ndarray:
        """Indices (k,) int64 of the clips in ``split``."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return np.flatnonzero(self.split == SPLITS.index(split))

    def check_stores(self, clips: np.ndarray) -> None:
        """Check that every store file holds the frames the ``clips`` (indices (k,)) read.

        Raises:
            PreparedDataError: naming each store that is missing or too short, its size, the
                size the manifest needs and the first manifest line it fails, and the command
                that decodes those files again.
        """
        frame_bytes = STORE_CHANNELS * STORE_DTYPE.itemsize
        ends = self.store_offset[clips] + self.length[clips]  # (k,) frames
        need = np.zeros(len(self.stores), dtype=np.int64)
        np.maximum.at(need, self.store_id[clips], ends)
        problems = []
        for s in np.flatnonzero(need):
            path = self.root / self.stores[s]
            try:
                size = path.stat().st_size
            except OSError:
                size = None
            if size is not None and size >= need[s] * frame_bytes:
                continue
            have = size // frame_bytes if size is not None else 0
            mine = clips[(self.store_id[clips] == s) & (ends > have)]
            line = int(mine.min()) + 1  # index entry k is manifest line k + 1
            got = "missing" if size is None else f"{size} bytes"
            problems.append(
                f"{path}: {got}, but {MANIFEST} needs {need[s] * frame_bytes} bytes (line {line} and later read beyond its end)"
            )
        if problems:
            raise PreparedDataError(
                with_problems(
                    f"{self.root}: audio store file(s) shorter than {MANIFEST} says (truncated or damaged). Run the "
                    f"command that prepared the folder again; it decodes those files again and rewrites the manifest: "
                    f"{prepare_command(self.root)}",
                    problems,
                )
            )

    def read(self, k: int, start: int, frames: int) -> np.ndarray:
        """Samples [start, start + frames) of clip k, as float32 (c, t)."""
        if start < 0 or start + frames > self.length[k]:
            raise ValueError(f"crop [{start}, {start + frames}) is outside clip {k} of length {self.length[k]}")
        path = self.root / self.stores[self.store_id[k]]
        offset = (int(self.store_offset[k]) + start) * STORE_CHANNELS * STORE_DTYPE.itemsize
        pcm = np.fromfile(path, dtype=STORE_DTYPE, count=frames * STORE_CHANNELS, offset=offset)
        if pcm.size != frames * STORE_CHANNELS:
            raise PreparedDataError(f"{path}: store is shorter than the manifest says (clip {k})")
        # (t*c,) -> (t, c) -> (c, t)
        return np.ascontiguousarray(pcm.reshape(frames, STORE_CHANNELS).T, dtype=np.float32) / np.float32(PCM_SCALE)
