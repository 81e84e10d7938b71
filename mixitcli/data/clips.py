"""One audio file -> its kept 10 s clips in the audio store (docs/method.md §2.1, issue #3).

This is the per-file work of `mixit prepare-fma`; it runs inside worker processes and never
raises for bad input: every outcome is a record (kept, or rejected with a reason).

Rules, in order:

1. ``empty`` (0 bytes), ``undecodable`` (not audio / no decoder), ``low_sample_rate``
   (below 44.1 kHz: dropped, never upsampled), ``mono`` (1 channel; ``keep_mono`` duplicates
   it to stereo instead), ``multichannel`` (more than 2 channels).
2. Decode in blocks (bounded memory, whatever the track length) and resample anything above
   44.1 kHz with soxr "HQ". A file that stops decoding early, or decodes clearly fewer
   frames than its header declares, is ``truncated``.
3. Clips of 10 s every 5 s (full clips only), plus one clip ending exactly at the end of
   the track when the hops do not land there (the official recipe's last clip, without its
   duplicate). A file shorter than one clip is ``too_short``.
   Non-finite samples (NaN, infinity) are replaced by 0 as they are decoded
   (:func:`mixitcli.audio.read_blocks`), and every clip that held one is dropped and counted
   (``dropped_nonfinite``), so none reaches training; a file with no other clip is ``nonfinite``.
4. Silence. ``silence_rule="clip"`` (default, the paper): a clip with more than 5 of its ten
   1 s intervals silent is dropped (other clips of the file stay). ``silence_rule="track"``
   (the official script): twenty 0.5 s chunks per clip; one clip that is all zero or has
   >= 10 silent chunks drops the whole track. "Silent" means exactly zero energy by default,
   or a mean power below ``silence_db`` dB re full scale when that is set. A file with no
   clip left is ``silent``. Like the official script, the "track" rule also checks the
   partial windows that start on the hop grid after the last full clip (the last 2 s of a
   32 s track, say: all zero there drops the track) and does not check the end clip itself;
   unlike it, windows shorter than 20 samples are skipped (the script would count all 20 of
   their empty chunks as silent).

Storage: the union of the kept clips (maximal runs of overlapping clips) is written once,
as raw little-endian int16, interleaved stereo -- shape (t, c=2), frames = bytes / 4 -- at
44.1 kHz. Each clip is found at ``store_offset`` frames into that file, so overlapping clips
share their audio and the store is exactly the kept audio's 16-bit PCM size.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mixitcli import audio
from mixitcli.storage import WriteError

SILENCE_RULES = ("clip", "track")

REASONS = {
    "empty": "the file has 0 bytes",
    "undecodable": "not audio, or no decoder for it",
    "truncated": "decoding stopped early, or gave clearly fewer frames than the header declares",
    "low_sample_rate": "sample rate below 44.1 kHz",
    "mono": "one channel (use --keep-mono to duplicate it to stereo)",
    "multichannel": "more than two channels",
    "too_short": "shorter than one clip",
    "silent": "no clip passes the silence rule",
    "nonfinite": "every clip holds non-finite samples (NaN or infinity), or fails the silence rule",
    "error": "an unexpected error (see detail); please report it",
    "decoder_crashed": "the decoder killed its process twice on this file",
}
"""Why a file is rejected: the ``reason`` values of rejected.jsonl."""

STORE_DTYPE = np.dtype("<i2")
STORE_CHANNELS = 2
PCM_SCALE = 32768.0
"""int16 <-> float: x_float = x_int / 32768 (as soundfile reads PCM_16)."""

MIN_WINDOW = 20
"""Shortest partial window the "track" rule checks: one sample per 0.5 s chunk."""

WRITE_FAILED = "write_failed"
"""``status`` of a result whose store could not be written (then also ``errno``,
``strerror``, ``filename``): never journaled; the run stops and the rerun decodes the file."""

PARTIAL_SUFFIX = ".partial"
"""Store files are written as ``.<name>.<pid>.partial`` and renamed when complete."""

TRUNCATION_TOLERANCE_SECONDS = 0.5
"""A decode may fall this short of the header's frame count (MP3 header estimates) before
the file counts as truncated; the shortfall must also exceed 1 % of the declared length."""


@dataclass(frozen=True)
class ClipRules:
    """How files become clips; saved in every prepared folder and checked on resume.

    Attributes:
        sample_rate: output rate in Hz; lower-rate files are rejected, higher are resampled.
        segment_seconds: clip length in seconds (a whole number of seconds).
        hop_seconds: distance between clip starts in seconds.
        silence_rule: "clip" (paper: drop clips with > half their 1 s intervals silent) or
            "track" (official: 0.5 s chunks; one bad clip drops the whole track).
        silence_db: None for exact-zero silence, else the dB (re full scale, mean power)
            below which an interval counts as silent.
        keep_mono: duplicate mono files to stereo instead of rejecting them.
    """

    sample_rate: int = audio.SAMPLE_RATE
    segment_seconds: float = 10.0
    hop_seconds: float = 5.0
    silence_rule: str = "clip"
    silence_db: float | None = None
    keep_mono: bool = False

    def __post_init__(self) -> None:
        if self.silence_rule not in SILENCE_RULES:
            raise ValueError(f"silence_rule must be one of {SILENCE_RULES}, got {self.silence_rule!r}")
        if self.segment_seconds <= 0 or self.segment_seconds != int(self.segment_seconds):
            raise ValueError(f"segment_seconds must be a positive whole number, got {self.segment_seconds}")
        if not 0 < self.hop_seconds <= self.segment_seconds:
            raise ValueError(f"hop_seconds must be in (0, segment_seconds], got {self.hop_seconds}")

    @property
    def segment_frames(self) -> int:
        return int(round(self.segment_seconds * self.sample_rate))

    @property
    def hop_frames(self) -> int:
        return int(round(self.hop_seconds * self.sample_rate))

    def to_dict(self) -> dict:
        return asdict(self)


def segment_starts(frames: int, segment: int, hop: int) -> list[int]:
    """Clip start positions for a track of ``frames`` samples (all in samples).

    Every ``hop`` while a full clip fits, plus ``frames - segment`` when the hops miss it;
    never a duplicate. Empty when the track is shorter than one clip.
    """
    if frames < segment:
        return []
    starts = list(range(0, frames - segment + 1, hop))
    if starts[-1] != frames - segment:
        starts.append(frames - segment)
    return starts


def silent_chunks(clip: np.ndarray, n_chunks: int, silence_db: float | None) -> np.ndarray:
    """Which of ``n_chunks`` equal chunks of a clip are silent.

    Args:
        clip: (t, c) float audio.
        n_chunks: number of equal chunks (a tail of t % n_chunks samples is ignored).
        silence_db: None: silent = exactly zero energy; else mean power (over samples and
            channels) below this many dB re full scale.

    Returns:
        (n_chunks,) bool.
    """
    size = clip.shape[0] // n_chunks
    chunks = clip[: size * n_chunks].reshape(n_chunks, size * clip.shape[1])  # (t, c) -> (n, size*c)
    energy = np.einsum("nk,nk->n", chunks, chunks, dtype=np.float64)  # (n,)
    if silence_db is None:
        return energy == 0.0
    power_db = 10.0 * np.log10(energy / chunks.shape[1] + 1e-30)
    return power_db < silence_db


def clip_passes(clip: np.ndarray, rules: ClipRules) -> bool:
    """The paper's per-clip rule: at most half of the 1 s intervals are silent."""
    n = int(rules.segment_seconds)  # 1 s intervals
    return int(silent_chunks(clip, n, rules.silence_db).sum()) <= n // 2


