"""The datasets that feed training, and the sampler that splits them across ranks.

Every dataset here is map-style and deterministic: ``ds[i]`` is a pure function of
``(seed, i)`` (its own ``numpy`` generator seeded with ``[seed, i]``; no global state), for
*every* integer ``i >= 0``. ``len(ds)`` is only the nominal epoch size. So

- DataLoader workers and distributed ranks can compute any example anywhere and get the same
  tensor; which examples each one sees is decided by :class:`IndexSampler` alone;
- :class:`IndexSampler` hands out ``epoch * len(ds) + permutation(epoch)`` by default, so
  every epoch draws fresh random mixtures (dynamic mixing "fresh every step") and yet any
  epoch can be replayed or resumed from the middle.

Datasets:

- :class:`MixtureOfMixtures` (pre-training, docs/method.md §4): two 6 s crops of FMA clips from two
  different tracks; the first is rescaled so that the level difference is uniform in
  [-5, 5] dB. ``refs`` (m=2, c=2, t); the model input is ``refs.sum(0)``.
  ``MixtureOfMixtures.validation`` gives the held-out version.
- :class:`DynamicMixing` (fine-tuning, docs/method.md §2.2): stems (n, c=2, t) drawn independently
  from the salient segments of a prepared stems folder (MUSDB18-HQ's four, or any stem set of
  `mixit prepare-stems`); the mixture is ``stems.sum(0)``.
- :class:`MusdbValidation`: whole songs of a prepared folder, (name, mixture (c, t), stems (n, c, t)).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from mixitcli.audio import SAMPLE_RATE
from mixitcli.data.errors import PreparedDataError
from mixitcli.data.manifest import SegmentIndex
from mixitcli.data.prepared import load_prepared_tracks, prepared_stems, read_salient
from mixitcli.stems import describe

DEFAULT_DM_EPOCH = 110 * 32
"""Dynamic-mixing epoch: 110 steps of batch 32 (docs/method.md §5)."""

STEM_NORMS = ("rms", "mean_abs")
"""How dynamic mixing levels a stem before its gain (docs/method.md §2.2): "rms" divides by
sqrt(mean(x**2)) as the paper says; "mean_abs" divides by mean(|x|), what the authors' dataset
code computes (``np.sqrt(ref**2).mean(...)``) and what the published models were trained with.
For a stem that is silent part of the time the mean |x| is smaller relative to its RMS, so
"mean_abs" leaves sparse stems (drums, vocals) louder than dense ones (bass, other)."""

CROP_TRIES = 8
"""All-silent crops: positions tried in one clip before drawing another clip."""


def example_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of example ``index``: depends on nothing but (seed, index)."""
    if seed < 0 or index < 0:
        raise IndexError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.default_rng([seed, index])


