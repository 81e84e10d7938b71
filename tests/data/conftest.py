"""Small data trees in the real layouts, generated once per session.

FMA: ``fma_small/<3-digit>/<6-digit>.mp3`` plus ``fma_metadata/tracks.csv`` (two header rows,
the "track_id" index row, a quoted multi-line field), with one file per rule of docs/method.md §2.1.
MUSDB18-HQ: ``train/`` and ``test/`` track folders of five WAVs, with a silent vocal stem and
one of the standard validation tracks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.builders import SR, noise, write

# The FMA tree: track id -> (folder, what it is, expected outcome for --subset small).
# Kept files list their clip starts in seconds (10 s clips, 5 s hop, plus one ending at the end).
FMA_FILES = {
    "000002": ("44.1 kHz stereo 20 s", "kept", [0, 5, 10]),
    "000005": ("48 kHz stereo 17 s, resampled", "kept", [0, 5, 7]),
    "001000": ("44.1 kHz stereo 12 s", "kept", [0, 2]),
    "001001": ("22.05 kHz stereo 12 s", "low_sample_rate", None),
    "001002": ("44.1 kHz mono 12 s", "mono", None),
    "002000": ("44.1 kHz stereo 12 s of digital silence", "silent", None),
    "002001": ("first half of a 30 s MP3", "truncated", None),
    "002002": ("0 bytes", "empty", None),
    "002003": ("a text file named .mp3", "undecodable", None),
    "003000": ("44.1 kHz stereo 8 s", "too_short", None),
    "003001": ("a 'medium' track (not in small)", "not_in_subset", [0, 2]),
}
FMA_METADATA_ONLY = "004000"  # a small track listed in tracks.csv with no file


def make_fma_tree(root: Path) -> Path:
    small = root / "fma_small"
    mp3 = lambda tid: small / tid[:3] / f"{tid}.mp3"  # noqa: E731
    write(mp3("000002"), noise(20, seed=2))
    write(mp3("000005"), noise(17, rate=48000, seed=5), rate=48000)
    write(mp3("001000"), noise(12, seed=10))
    write(mp3("001001"), noise(12, rate=22050, seed=11), rate=22050)
    write(mp3("001002"), noise(12, channels=1, seed=12))
    write(mp3("002000"), np.zeros((12 * SR, 2), np.float32))
    whole = write(root / "tmp" / "whole.mp3", noise(30, seed=21)).read_bytes()
    mp3("002001").write_bytes(whole[: len(whole) // 2])
    mp3("002002").write_bytes(b"")
    mp3("002003").write_text("this is not audio\n" * 20)
    write(mp3("003000"), noise(8, seed=30))
    write(mp3("003001"), noise(12, seed=31))
    (small / "checksums").write_text("not audio, not an audio suffix\n")
    shutil.rmtree(root / "tmp")
    meta = root / "fma_metadata"
    meta.mkdir()
    subset = {tid: "small" for tid in FMA_FILES} | {"003001": "medium", FMA_METADATA_ONLY: "small"}
    lines = [
        ",album,artist,set,set,track",
        ",title,bio,split,subset,title",
        "track_id,,,,,",
    ]
    for tid, sub in sorted(subset.items()):
        lines.append(f'{int(tid)},Album {tid},"An artist, with a comma\nand a second line",training,{sub},Song {tid}')
    (meta / "tracks.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def fma_root(tmp_path_factory) -> Path:
    return make_fma_tree(tmp_path_factory.mktemp("fma"))


@pytest.fixture(scope="session")
def fma_prepared(fma_root, tmp_path_factory) -> Path:
    """fma_root prepared with the defaults (subset small), 2 worker processes."""
    from mixitcli.data import fma

    out = tmp_path_factory.mktemp("fma_out") / "prep"
    fma.prepare_fma(
        fma.locate_fma(fma_root, "small"), fma.PrepareConfig(out=out, workers=2, progress=False, valid_fraction=0.5)
    )
    return out


# A pool of WAV tracks for the samplers: 12 tracks of 12 s (2 clips each), distinct levels.
POOL_TRACKS = [f"t{k:02d}" for k in range(12)]


@pytest.fixture(scope="session")
def pool_prepared(tmp_path_factory) -> Path:
    from mixitcli.data import fma

    src = tmp_path_factory.mktemp("pool")
    for k, name in enumerate(POOL_TRACKS):
        write(src / f"{name}.wav", noise(12, amp=0.02 * (k + 1), seed=100 + k))
    out = tmp_path_factory.mktemp("pool_out") / "prep"
    fma.prepare_fma(
        fma.locate_audio_dir(src), fma.PrepareConfig(out=out, workers=0, progress=False, valid_fraction=0.3)
    )
    return out


# MUSDB18-HQ: name -> (split, seconds). "B - Two" has a silent vocal stem; A's bass stops at 10 s.
MUSDB_TRACKS = {
    "A - One": ("train", 20),
    "B - Two": ("train", 16),
    "Actions - One Minute Smile": ("train", 12),  # a standard validation track
    "C - Three": ("test", 10),
    "D - Four": ("test", 9),
}
STEM_NAMES = ("vocals", "drums", "bass", "other")


def make_musdb_tree(root: Path) -> Path:
    for k, (name, (split, seconds)) in enumerate(MUSDB_TRACKS.items()):
        folder = root / split / name
        stems = {s: noise(seconds, amp=0.02 * (j + 1), seed=10 * k + j) for j, s in enumerate(STEM_NAMES)}
        if name == "B - Two":
            stems["vocals"][:] = 0.0
        if name == "A - One":
            stems["bass"][10 * SR :] = 0.0
        for s, x in stems.items():
            write(folder / f"{s}.wav", x)
        write(folder / "mixture.wav", sum(stems.values()))
    return root


@pytest.fixture(scope="session")
def musdb_root(tmp_path_factory) -> Path:
    return make_musdb_tree(tmp_path_factory.mktemp("musdb"))


@pytest.fixture(scope="session")
def musdb_prepared(musdb_root, tmp_path_factory) -> Path:
    from mixitcli.data.musdb import prepare_musdb

    out = tmp_path_factory.mktemp("musdb_out") / "prep"
    prepare_musdb(musdb_root, out, workers=0, progress=False)
    return out
