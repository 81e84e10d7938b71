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
    DIR/index.npz         the manifest as numpy arrays (what the samplers load; derived)
    DIR/shards/<I>-of-<N>/     one folder per shard (a plain run is shard 0-of-1)
        config.json       source and clip rules; a resume must match them
        journal.jsonl     one line per finished source file: the resume state
        done.json         present once every file of the shard is journaled
        audio/<rel>.s16   the file's kept audio, raw little-endian int16, interleaved
                          stereo (t, c=2), 44.1 kHz: frames = bytes / 4
        decoder.log       what the decoders printed (MP3 resync notes, ...)

The store holds each file's kept audio once (overlapping clips share it), so it is exactly
the kept audio's 16-bit PCM size; a 6 s crop is one ``pread`` of 1 MB.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixitcli.data.clips import PCM_SCALE, STORE_CHANNELS, STORE_DTYPE
from mixitcli.data.errors import PreparedDataError
from mixitcli.storage import atomic_write_text, naming, temp_path

SPLITS = ("train", "valid")

MANIFEST = "manifest.jsonl"
REJECTED = "rejected.jsonl"
SUMMARY = "summary.json"
INDEX = "index.npz"
SHARDS = "shards"


write_text_atomic = atomic_write_text  # the project's one atomic text writer (mixitcli.storage)


def write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows) -> None:
    """Write rows (any iterable of dicts) as JSON lines, streaming, through a temporary name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with naming(path), open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not stay full of our leftovers
        raise


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
        self.columns = {name: array(code) for name, code in
                        (("store_id", "i"), ("track_id", "i"), ("store_offset", "q"), ("length", "q"), ("split", "b"))}

    def add(self, row: dict) -> None:
        c = self.columns
        c["store_id"].append(self.stores.setdefault(row["store"], len(self.stores)))
        c["track_id"].append(self.tracks.setdefault(row["track"], len(self.tracks)))
        c["store_offset"].append(row["store_offset"])
        c["length"].append(row["length"])
        c["split"].append(SPLITS.index(row["split"]))

    def save(self, prep_dir: Path, sample_rate: int) -> None:
        dtypes = {"store_id": np.int32, "track_id": np.int32, "store_offset": np.int64, "length": np.int64, "split": np.int8}
        tmp = prep_dir / f".{INDEX}.{os.getpid()}.partial.npz"
        try:
            with naming(prep_dir / INDEX):
                np.savez(
                    tmp,
                    stores=np.array(list(self.stores), dtype=str),
                    tracks=np.array(list(self.tracks), dtype=str),
                    sample_rate=np.array(sample_rate),
                    **{name: np.frombuffer(col, dtype=col.typecode).astype(dtypes[name]) for name, col in self.columns.items()},
                )
            tmp.replace(prep_dir / INDEX)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


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
    def load(cls, prep_dir: str | Path) -> "SegmentIndex":
        """Raises PreparedDataError when DIR is not a finished `mixit prepare-fma` output."""
        root = Path(prep_dir)
        path = root / INDEX
        if not path.is_file():
            raise PreparedDataError(
                f"{root}: no {INDEX}; run `mixit prepare-fma ... --out {root}` to the end "
                f"(or `mixit prepare-fma --merge --out {root}` after sharded runs)"
            )
        with np.load(path, allow_pickle=False) as z:
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

    def __len__(self) -> int:
        return len(self.store_id)

    def in_split(self, split: str) -> np.ndarray:
        """Indices (k,) int64 of the clips in ``split``."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return np.flatnonzero(self.split == SPLITS.index(split))

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
