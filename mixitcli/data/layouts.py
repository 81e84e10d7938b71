"""Where the stems of a collection are: the two layouts `mixit prepare-stems` reads (issue 21).

- **folders** (MUSDB18-HQ's layout, and the default): ``ROOT/{train,test}/<song>/<stem>.wav``,
  plus ``mixture.wav`` when the song has one. Every WAV file of a song folder is a stem named
  after the file. Every file of a song is stereo 44.1 kHz and as long as the others; anything
  else is an error that names the file (docs/stems.md says why: no silent resampling or padding).
- **moisesdb** (MoisesDB, `moises-db` on GitHub): one folder per track (a UUID), directly under
  ROOT or under a provider folder (``ROOT/moisesdb_v0.1/<uuid>``), holding ``data.json``
  (``artist``, ``song``, ``genre`` and ``stems``: a list of ``{"stemName", "tracks": [{"id",
  "extension", "trackType", ...}]}``) and one folder per stem category (``vocals/``, ``bass/``,
  ``drums/``, ``guitar/``, ``piano/``, ``other_keys/``, ``bowed_strings/``, ``wind/``,
  ``percussion/``, ``other_plucked/``, ``other/``) holding the tracks of that category
  (``<category>/<id>.<extension>``), which sum to its stem. There is no mixture file (it is the
  sum of every track) and no split. As the `moises-db` package does, a mono track is duplicated
  to stereo and a shorter track is padded with silence to the song's longest one.

Both readers only look at file headers: every problem of the whole tree is reported at once,
before any audio is decoded (:class:`~mixitcli.data.errors.LayoutError`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mixitcli.audio import SAMPLE_RATE
from mixitcli.stems import MIXTURE

HQ_HINT = (
    "mixit needs MUSDB18-HQ (WAV stems, https://zenodo.org/records/3338373): the compressed "
    "MUSDB18 (.stem.mp4) has AAC-coded stems, so scores on it are not comparable with the paper's"
)

LAYOUTS = ("folders", "moisesdb")
FOLDER_SPLITS = ("train", "test")
DATA_JSON = "data.json"


@dataclass
class Song:
    """One song of a stems collection as found on disk (headers read, no audio decoded).

    Attributes:
        name: the track name: the song folder's name (MoisesDB: its UUID).
        split: "train" or "test" (the ROOT folder it is in; MoisesDB songs start in "train").
        folder: the song folder.
        rel: the song folder relative to ROOT (where its derived audio goes in the prepared folder).
        mixture: mixture.wav, or None when the mixture is the sum of the stems.
        files: stem name -> its files, which sum to the stem (one file in the folders layout).
        frames: the song's length in samples (the longest file's).
        reshape: files that are mono or shorter than ``frames`` (MoisesDB only): they are
            duplicated to stereo or padded when the song is prepared.
        title: "artist - song" (MoisesDB), else the name.
    """

    name: str
    split: str
    folder: Path
    rel: str
    mixture: Path | None
    files: dict[str, list[Path]] = field(default_factory=dict)
    frames: int = 0
    reshape: list[Path] = field(default_factory=list)
    title: str = ""


def _header(path: Path, rel: str, problems: list[str]):
    """soundfile's header of ``path``, or None with a problem naming ``rel``."""
    import soundfile as sf

    try:
        return sf.info(str(path))
    except Exception as e:
        problems.append(f"{rel}: not a readable WAV ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})")
        return None


# --- folders ----------------------------------------------------------------------------------


def song_folders(root: Path, split: str, problems: list[str]) -> list[Path]:
    """The song folders of ``ROOT/split``, sorted; a missing or empty split is a problem."""
    folder = root / split
    if not folder.is_dir():
        problems.append(f"missing folder {split}/")
        return []
    songs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not songs:
        problems.append(f"{split}/ holds no track folders")
    return songs


def read_song_folder(folder: Path, split: str, required: tuple[str, ...] = ()) -> tuple[Song, list[str]]:
    """One song folder of the folders layout: its WAV files by stem name, checked.

    Args:
        folder: ``ROOT/<split>/<song>``.
        split: "train" or "test".
        required: names (``mixture`` and stems) whose file must exist (MUSDB18-HQ: all five).

    Returns:
        (song, problems): every missing, unreadable or mismatched file, named by its path
        under ROOT (``train/<song>/bass.wav: 48000 Hz, expected 44100``).
    """
    rel = f"{split}/{folder.name}"
    problems = [f"{rel}: missing {name}.wav" for name in required if not (folder / f"{name}.wav").is_file()]
    names = sorted(p.stem for p in folder.glob("*.wav") if p.is_file() and not p.name.startswith("."))
    # the mixture first: it is the length every stem is held to; then the required ones in their order
    first = dict.fromkeys((MIXTURE, *required))  # in order, once
    order = [n for n in first if n in names] + [n for n in names if n not in first]
    infos = {}
    for name in order:
        info = _header(folder / f"{name}.wav", f"{rel}/{name}.wav", problems)
        if info is not None:
            infos[name] = info
    reference = next(iter(infos), None)
    for name, info in infos.items():
        where = f"{rel}/{name}.wav"
        if info.samplerate != SAMPLE_RATE:
            problems.append(f"{where}: {info.samplerate} Hz, expected {SAMPLE_RATE}")
        if info.channels != 2:
            problems.append(f"{where}: {info.channels} channel(s), expected 2")
        if info.frames == 0:
            problems.append(f"{where}: no samples (an empty track)")
        elif name != reference and info.frames != infos[reference].frames:
            problems.append(f"{where}: {info.frames} samples, but {reference}.wav has {infos[reference].frames}")
    if not names:
        problems.append(f"{rel}: no WAV file")
    song = Song(
        name=folder.name,
        split=split,
        folder=folder,
        rel=rel,
        mixture=folder / f"{MIXTURE}.wav" if MIXTURE in names else None,
        files={n: [folder / f"{n}.wav"] for n in names if n != MIXTURE},
        frames=infos[reference].frames if reference else 0,
        title=folder.name,
    )
    return song, problems