class MixtureOfMixtures(Dataset):
    """Mixtures of mixtures from a `mixit prepare-fma` folder (docs/method.md §4).

    ``ds[i]``: draw a clip of the split uniformly, a random crop in it (redrawn while all
    zero), then the same for a clip of a *different* track; draw ``snr`` uniform in
    ``level_range_db`` and rescale the first crop so that
    ``10 log10(P_first / P_second) = snr`` (P: mean power over channels and samples), as the
    official ``_make_moms``. The range is symmetric, so "second vs first" is uniform in it too.

    Args:
        prep_dir: the prepared FMA folder (needs index.npz).
        split: "train" or "valid".
        segment_seconds: crop length in seconds.
        seed: the seed of every example.
        level_range_db: (low, high) of the level difference in dB.
        epoch_size: nominal epoch size; default: number of clips in the split // 2.

    Returns (``ds[i]``):
        refs: float32 tensor (m=2, c=2, t) -- the two rescaled mixtures.

    Raises:
        PreparedDataError: not prepared, fewer than two tracks in the split, clips shorter
            than the crop, a stale index its manifest cannot replace, store files shorter
            than the manifest says.
    """

    def __init__(
        self,
        prep_dir: str | Path,
        *,
        split: str = "train",
        segment_seconds: float = 6.0,
        seed: int = 0,
        level_range_db: tuple[float, float] = (-5.0, 5.0),
        epoch_size: int | None = None,
    ) -> None:
        self.index = SegmentIndex.load(prep_dir)
        self.clips = self.index.in_split(split)  # (k,) indices into the index
        self.index.check_stores(self.clips)  # a truncated store: an error now, not a traceback mid-run
        self.split, self.seed = split, seed
        self.crop = int(round(segment_seconds * self.index.sample_rate))
        self.level_range_db = (float(level_range_db[0]), float(level_range_db[1]))
        if self.level_range_db[0] > self.level_range_db[1]:
            raise ValueError(f"level_range_db must be (low, high), got {level_range_db}")
        n_tracks = len(np.unique(self.index.track_id[self.clips]))
        if n_tracks < 2:
            raise PreparedDataError(
                f"{prep_dir}: the {split!r} split has {len(self.clips)} clips from {n_tracks} track(s); "
                "mixtures of mixtures need clips of at least two tracks."
            )
        shortest = int(self.index.length[self.clips].min())
        if self.crop > shortest:
            raise PreparedDataError(
                f"{prep_dir}: a {segment_seconds} s crop ({self.crop} samples) is longer than the clips ({shortest})"
            )
        self.epoch_size = int(epoch_size) if epoch_size is not None else max(1, len(self.clips) // 2)

    @classmethod
    def validation(
        cls, prep_dir: str | Path, *, segment_seconds: float = 6.0, seed: int = 0, size: int | None = None
    ) -> MixtureOfMixtures:
        """Held-out mixtures of mixtures: the "valid" split; ``ds[i]`` for i < size is fixed by the seed."""
        return cls(prep_dir, split="valid", segment_seconds=segment_seconds, seed=seed, epoch_size=size)

    def __len__(self) -> int:
        return self.epoch_size

    def _draw(self, rng: np.random.Generator, exclude_track: int) -> tuple[int, int, np.ndarray]:
        """A clip (not of ``exclude_track``) and a non-silent crop of it: (clip, start, (c, t))."""
        for _ in range(1000):
            k = int(self.clips[rng.integers(len(self.clips))])
            if self.index.track_id[k] == exclude_track:
                continue
            for _ in range(CROP_TRIES):
                start = int(rng.integers(0, self.index.length[k] - self.crop + 1))
                crop = self.index.read(k, start, self.crop)  # (c, t)
                if np.any(crop):
                    return k, start, crop
        raise PreparedDataError(f"{self.index.root}: 1000 clips in a row gave only silent crops")

    def example(self, i: int) -> tuple[torch.Tensor, dict]:
        """``ds[i]`` and how it was drawn: clips, tracks, crop starts (samples), level_db."""
        rng = example_rng(self.seed, int(i))
        first_clip, first_start, first = self._draw(rng, exclude_track=-1)
        second_clip, second_start, second = self._draw(rng, exclude_track=int(self.index.track_id[first_clip]))
        p_first = np.mean(np.square(first, dtype=np.float64))
        p_second = np.mean(np.square(second, dtype=np.float64))
        level_db = rng.uniform(*self.level_range_db)
        first *= np.float32(np.sqrt(p_second / p_first * 10.0 ** (level_db / 10.0)))
        refs = torch.from_numpy(np.stack([first, second]))  # 2 x (c, t) -> (m, c, t)
        info = {
            "clips": (first_clip, second_clip),
            "tracks": tuple(self.index.tracks[self.index.track_id[k]] for k in (first_clip, second_clip)),
            "starts": (first_start, second_start),
            "level_db": float(level_db),
        }
        return refs, info

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.example(i)[0]


@dataclass(frozen=True)
class MixPlan:
    """The random choices behind one dynamic-mixing example (n stems).

    Attributes:
        picks: per stem, the index of its salient segment.
        dropped: per stem, True when it is silenced (never all True).
        offset: crop start inside the segments, in samples (shared).
        gain_db: per stem gain in dB (drawn for dropped stems too, so draws stay aligned).
    """

    picks: tuple[int, ...]
    dropped: tuple[bool, ...]
    offset: int
    gain_db: tuple[float, ...]


def stem_level(x: np.ndarray, norm: str) -> float:
    """The level a stem (c, t) is divided by: its RMS ("rms") or mean |x| ("mean_abs"), both
    over channels and samples, in float64."""
    if norm == "rms":
        return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    if norm == "mean_abs":
        return float(np.mean(np.abs(x), dtype=np.float64))
    raise ValueError(f"stem_norm must be one of {STEM_NORMS}, got {norm!r}")


class DynamicMixing(Dataset):
    """Dynamic mixing of the stems of a `mixit prepare-stems` / `prepare-musdb` folder (docs/method.md §2.2).

    ``ds[i]``: for each stem an independent salient segment (so stems usually come from
    different songs); each stem dropped (zeros) with probability ``p_dropout``, redrawn until
    at least one survives; one crop position shared by all stems; each stem divided by its RMS
    (or, with ``stem_norm="mean_abs"``, its mean absolute value) over channels and samples (a
    zero stem stays zero); each scaled by an independent gain uniform in ``gain_db``.

    Args:
        prep_dir: the prepared stems folder (salient/<stem>.jsonl).
        segment_seconds: crop length in seconds.
        seed: the seed of every example.
        stems: stem names and their output order (None: the folder's stem set, in its order).
        p_dropout: probability of dropping each stem, in [0, 1).
        gain_db: (low, high) of the per-stem gain in dB.
        epoch_size: nominal epoch size (default 110 steps x batch 32).
        stem_norm: "rms" (the paper) or "mean_abs" (the authors' code); see :data:`STEM_NORMS`.

    Returns (``ds[i]``):
        stems: float32 tensor (n, c=2, t) in the order of ``stems``; the mixture is ``.sum(0)``.
    """

    def __init__(
        self,
        prep_dir: str | Path,
        *,
        segment_seconds: float = 6.0,
        seed: int = 0,
        stems: tuple[str, ...] | None = None,
        p_dropout: float = 0.05,
        gain_db: tuple[float, float] = (-10.0, 10.0),
        epoch_size: int = DEFAULT_DM_EPOCH,
        stem_norm: str = "rms",
    ) -> None:
        if stem_norm not in STEM_NORMS:
            raise ValueError(f"stem_norm must be one of {STEM_NORMS}, got {stem_norm!r}")
        self.stem_norm = stem_norm
        have = prepared_stems(prep_dir)
        stems = have if stems is None else tuple(stems)
        unknown = [s for s in stems if s not in have]
        if unknown or len(set(stems)) != len(stems) or not stems:
            raise ValueError(
                f"stems must be distinct names of the folder's stems {describe(have)}, got {describe(stems)}"
            )
        if not 0.0 <= p_dropout < 1.0:
            raise ValueError(f"p_dropout must be in [0, 1), got {p_dropout}")
        self.stems, self.seed, self.p_dropout = tuple(stems), seed, float(p_dropout)
        self.gain_db = (float(gain_db[0]), float(gain_db[1]))
        self.epoch_size = int(epoch_size)
        self.crop = int(round(segment_seconds * SAMPLE_RATE))
        self.paths: list[str] = []
        loaded = [self._load(Path(prep_dir), stem) for stem in self.stems]
        self.segments = [rows for rows, _ in loaded]  # per stem, (k, 2) int64: path id, start
        self.segment_length = min(length for _, length in loaded)  # 8 s for the official SAD
        if self.crop > self.segment_length:
            raise PreparedDataError(
                f"{prep_dir}: a {segment_seconds} s crop is longer than the salient segments ({self.segment_length} samples)"
            )

    def _load(self, prep_dir: Path, stem: str) -> tuple[np.ndarray, int]:
        ids: dict[str, int] = {p: i for i, p in enumerate(self.paths)}
        rows, lengths = [], set()
        for path, start, length in read_salient(prep_dir, stem):  # checked line by line (issue 20)
            if path not in ids:
                ids[path] = len(self.paths)
                self.paths.append(path)
            rows.append((ids[path], start))
            lengths.add(length)
        if not rows:
            raise PreparedDataError(
                f"{prep_dir}/salient/{stem}.jsonl: no salient segment for {stem} (it is silent or shorter than 8 s in every "
                "training song); dynamic mixing needs at least one: add training songs in which it plays"
            )
        return np.array(rows, dtype=np.int64), min(lengths)

    def __len__(self) -> int:
        return self.epoch_size

    def plan(self, i: int) -> MixPlan:
        """Every random choice of ``ds[i]`` (no audio is read)."""
        rng = example_rng(self.seed, int(i))
        n = len(self.stems)
        picks = tuple(int(rng.integers(len(seg))) for seg in self.segments)
        dropped = np.ones(n, dtype=bool)
        while dropped.all():  # at least one stem survives
            dropped = rng.random(n) < self.p_dropout
        offset = int(rng.integers(0, self.segment_length - self.crop + 1))  # shared by all stems
        gain_db = rng.uniform(*self.gain_db, size=n)
        return MixPlan(
            picks=picks,
            dropped=tuple(bool(d) for d in dropped),
            offset=offset,
            gain_db=tuple(float(g) for g in gain_db),
        )

    def render(self, plan: MixPlan) -> torch.Tensor:
        """The stems (n, c, t) of a plan: crop, normalise (``stem_norm``), apply the gains."""
        import soundfile as sf

        out = np.zeros((len(self.stems), 2, self.crop), dtype=np.float32)  # (n, c, t)
        for j, (seg, pick) in enumerate(zip(self.segments, plan.picks)):
            if plan.dropped[j]:
                continue
            path_id, start = seg[pick]
            data, _ = sf.read(
                self.paths[path_id], start=int(start) + plan.offset, frames=self.crop, dtype="float32", always_2d=True
            )
            x = data.T  # (t, c) -> (c, t)
            level = stem_level(x, self.stem_norm)
            if level > 0.0:  # a silent stem stays zero
                out[j] = x * np.float32(10.0 ** (plan.gain_db[j] / 20.0) / level)
        return torch.from_numpy(out)

    def segment_of(self, plan: MixPlan, j: int) -> tuple[str, int]:
        """(stem WAV path, start sample) of stem j's salient segment in a plan."""
        path_id, start = self.segments[j][plan.picks[j]]
        return self.paths[path_id], int(start)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.render(self.plan(i))


class MusdbValidation(Dataset):
    """Whole songs of a prepared stems folder (validation by default, or test).

    Args:
        stems: the stems to return, in this order (None: the folder's stem set).

    Returns (``ds[i]``):
        (name, mixture float32 (c, t), stems float32 (n, c, t) in the order of ``stems``;
        a stem the song lacks is zeros).
    """

    def __init__(self, prep_dir: str | Path, *, subset: str = "valid", stems: tuple[str, ...] | None = None) -> None:
        self.tracks = load_prepared_tracks(prep_dir, subset)
        self.stems = tuple(stems) if stems is not None else prepared_stems(prep_dir)

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor, torch.Tensor]:
        track = self.tracks[i]
        return track.name, torch.from_numpy(track.load("mixture")), torch.from_numpy(track.load_stems(self.stems))