def clip_fails_track(clip: np.ndarray, rules: ClipRules) -> bool:
    """The official whole-track rule: True when this clip makes the whole track dropped."""
    if not np.any(clip):
        return True
    n = int(rules.segment_seconds * 2)  # 0.5 s chunks: 20 for a 10 s clip
    return int(silent_chunks(clip, n, rules.silence_db).sum()) >= n // 2


class _Cutter:
    """Streams (t, c) float blocks in, decides clips as soon as they are complete, and
    appends the kept audio to ``out`` (runs of overlapping clips written once)."""

    def __init__(self, rules: ClipRules, out) -> None:
        self.rules = rules
        self.out = out
        self.L, self.H = rules.segment_frames, rules.hop_frames
        self.buf = np.zeros((0, STORE_CHANNELS), np.float32)  # (t, c): samples [buf_start, frames)
        self.buf_start = 0
        self.frames = 0  # samples received so far
        self.next_start = 0  # next regular clip start
        self.last_start = -1  # last clip evaluated
        self.written_end = 0  # track position just after the last stored sample
        self.store_frames = 0
        self.kept: list[tuple[int, int]] = []  # (offset in track, offset in store)
        self.dropped = 0
        self.failed = False  # track rule triggered
        self.bad: list[tuple[int, int]] = []  # [a, b) runs holding non-finite samples, at the output rate
        self.dropped_nonfinite = 0

    def mark_nonfinite(self, a: int, b: int) -> None:
        """Samples [a, b) (output rate) held non-finite values: clips that overlap them are dropped.
        Runs less than a clip apart are merged, which changes no decision (no clip fits between)."""
        if self.bad and a - self.bad[-1][1] < self.L:
            self.bad[-1] = (self.bad[-1][0], max(b, self.bad[-1][1]))
        else:
            self.bad.append((a, b))

    def feed(self, block: np.ndarray) -> None:
        """block: (t, c=2) float32 at rules.sample_rate."""
        self.buf = np.concatenate([self.buf, block]) if self.buf.size else block
        self.frames += block.shape[0]
        while not self.failed and self.next_start + self.L <= self.frames:
            self._decide(self.next_start)
            self.next_start += self.H
        # keep the last L samples (a possible end clip) and everything from next_start on
        keep_from = max(0, min(self.next_start, self.frames - self.L))
        if keep_from > self.buf_start:
            self.buf = self.buf[keep_from - self.buf_start :]
            self.buf_start = keep_from
            self.bad = [(a, b) for a, b in self.bad if b > keep_from]  # later clips start at keep_from or after

    def finish(self) -> None:
        """The end of the track: the official rule's partial windows, then the end clip."""
        official = self.rules.silence_rule == "track"
        if official:  # windows on the hop grid that run past the end, as the official script checks
            for start in range(self.next_start, self.frames - MIN_WINDOW + 1, self.H):
                if clip_fails_track(self.buf[start - self.buf_start :], self.rules):
                    self.failed = True
                    break
        end_start = self.frames - self.L
        if not self.failed and end_start > self.last_start and end_start >= 0:
            self._decide(end_start, check=not official)  # the official script never checks it

    def _decide(self, start: int, check: bool = True) -> None:
        self.last_start = start
        clip = self.buf[start - self.buf_start : start - self.buf_start + self.L]  # (L, c)
        if any(a < start + self.L and b > start for a, b in self.bad):  # NaN / inf: never stored
            self.dropped_nonfinite += 1
            return
        if check and self.rules.silence_rule == "track" and clip_fails_track(clip, self.rules):
            self.failed = True
            return
        if check and self.rules.silence_rule == "clip" and not clip_passes(clip, self.rules):
            self.dropped += 1
            return
        first_new = max(start, self.written_end)  # overlap with the previous kept clip is stored already
        store_offset = self.store_frames - (self.written_end - start) if start < self.written_end else self.store_frames
        new = self.buf[first_new - self.buf_start : start + self.L - self.buf_start]
        pcm = np.clip(np.rint(new * PCM_SCALE), -PCM_SCALE, PCM_SCALE - 1).astype(STORE_DTYPE)
        self.out.write(np.ascontiguousarray(pcm).tobytes())
        self.store_frames += new.shape[0]
        self.written_end = start + self.L
        self.kept.append((start, store_offset))


