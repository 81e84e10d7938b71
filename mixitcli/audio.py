"""Audio input and output shared by every stage: read, write, resample, probe.

Arrays are float32 numpy arrays shaped (c, t): channels first, as the model wants them.
soundfile (libsndfile >= 1.1) reads WAV, FLAC, OGG/Vorbis, Opus and MP3; anything else
(m4a, mp4, stem files, ...) is decoded by ffmpeg when it is on PATH. soxr resamples.

Non-finite samples (NaN, infinity: float WAVs can hold them) never leave this module: the
readers replace them by 0 and report them to an ``on_nonfinite`` callback (issue 10), so
that one NaN cannot silently empty a whole separation or a training batch. Callers count
them (:class:`NonFiniteCount`) and warn, naming the file (:func:`nonfinite_message`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixitcli.storage import WriteError, diagnose_write_failure, partial_path

SAMPLE_RATE = 44100
"""The model's sample rate (docs/method.md §2): everything is resampled to it."""

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".m4a", ".mp4", ".aac", ".wma")

FFMPEG_HINT = (
    "ffmpeg and ffprobe must be on PATH for this (they decode compressed formats, and museval "
    "imports stempeg, which refuses to load without them). On Debian/Ubuntu: "
    "`sudo apt-get install -y ffmpeg`; on macOS: `brew install ffmpeg`."
)


class AudioError(Exception):
    """A file could not be read or written as audio; the message names the file and why."""


class MissingFFmpegError(AudioError):
    """ffmpeg/ffprobe are needed but not on PATH."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds, without decoding it.

    Attributes:
        frames: length in samples per channel (may be an estimate for MP3 headers).
        sample_rate: in Hz.
        channels: number of audio channels.
    """

    frames: int
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def sf_name(path: str | Path) -> bytes:
    """The name to give soundfile for ``path``: bytes, because soundfile encodes a str as strict
    UTF-8, and a file name that is not UTF-8 (Python holds its bytes as surrogate escapes)
    would then fail to open (issue 20)."""
    return os.fsencode(path)