class IndexSampler(Sampler[int]):
    """This rank's example indices for one epoch: reproducible, disjoint across ranks, resumable.

    The epoch's order is a permutation of ``range(length)`` drawn from (seed, epoch); rank r
    takes every ``world_size``-th entry starting at r, and the tail that does not divide
    evenly is dropped, so every rank makes the same number of steps. With
    ``fresh_each_epoch`` the yielded index is ``epoch * length + position``, so each epoch
    draws new examples from the datasets above (whose ``ds[i]`` exists for every i >= 0).
    DataLoader workers need nothing more: the loader sends each worker different indices, and
    an example does not depend on which worker computes it.

    Args:
        length: examples per epoch over all ranks (``len(dataset)``).
        seed: the order's seed.
        epoch: the epoch (also settable with :meth:`set_epoch`).
        rank, world_size: this process among the distributed ranks.
        start: how many of this rank's indices of the epoch were already consumed (resume
            mid-epoch at ``steps_done * batch_size``).
        shuffle: permute (True) or keep 0..length-1 (validation).
        fresh_each_epoch: offset indices by ``epoch * length`` (False for validation).
    """

    def __init__(
        self,
        length: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        shuffle: bool = True,
        fresh_each_epoch: bool = True,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if length < world_size:
            raise ValueError(f"{length} examples cannot be split over {world_size} ranks")
        self.length, self.seed, self.rank, self.world_size = int(length), int(seed), int(rank), int(world_size)
        self.shuffle, self.fresh_each_epoch = shuffle, fresh_each_epoch
        self.per_rank = self.length // self.world_size
        self.set_epoch(epoch, start)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Switch to ``epoch``, resuming after ``start`` of this rank's indices."""
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"start must be in [0, {self.per_rank}], got {start}")
        self.epoch, self.start = int(epoch), int(start)

    def indices(self) -> np.ndarray:
        """(per_rank,) int64: all of this rank's indices of the epoch, ignoring ``start``."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
        else:
            order = np.arange(self.length)
        mine = order[self.rank : self.per_rank * self.world_size : self.world_size]
        return mine + self.epoch * self.length if self.fresh_each_epoch else mine

    def __iter__(self):
        return iter(self.indices()[self.start :].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start