class _StoreFile:
    """The store's temporary file. An OS error while creating, writing or finishing it is
    the machine's fault (full disk, read-only folder, I/O error), never the source file's:
    it is raised as :class:`mixitcli.storage.WriteError` naming the folder, so the caller
    stops the run instead of rejecting a good file (issue 11)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(tmp, "wb")
        except OSError as e:
            raise self._failure(e) from e

    def _failure(self, e: OSError) -> WriteError:
        return WriteError(e.errno, e.strerror or str(e), str(self.tmp.parent))

    def write(self, data: bytes) -> None:
        try:
            self.file.write(data)
        except OSError as e:
            raise self._failure(e) from e

    def commit(self, final: Path) -> None:
        """Flush, close and rename to ``final``."""
        try:
            self.file.close()
            self.tmp.replace(final)
        except OSError as e:
            raise self._failure(e) from e

    def discard(self) -> None:
        """Close without keeping anything (the caller deletes the temporary file)."""
        try:
            self.file.close()
        except OSError:
            pass  # the data is thrown away anyway


def _reject(reason: str, detail: str = "", seconds: float = 0.0) -> dict:
    return {"status": "rejected", "reason": reason, "detail": detail, "seconds": round(seconds, 3)}


def _blocks(path: Path, on_nonfinite: audio.NonFiniteCallback):
    """Yield (declared frames, exact, rate, channels), then (t, c) float32 blocks at the file's
    rate, decoded by :func:`mixitcli.audio.read_blocks` (non-finite samples replaced by 0 and
    reported to ``on_nonfinite``). ``exact``: the frame count is libsndfile's header, not
    ffprobe's estimate from the duration."""
    import soundfile as sf

    try:
        with sf.SoundFile(audio.sf_name(path)) as f:
            head = (f.frames, True, f.samplerate, f.channels)
    except Exception:  # not for libsndfile (m4a, ...): ffmpeg decodes it
        meta = audio.info(path)  # raises AudioError
        head = (meta.frames, False, meta.sample_rate, meta.channels)
    yield head
    for block in audio.read_blocks(path, 30 * head[2], on_nonfinite=on_nonfinite):
        yield block.T  # (c, t) -> (t, c)


