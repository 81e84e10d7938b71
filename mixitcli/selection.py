"""Channel selection (docs/method.md §6): which of the 12 MixIT outputs becomes which stem.

1. Cut each validation song into 6 s chunks (6 s hop; the last chunk ends at the song's end,
   as the official recipe; chunks whose mixture is digital silence are skipped).
2. Separate each chunk with the pre-trained model and find the assignment of distinct
   outputs to the chunk's active stems (those not all-zero) that maximises the mean SNR on
   the first channel (the official evaluate_snr_pit).
3. For each stem, count how often each output was assigned to it; pick the most frequent.
   When two stems pick the same output, the distinct outputs with the largest total count
   are chosen instead, and the conflict is reported.
4. A stem with no vote at all (silent in every chunk of the validation songs, issue 10) has
   no evidence: it gets, among the outputs no other stem took, the one that matched the other
   stems least often (ties: the lowest index), and a warning naming it and the fix is printed,
   stored in the selection JSON (``unmatched``, ``warnings``) and printed again by fine-tuning.
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mixitcli.model import BSLocoformer
from mixitcli.stems import STEMS


class SelectionError(Exception):
    """A selection file is missing, malformed or does not fit the model."""


@dataclass
class Selection:
    """Result of channel selection.

    Attributes:
        stems: the stem order of ``selected`` (bass, drums, vocals, other).
        selected: output index per stem.
        counts: (n_outputs x n_stems) how often each output was the best match of each stem.
        chunks: number of chunks that voted.
        conflicts: human-readable notes on stems that wanted the same output.
        checkpoint: the model the selection was made for.
        unmatched: stems that no chunk voted for (silent in all validation songs); their
            outputs are a stated guess, not evidence.
        warnings: what the user must know about this selection (one per unmatched stem).
    """

    stems: list[str]
    selected: list[int]
    counts: list[list[int]]
    chunks: int
    conflicts: list[str] = field(default_factory=list)
    checkpoint: str = ""
    unmatched: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        d = asdict(self)
        d["by_stem"] = dict(zip(self.stems, self.selected))
        return json.dumps(d, indent=2)


def chunk_starts(length: int, chunk: int) -> list[int]:
    """Starts of ``chunk``-sample chunks with hop ``chunk``; the last one ends at ``length``."""
    if length < chunk:
        return []
    starts = list(range(0, length - chunk + 1, chunk))
    if starts[-1] + chunk < length:
        starts.append(length - chunk)
    return starts


def best_assignment(snr: torch.Tensor) -> tuple[int, ...]:
    """Distinct outputs for the stems maximising the summed SNR.

    Args:
        snr: (n_outputs, r) SNR of each output against each of r stems.

    Returns:
        r output indices, one per stem.
    """
    n, r = snr.shape
    perms = _permutations(n, r)  # (K, r)
    totals = snr[perms, torch.arange(r)].sum(-1)  # (K,)
    return tuple(perms[int(totals.argmax())].tolist())


@functools.lru_cache(maxsize=None)
def _permutations(n: int, r: int) -> torch.Tensor:
    return torch.tensor(list(itertools.permutations(range(n), r)), dtype=torch.long).view(-1, r)


def snr_db(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """SNR in dB of each estimate against each reference: est (n, t), ref (r, t) -> (n, r)."""
    err = (ref.unsqueeze(0) - est.unsqueeze(1)).square().sum(-1)
    return 10 * torch.log10(ref.square().sum(-1) + eps) - 10 * torch.log10(err + eps)


UNMATCHED_RULE = "the unused output that matched the other stems least often (ties: the lowest index)"


def resolve(counts: torch.Tensor) -> tuple[list[int], list[str]]:
    """Per stem the most frequent output; distinct outputs with the largest total on a tie-up.

    Stems with no vote at all (a column of zeros) take no part in that; each then gets
    :data:`UNMATCHED_RULE`'s output among those left (in stem order).

    Args:
        counts: (n_outputs, n_stems) votes; at least one stem has some.

    Returns:
        (output per stem, notes on conflicts).
    """
    n_outputs, n_stems = counts.shape
    name = (lambda j: STEMS[j]) if n_stems == len(STEMS) else str
    voted = [j for j in range(n_stems) if counts[:, j].sum() > 0]
    wanted = counts[:, voted].argmax(0).tolist()  # per voted stem
    conflicts = []
    if len(set(wanted)) < len(voted):
        for out in sorted(set(wanted)):
            who = [name(j) for j, w in zip(voted, wanted) if w == out]
            if len(who) > 1:
                conflicts.append(f"output {out} is the most frequent match of {', '.join(who)}")
        wanted = list(best_assignment(counts[:, voted].double()))
        conflicts.append(
            "resolved by choosing distinct outputs with the largest total count: "
            + ", ".join(f"{name(j)} -> {o}" for j, o in zip(voted, wanted))
        )
    selected = dict(zip(voted, wanted))
    totals = counts.sum(1).tolist()  # (n_outputs,) votes for any stem
    free = sorted((o for o in range(n_outputs) if o not in wanted), key=lambda o: (totals[o], o))
    selected.update(zip([j for j in range(n_stems) if j not in selected], free))
    return [selected[j] for j in range(n_stems)], conflicts


def unmatched_warning(stem: str, output: int) -> str:
    """The warning for a stem that no chunk of the validation songs voted for."""
    return (
        f"{stem} is silent in every chunk of the validation songs, so no output matched it; output {output} was "
        f"chosen as {UNMATCHED_RULE}, a guess rather than evidence. Fix: select again with validation songs in "
        f"which {stem} is active (`mixit prepare-musdb ROOT --out DIR --valid-tracks N` holds out more tracks)"
    )


@torch.no_grad()
def select_channels(
    model: BSLocoformer,
    songs,
    *,
    chunk_seconds: float = 6.0,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    progress=None,
) -> Selection:
    """Run channel selection over ``songs``: an iterable of (name, mixture (c, t), stems (4, c, t))
    with stems in the order bass, drums, vocals, other."""
    n = model.config.n_outputs
    if n < len(STEMS):
        raise SelectionError(f"the model has {n} outputs; selection needs at least {len(STEMS)}")
    model = model.to(device).eval()
    chunk = int(round(chunk_seconds * model.config.sample_rate))
    counts = torch.zeros(n, len(STEMS), dtype=torch.long)
    voted = n_songs = 0
    for name, mixture, stems in songs:
        n_songs += 1
        pieces = [(mixture[:, s : s + chunk], stems[:, :, s : s + chunk]) for s in chunk_starts(mixture.shape[-1], chunk)]
        pieces = [(m, r) for m, r in pieces if m[0].abs().sum() > 0]  # skip digital silence
        for start in range(0, len(pieces), batch_size):
            mix = torch.stack([m for m, _ in pieces[start : start + batch_size]]).to(device)
            est = model(mix).float().cpu()  # (b, n, c, t)
            for i, (_, ref) in enumerate(pieces[start : start + batch_size]):
                active = [j for j in range(len(STEMS)) if ref[j].abs().sum() > 0]
                if not active:
                    continue
                snr = snr_db(est[i, :, 0], ref[active, 0])  # first channel only: (n, r)
                for j, out in zip(active, best_assignment(snr)):
                    counts[out, j] += 1
                voted += 1
        if progress is not None:
            progress(name)
    if n_songs == 0:
        from mixitcli.data.musdb import NO_VALIDATION_FIX

        raise SelectionError(f"there are no validation songs (the prepared folder's valid.txt lists none); {NO_VALIDATION_FIX}")
    if voted == 0:
        raise SelectionError(
            f"no chunk with an active stem: the {n_songs} validation song(s) are all silent or shorter than "
            f"--chunk-seconds {chunk_seconds:g}; use longer songs or a shorter --chunk-seconds"
        )
    selected, conflicts = resolve(counts)
    unmatched = [j for j in range(len(STEMS)) if counts[:, j].sum() == 0]
    return Selection(
        stems=list(STEMS), selected=selected, counts=counts.tolist(), chunks=voted, conflicts=conflicts,
        unmatched=[STEMS[j] for j in unmatched], warnings=[unmatched_warning(STEMS[j], selected[j]) for j in unmatched],
    )


def read_selection(path: str | Path, *, n_outputs: int) -> list[int]:
    """Output indices in the order bass, drums, vocals, other, from a selection JSON.

    Accepts our format (``stems`` + ``selected``) and the official ``inst_head.json``
    ({"vocals": 3, "bass": 7, ...}).
    """
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SelectionError(f"{path}: cannot read the selection ({e})") from e
    by_stem = d.get("by_stem") or (dict(zip(d["stems"], d["selected"])) if "selected" in d else d)
    missing = [s for s in STEMS if s not in by_stem]
    if missing:
        raise SelectionError(f"{path}: no output chosen for {', '.join(missing)}")
    keep = [int(by_stem[s]) for s in STEMS]
    if any(not 0 <= k < n_outputs for k in keep) or len(set(keep)) != len(keep):
        raise SelectionError(f"{path}: outputs {keep} are not distinct indices of a {n_outputs}-output model")
    return keep


def selection_warnings(path: str | Path) -> list[str]:
    """The warnings stored in a selection JSON by :func:`select_channels` (none in the official format)."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SelectionError(f"{path}: cannot read the selection ({e})") from e
    notes = d.get("warnings", []) if isinstance(d, dict) else []
    return [str(n) for n in notes] if isinstance(notes, list) else []


def plot_counts(selection: Selection, path: str | Path) -> None:
    """Heatmap PNG of the count matrix (outputs x stems), chosen cells outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = torch.tensor(selection.counts)
    fig, ax = plt.subplots(figsize=(4.5, 0.35 * len(counts) + 1.5))
    ax.imshow(counts, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(selection.stems)), selection.stems)
    ax.set_yticks(range(len(counts)), [f"out {i}" for i in range(len(counts))])
    for (i, j), v in ((ij, int(counts[ij])) for ij in itertools.product(range(counts.shape[0]), range(counts.shape[1]))):
        ax.text(j, i, str(v), ha="center", va="center", color="w" if v < counts.max() / 2 else "k", fontsize=8)
    for j, i in enumerate(selection.selected):
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_title(f"best-matching output per stem ({selection.chunks} chunks)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