def _readable(path: str | Path) -> Path:
    """``path`` as a Path; AudioError when it is missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    return path


NonFiniteCallback = Callable[[int, np.ndarray], None]
"""``on_nonfinite(first, bad)``: ``first`` is the index (at the file's rate) of the block's first
sample and ``bad`` a (c, t) bool array marking the non-finite samples, already replaced by 0."""


class NonFiniteCount:
    """An ``on_nonfinite`` callback that counts the samples replaced (over all channels)."""

    def __init__(self) -> None:
        self.samples = 0

    def __call__(self, first: int, bad: np.ndarray) -> None:
        self.samples += int(bad.sum())


def nonfinite_message(path: str | Path, samples: int) -> str:
    """The warning for a file whose ``samples`` non-finite samples were replaced by 0."""
    return f"{path}: {samples} non-finite sample(s) (NaN or infinity) replaced by 0"


def zero_nonfinite(block: np.ndarray, first: int, on_nonfinite: NonFiniteCallback | None) -> np.ndarray:
    """``block`` (c, t) with NaN and infinite samples replaced by 0 (in place when writable),
    reported to ``on_nonfinite(first, bad)`` when there are any."""
    bad = ~np.isfinite(block)
    if not bad.any():
        return block
    if not block.flags.writeable:
        block = block.copy()
    block[bad] = 0.0
    if on_nonfinite is not None:
        on_nonfinite(first, bad)
    return block


def have_ffmpeg() -> bool:
    """True when both ffmpeg and ffprobe are on PATH."""
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def require_ffmpeg(what: str) -> None:
    """Raise :class:`MissingFFmpegError` naming ``what`` needed ffmpeg, and how to install it."""
    if not have_ffmpeg():
        raise MissingFFmpegError(f"{what} needs ffmpeg. {FFMPEG_HINT}")


def info(path: str | Path) -> AudioInfo:
    """Probe a file. Raises AudioError when it is not readable audio."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        i = sf.info(sf_name(path))
        return AudioInfo(frames=int(i.frames), sample_rate=int(i.samplerate), channels=int(i.channels))
    except Exception as sf_error:  # libsndfile cannot open it: try ffprobe
        if not have_ffmpeg():
            raise AudioError(f"{path}: cannot read as audio ({sf_error}); {FFMPEG_HINT}") from sf_error
        return _ffprobe(path)


def read(
    path: str | Path,
    *,
    start: int = 0,
    frames: int = -1,
    sample_rate: int | None = None,
    on_nonfinite: NonFiniteCallback | None = None,
) -> tuple[np.ndarray, int]:
    """Decode audio to float32; non-finite samples are replaced by 0.

    Args:
        path: an audio file.
        start: first sample to read, at the file's own rate.
        frames: number of samples to read at the file's rate (-1: to the end).
        sample_rate: resample to this rate in Hz (None: keep the file's rate).
        on_nonfinite: told about non-finite samples (see :data:`NonFiniteCallback`).

    Returns:
        (audio, rate): audio (c, t) float32 and its sample rate in Hz.

    Raises:
        AudioError: the file is missing, empty or cannot be decoded.
    """
    import soundfile as sf

    path = _readable(path)
    try:
        with sf.SoundFile(sf_name(path)) as f:
            rate = f.samplerate
            if start:
                f.seek(start)
            data = f.read(frames, dtype="float32", always_2d=True)  # (t, c)
        audio = np.ascontiguousarray(data.T)
    except Exception as sf_error:
        if not have_ffmpeg():
            raise AudioError(f"{path}: cannot decode ({sf_error}); {FFMPEG_HINT}") from sf_error
        audio, rate = _ffmpeg_decode(path)
        stop = None if frames < 0 else start + frames
        audio = np.ascontiguousarray(audio[:, start:stop])
    audio = zero_nonfinite(audio, start, on_nonfinite)
    if sample_rate is not None and sample_rate != rate:
        audio = resample(audio, rate, sample_rate)
        rate = sample_rate
    return audio, rate


def resample(audio: np.ndarray, rate_in: int, rate_out: int, *, quality: str = "HQ") -> np.ndarray:
    """Resample (c, t) audio with soxr (high quality by default). Returns float32 (c, t')."""
    import soxr

    if rate_in == rate_out:
        return audio
    out = soxr.resample(np.ascontiguousarray(audio.T), rate_in, rate_out, quality=quality)
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32).reshape(-1, audio.shape[0]).T)


SUBTYPES = {"16": "PCM_16", "24": "PCM_24", "float": "FLOAT"}
OUTPUT_FORMATS = ("wav", "flac", "mp3", "ogg")


def _format_for(path: Path, bits: str) -> tuple[str, str]:
    """(libsndfile format, subtype) for an output path's suffix and a bit depth."""
    if bits not in SUBTYPES:
        raise AudioError(f"{path}: bits must be one of {', '.join(SUBTYPES)}, got {bits!r}")
    suffix = path.suffix.lower()
    if suffix == ".wav":
        return "WAV", SUBTYPES[bits]
    if suffix == ".flac":
        return "FLAC", SUBTYPES["16" if bits == "16" else "24"]
    if suffix == ".mp3":
        return "MP3", "MPEG_LAYER_III"
    if suffix == ".ogg":
        return "OGG", "VORBIS"
    raise AudioError(f"{path}: unsupported output format {suffix!r} (use .wav, .flac, .mp3 or .ogg)")


def write(path: str | Path, audio: np.ndarray, sample_rate: int, *, bits: str = "24") -> None:
    """Write (c, t) audio. The format follows the suffix: .wav, .flac, .mp3 (or .ogg).

    ``bits`` is "16", "24" or "float" for WAV, "16" or "24" for FLAC, ignored for MP3/OGG.
    The file is written to a temporary name and renamed, so a crash never leaves half a file.
    """
    path = Path(path)
    if audio.ndim != 2:
        raise AudioError(f"{path}: expected audio shaped (channels, samples), got {audio.shape}")
    with BlockWriter(path, sample_rate, audio.shape[0], bits=bits) as writer:
        writer.write(audio)