def process_file(path: str | Path, store_path: str | Path, rules: ClipRules) -> dict:
    """Cut one file into kept clips and store them (see the module docstring for the rules).

    Args:
        path: the source audio file.
        store_path: where the kept audio goes (raw int16 (t, 2)); written through a temporary
            file and renamed, so it exists only complete. Not written for a rejected file.
        rules: the clip rules.

    Returns:
        A journal record: ``status`` "kept" or "rejected", ``reason`` and ``detail`` for a
        rejection, ``seconds`` decoded (at the output rate), and for a kept file
        ``segments`` [[offset, store_offset], ...] in samples, ``dropped`` (clips dropped as
        silent), ``dropped_nonfinite`` (clips dropped for NaN or infinite samples),
        ``nonfinite_samples`` (how many the file held) and ``store_frames``. Never raises
        for bad input.
    """
    path, store_path = Path(path), Path(store_path)
    try:
        if path.stat().st_size == 0:
            return _reject("empty", "0 bytes")
    except OSError as e:
        return _reject("undecodable", f"cannot stat: {e}")
    tmp = store_path.with_name(f".{store_path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        return _process(path, store_path, tmp, rules)
    except WriteError as e:  # the machine's problem: the caller stops, the file is not judged
        return {"status": WRITE_FAILED, "errno": e.errno, "strerror": e.strerror, "filename": e.filename}
    except Exception as e:  # never fatal: report it
        return _reject("error", f"{type(e).__name__}: {e}")
    finally:
        if tmp.exists():
            tmp.unlink()


def _process(path: Path, store_path: Path, tmp: Path, rules: ClipRules) -> dict:
    import soxr

    cutter: _Cutter | None = None
    nonfinite = audio.NonFiniteCount()

    def on_nonfinite(first: int, bad: np.ndarray) -> None:  # bad: (c, t) at the file's rate
        nonfinite(first, bad)
        frames = np.flatnonzero(bad.any(axis=0))
        gap = max(1, rules.segment_frames * rate // rules.sample_rate)
        breaks = np.flatnonzero(np.diff(frames) >= gap)  # runs closer than a clip are one run
        for lo, hi in zip(np.r_[frames[0], frames[breaks + 1]], np.r_[frames[breaks], frames[-1]]):
            a, b = first + int(lo), first + int(hi) + 1  # [a, b) at the file's rate
            cutter.mark_nonfinite(a * rules.sample_rate // rate, -(-b * rules.sample_rate // rate))

    blocks = _blocks(path, on_nonfinite)
    try:
        declared, exact, rate, channels = next(blocks)
    except Exception as e:
        return _reject("undecodable", str(e).splitlines()[0][:300] if str(e) else type(e).__name__)
    if rate < rules.sample_rate:
        return _reject("low_sample_rate", f"{rate} Hz", declared / rate)
    if channels == 1 and not rules.keep_mono:
        return _reject("mono", "1 channel", declared / rate)
    if channels > 2:
        return _reject("multichannel", f"{channels} channels", declared / rate)
    resampler = None
    if rate != rules.sample_rate:
        resampler = soxr.ResampleStream(rate, rules.sample_rate, STORE_CHANNELS, dtype="float32", quality="HQ")
    decoded = 0
    out = _StoreFile(tmp)
    try:
        cutter = _Cutter(rules, out)  # the one on_nonfinite marks
        error = None
        try:
            for block in blocks:  # (t, c) at the file's rate
                decoded += block.shape[0]
                if channels == 1:
                    block = np.repeat(block, 2, axis=1)  # (t, 1) -> (t, 2)
                if resampler is not None:
                    block = resampler.resample_chunk(np.ascontiguousarray(block))
                cutter.feed(block)
                if cutter.failed:
                    break
        except WriteError:
            raise
        except Exception as e:  # the decoder gave up
            error = e
        if resampler is not None and not cutter.failed:
            tail = resampler.resample_chunk(np.zeros((0, STORE_CHANNELS), np.float32), last=True)
            if tail.shape[0]:
                cutter.feed(tail)
        seconds = decoded / rate
        if error is not None:
            reason = "truncated" if decoded else "undecodable"
            return _reject(reason, f"decoding stopped after {seconds:.2f} s: {error}", seconds)
        if cutter.failed:
            return _reject("silent", "the official whole-track rule dropped it", seconds)
        shortfall = declared - decoded if exact else 0  # ffprobe's length is only an estimate
        if shortfall > max(TRUNCATION_TOLERANCE_SECONDS * rate, 0.01 * declared):
            return _reject("truncated", f"decoded {seconds:.2f} s of the {declared / rate:.2f} s declared", seconds)
        if cutter.frames < cutter.L:
            return _reject("too_short", f"{seconds:.2f} s < {rules.segment_seconds:g} s", seconds)
        cutter.finish()
        if cutter.failed:
            return _reject("silent", "the official whole-track rule dropped it", seconds)
        if not cutter.kept and cutter.dropped_nonfinite:
            return _reject(
                "nonfinite",
                f"{nonfinite.samples} non-finite sample(s): {cutter.dropped_nonfinite} clip(s) hold some, "
                f"{cutter.dropped} fail the silence rule",
                seconds,
            )
        if not cutter.kept:
            return _reject("silent", f"all {cutter.dropped} clips fail the silence rule", seconds)
        out.commit(store_path)
    finally:
        out.discard()
    return {
        "status": "kept",
        "seconds": round(cutter.frames / rules.sample_rate, 3),
        "segments": [list(s) for s in cutter.kept],
        "dropped": cutter.dropped,
        "dropped_nonfinite": cutter.dropped_nonfinite,
        "nonfinite_samples": nonfinite.samples,
        "store_frames": cutter.store_frames,
    }
