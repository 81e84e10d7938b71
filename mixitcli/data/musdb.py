"""MUSDB18-HQ: the raw tree's reader and layout check, its validation split, source activity
detection, and `mixit prepare-musdb`.

Layout (docs/method.md §2.2): ``ROOT/{train,test}/<Artist - Title>/{mixture,vocals,drums,bass,other}.wav``,
stereo 44.1 kHz; 100 train tracks (86 after taking out the standard 14 validation tracks) and
50 test tracks.

`mixit prepare-musdb` is `mixit prepare-stems` (:mod:`mixitcli.data.prepare_stems`) with the
MUSDB18-HQ defaults: the four stems, the five files every song must have, the standard
validation tracks; one code path (issue 21). The prepared folder is described there and read by
:mod:`mixitcli.data.prepared`.

Validation split: the standard validation tracks that ``ROOT/train`` holds. A tree with none
of them (your own stems, MoisesDB) gets validation tracks held out of train instead (issue 10):
:func:`held_out_tracks` picks them by a hash of the track name, about 10 % and at least 2 by
default, so the split is the same on every machine and run.

Only the HQ (WAV) version is read. The compressed MUSDB18 (``*.stem.mp4``) is recognised and
refused with a clear message: its stems are AAC-coded, so numbers computed on it are not
comparable with the paper's (which are on MUSDB18-HQ). Convert it with `musdbconvert` from the
`musdb` package if you must, knowing that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixitcli.data.errors import LayoutError
from mixitcli.data.layouts import HQ_HINT, read_folders, song_folders
from mixitcli.data.prepare_stems import StemsSpec, prepare_stems
from mixitcli.data.prepared import PreparedTrack, load_prepared_tracks
from mixitcli.data.sad import SadConfig, salient_segments
from mixitcli.data.splits import MIN_VALID_TRACKS, NO_VALIDATION_FIX, VALID_SHARE, VALIDATION_TRACKS, held_out_tracks
from mixitcli.stems import STEMS

SOURCES = ("mixture", *STEMS)
"""The five WAV files of a track: the mixture and the stems (in the model order, :mod:`mixitcli.stems`)."""

SUBSETS = ("train", "valid", "test")


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
    _, problems = read_folders(root, required=SOURCES, splits=splits)
    if problems:
        raise LayoutError(f"{root} is not a complete MUSDB18-HQ tree ({len(problems)} problem(s)):", problems)


def _validation_names(root: Path, valid_tracks: int | None) -> set[str]:
    """The validation track names of a raw tree: the standard ones present, else those held out."""
    names = [f.name for f in song_folders(root, "train", [])]
    standard = {n for n in names if n in VALIDATION_TRACKS}
    return standard or set(held_out_tracks(names, valid_tracks))


def scan_musdb(
    root: str | Path, subset: str = "test", *, validate: bool = True, valid_tracks: int | None = None
) -> list[MusdbTrack]:
    """The tracks of one subset of a raw MUSDB18-HQ tree, sorted by name.

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
    folders = song_folders(root, split, problems)
    if problems:
        raise LayoutError(f"{root}:", problems)
    valid = _validation_names(root, valid_tracks) if split == "train" else set()
    tracks = [MusdbTrack(name=f.name, subset=_subset_of(f.name, split, valid), folder=f.resolve()) for f in folders]
    return [t for t in tracks if t.subset == subset]


def _subset_of(name: str, split: str, valid: set[str]) -> str:
    return "test" if split == "test" else ("valid" if name in valid else "train")


def prepare_musdb(
    root: str | Path,
    out: str | Path,
    *,
    workers: int = 1,
    progress: bool = True,
    config: SadConfig = SadConfig(),
    valid_tracks: int | None = None,
) -> dict:
    """`mixit prepare-musdb`: :func:`mixitcli.data.prepare_stems.prepare_stems` with the MUSDB18-HQ
    defaults (the four stems in the models' order, all five files required in every song).

    Args:
        valid_tracks: without any standard validation track in ROOT/train, hold out this many
            training tracks for validation (None: about 10 %, at least 2; see :func:`held_out_tracks`).

    Returns:
        The summary written to ``DIR/summary.json``.

    Raises:
        LayoutError: the layout check failed (every problem listed).
        DataError: ``valid_tracks`` does not fit the tree.
    """
    return prepare_stems(root, out, musdb_spec(valid_tracks), workers=workers, progress=progress, config=config)


def musdb_spec(valid_tracks: int | None = None) -> StemsSpec:
    """The :class:`~mixitcli.data.prepare_stems.StemsSpec` of MUSDB18-HQ: its four stems, its five files."""
    return StemsSpec(stems=STEMS, required=SOURCES, valid_tracks=valid_tracks, command="prepare-musdb")


__all__ = [
    "HQ_HINT",
    "MIN_VALID_TRACKS",
    "NO_VALIDATION_FIX",
    "VALID_SHARE",
    "SOURCES",
    "SUBSETS",
    "VALIDATION_TRACKS",
    "MusdbTrack",
    "PreparedTrack",
    "SadConfig",
    "held_out_tracks",
    "load_prepared_tracks",
    "musdb_spec",
    "prepare_musdb",
    "salient_segments",
    "scan_musdb",
    "validate_musdb",
]