def read_folders(
    root: Path, *, required: tuple[str, ...] = (), splits: tuple[str, ...] = FOLDER_SPLITS
) -> tuple[list[Song], list[str]]:
    """Every song of ``ROOT/{train,test}`` (:func:`read_song_folder`) and every problem found."""
    songs, problems = [], []
    for split in splits:
        for folder in song_folders(root, split, problems):
            song, found = read_song_folder(folder, split, required)
            songs.append(song)
            problems += found
    return songs, problems


# --- MoisesDB ---------------------------------------------------------------------------------


def moisesdb_tracks(root: Path) -> list[Path]:
    """The track folders of a MoisesDB tree: folders holding data.json, one or two levels down."""
    found = [p.parent for p in root.glob(f"*/{DATA_JSON}")] + [p.parent for p in root.glob(f"*/*/{DATA_JSON}")]
    return sorted(p for p in found if not p.name.startswith("."))


def _moisesdb_files(folder: Path, rel: str, problems: list[str]) -> tuple[dict[str, list[Path]], str]:
    """Category -> files listed in a track's data.json, and the title ("artist - song")."""
    where = f"{rel}/{DATA_JSON}"
    try:
        meta = json.loads((folder / DATA_JSON).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        problems.append(f"{where}: not readable JSON ({e})")
        return {}, folder.name
    stems = meta.get("stems") if isinstance(meta, dict) else None
    if not isinstance(stems, list):
        problems.append(f'{where}: no "stems" list (MoisesDB\'s data.json lists each stem with its tracks)')
        return {}, folder.name
    files: dict[str, list[Path]] = {}
    for k, stem in enumerate(stems):
        tracks = stem.get("tracks") if isinstance(stem, dict) else None
        category = stem.get("stemName") if isinstance(stem, dict) else None
        if not isinstance(category, str) or not category or not isinstance(tracks, list):
            problems.append(f'{where}: stem {k} has no "stemName" and "tracks" list')
            continue
        for t in tracks:
            if not isinstance(t, dict) or not t.get("id"):
                problems.append(f'{where}: a track of {category} has no "id"')
                continue
            path = folder / category / f"{t['id']}.{t.get('extension', 'wav')}"
            if not path.is_file():
                problems.append(f"{rel}/{category}/{path.name}: listed in {DATA_JSON} but missing")
                continue
            files.setdefault(category.replace(" ", "_"), []).append(path)  # the package's names: other_keys, ...
    title = f"{meta.get('artist', '')} - {meta.get('song', '')}".strip(" -") or folder.name
    return files, title


def read_moisesdb(root: Path) -> tuple[list[Song], list[str]]:
    """Every track of a MoisesDB tree, its category files (headers checked), and every problem."""
    folders = moisesdb_tracks(root)
    problems: list[str] = []
    if not folders:
        return [], [
            f"no track folder holding {DATA_JSON} (MoisesDB: ROOT/<track uuid>/{DATA_JSON} or ROOT/moisesdb_v0.1/<track uuid>/{DATA_JSON})"
        ]
    names = [f.name for f in folders]
    songs = []
    for folder in folders:
        rel = folder.relative_to(root).as_posix()
        if names.count(folder.name) > 1:
            problems.append(f"{rel}: another provider folder holds a track of the same name")
        files, title = _moisesdb_files(folder, rel, problems)
        infos = {}
        for paths in files.values():
            for path in paths:
                info = _header(path, path.relative_to(root).as_posix(), problems)
                if info is not None:
                    infos[path] = info
        for path, info in infos.items():
            where = path.relative_to(root).as_posix()
            if info.samplerate != SAMPLE_RATE:
                problems.append(f"{where}: {info.samplerate} Hz, expected {SAMPLE_RATE}")
            if info.channels not in (1, 2):
                problems.append(f"{where}: {info.channels} channels, expected 1 or 2")
        frames = max((i.frames for i in infos.values()), default=0)
        if files and frames == 0:
            problems.append(f"{rel}: no samples in any of its files (an empty track)")
        if not files and not any(p.startswith(f"{rel}/{DATA_JSON}") for p in problems):
            problems.append(f"{rel}: {DATA_JSON} lists no stem")
        reshape = [p for p, i in infos.items() if i.channels == 1 or i.frames != frames]
        songs.append(
            Song(
                name=folder.name,
                split="train",
                folder=folder,
                rel=rel,
                mixture=None,
                files=files,
                frames=frames,
                reshape=reshape,
                title=title,
            )
        )
    return songs, problems