class BlockWriter:
    """Write (c, t) audio block by block, so memory stays bounded by the block, not the file.

    The data goes to a hidden temporary file beside ``path`` (``.NAME.<pid>.partial``), renamed
    to ``path`` by :meth:`close`; :meth:`abort` (or leaving the ``with`` block on an exception
    or a stop signal) deletes it. So a crash never leaves half a file under the final name, and
    the pid tells the leftovers of a ``kill -9`` (:func:`mixitcli.storage.remove_stale_temporaries`)
    from the file of a writer that still runs.

    Integer formats clip to [-1, 1]; ``bits="float"`` WAV keeps any value.

    Args:
        path: the final file; its suffix picks the format (.wav, .flac, .mp3, .ogg).
        sample_rate: Hz.
        channels: channels of every block.
        bits: "16", "24" or "float" (WAV); "16" or "24" (FLAC); ignored for MP3/OGG.
        limit: if given, the file holds exactly this many samples: later samples are
            dropped and a short file is padded with zeros at :meth:`close`. It can be set
            after opening (when the length becomes known) through :attr:`limit`.

    Raises:
        AudioError: unsupported suffix or bit depth, or the file cannot be created.
        WriteError: (an OSError) the folder is full, read-only or not writable; from any method.
    """

    def __init__(
        self, path: str | Path, sample_rate: int, channels: int, *, bits: str = "24", limit: int | None = None
    ):
        import soundfile as sf

        self.path = Path(path)
        fmt, subtype = _format_for(self.path, bits)
        self.channels = channels
        self.clip = subtype != "FLOAT"
        self.limit = limit
        self.frames = 0
        self.tmp = partial_path(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(e.errno, e.strerror or str(e), e.filename or str(self.path.parent)) from e
        try:
            self._file = sf.SoundFile(
                sf_name(self.tmp), "w", samplerate=sample_rate, channels=channels, format=fmt, subtype=subtype
            )
        except Exception as e:
            raise diagnose_write_failure(self.tmp) or AudioError(f"{self.path}: cannot create ({e})") from e

    def write(self, block: np.ndarray) -> None:
        """Append a (c, t) block."""
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise AudioError(f"{self.path}: expected blocks shaped ({self.channels}, samples), got {block.shape}")
        if self.limit is not None:
            block = block[:, : max(0, self.limit - self.frames)]
        if block.shape[1] == 0:
            return
        data = np.ascontiguousarray(block.T, dtype=np.float32)  # (c, t) -> (t, c)
        if self.clip:
            data = np.clip(data, -1.0, 1.0)
        try:
            self._file.write(data)
        except Exception as e:  # libsndfile says "System error" for a full disk
            raise diagnose_write_failure(self.tmp, data.nbytes) or AudioError(f"{self.path}: cannot write ({e})") from e
        self.frames += block.shape[1]

    def close(self) -> None:
        """Pad to ``limit`` if set, finish the file and give it its final name."""
        if self._file.closed:
            return
        if self.limit is not None and self.frames < self.limit:
            self.write(np.zeros((self.channels, self.limit - self.frames), dtype=np.float32))
        try:
            self._file.close()
            self.tmp.replace(self.path)
        except Exception as e:
            self.tmp.unlink(missing_ok=True)
            raise diagnose_write_failure(self.tmp) or AudioError(f"{self.path}: cannot finish ({e})") from e

    def abort(self) -> None:
        """Stop and delete the temporary file; ``path`` is left untouched."""
        if not self._file.closed:
            self._file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> BlockWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_blocks(
    path: str | Path, block_frames: int, *, on_nonfinite: NonFiniteCallback | None = None
) -> Iterator[np.ndarray]:
    """Decode a file block by block: float32 (c, t) blocks of ``block_frames`` samples
    (the last one shorter), at the file's own rate (see :func:`info`).

    Memory stays bounded by the block: soundfile reads in place; other formats stream
    through an ffmpeg pipe. Every block-wise reader of mixit (separate, eval, prepare-fma)
    reads through here, so non-finite samples are handled once: replaced by 0 and reported
    to ``on_nonfinite`` (see :data:`NonFiniteCallback`).

    Raises:
        AudioError: the file is missing, empty or cannot be decoded.
    """
    path = _readable(path)
    if block_frames < 1:
        raise ValueError(f"block_frames must be >= 1, got {block_frames}")
    first = 0
    for block in _decoded_blocks(path, block_frames):
        yield zero_nonfinite(block, first, on_nonfinite)
        first += block.shape[1]


def _decoded_blocks(path: Path, block_frames: int) -> Iterator[np.ndarray]:
    import soundfile as sf

    try:
        f = sf.SoundFile(sf_name(path))
    except Exception as sf_error:
        if not have_ffmpeg():
            raise AudioError(f"{path}: cannot decode ({sf_error}); {FFMPEG_HINT}") from sf_error
        yield from _ffmpeg_blocks(path, block_frames)
        return
    with f:
        while True:
            try:
                data = f.read(block_frames, dtype="float32", always_2d=True)  # (t, c)
            except Exception as e:
                raise AudioError(f"{path}: decoding failed after {f.tell()} samples ({e})") from e
            if len(data) == 0:
                return
            yield np.ascontiguousarray(data.T)


def _ffmpeg_pcm(path: Path) -> list[str]:
    """The ffmpeg command that decodes ``path``'s first audio stream to interleaved float32 on stdout."""
    return [
        "ffmpeg",
        "-v",
        "error",
        "-nostdin",
        "-i",
        str(path),
        "-map",
        "0:a:0",
        "-f",
        "f32le",
        "-acodec",
        "pcm_f32le",
        "-",
    ]


def _ffmpeg_blocks(path: Path, block_frames: int) -> Iterator[np.ndarray]:
    probe = _ffprobe(path)
    cmd = _ffmpeg_pcm(path)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    frame_bytes = 4 * probe.channels
    total, finished = 0, False
    try:
        while True:
            raw = proc.stdout.read(block_frames * frame_bytes)
            if not raw:
                finished = True
                break
            raw = raw[: len(raw) - len(raw) % frame_bytes]
            total += len(raw) // frame_bytes
            yield np.ascontiguousarray(np.frombuffer(raw, dtype=np.float32).reshape(-1, probe.channels).T)
    finally:
        if not finished:  # the consumer stopped early: do not wait for ffmpeg to finish decoding
            proc.kill()
        proc.stdout.close()
        stderr = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        code = proc.wait()
    if code != 0 or total == 0:
        raise AudioError(f"{path}: ffmpeg cannot decode it ({stderr[:200]})")


def _ffprobe(path: Path) -> AudioInfo:
    cmd = [
        "ffprobe",
        "-v",
        "error",
        "-select_streams",
        "a:0",
        "-show_entries",
        "stream=sample_rate,channels,duration",
        "-of",
        "default=noprint_wrappers=1",
        str(path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    fields = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    try:
        rate = int(fields["sample_rate"])
        channels = int(fields["channels"])
        duration = float(fields.get("duration", "nan"))
    except (KeyError, ValueError) as e:
        raise AudioError(f"{path}: not an audio file ffprobe understands ({proc.stderr.strip()[:200]})") from e
    frames = int(round(duration * rate)) if np.isfinite(duration) else 0
    return AudioInfo(frames=frames, sample_rate=rate, channels=channels)


def _ffmpeg_decode(path: Path) -> tuple[np.ndarray, int]:
    probe = _ffprobe(path)
    cmd = _ffmpeg_pcm(path)
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0 or not proc.stdout:
        raise AudioError(f"{path}: ffmpeg cannot decode it ({proc.stderr.decode(errors='replace').strip()[:200]})")
    audio = np.frombuffer(proc.stdout, dtype=np.float32).reshape(-1, probe.channels).T
    return np.ascontiguousarray(audio), probe.sample_rate
