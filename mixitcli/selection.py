"""Channel selection (docs/method.md §6): which of the 12 MixIT outputs becomes which stem, for
any stem set of 1 to 12 stems (issue 21; MUSDB18-HQ's four by default).

1. Cut each validation song into 6 s chunks (6 s hop; the last chunk ends at the song's end,
   as the official recipe; chunks whose mixture is digital silence are skipped).
2. Separate each chunk with the pre-trained model and find the assignment of distinct
   outputs to the chunk's active stems (those not all-zero) that maximises the mean SNR on
   the first channel (the official evaluate_snr_pit; :func:`best_assignment`).
3. For each stem, count how often each output was assigned to it. The outputs chosen are the
   assignment of distinct outputs to the stems that maximises the total count over all stems
   (:func:`best_assignment` on the counts; ties: the first stem, in the stem order, takes the
   lowest output index, then the next stem, and so on). When every stem's most frequent output
   is a different one, that is the choice; when two stems share their most frequent output,
   the conflict is reported.
4. A stem with no vote at all (silent in every chunk of the validation songs, issue 10) has
   no evidence: it gets, among the outputs no other stem took, the one that matched the other
   stems least often (ties: the lowest index), and a warning naming it and the fix is printed,
   stored in the selection JSON (``unmatched``, ``warnings``) and printed again by fine-tuning.

The report says per stem how many chunks it was active in, which share of them its output won,
and the runner-up output and its share, so that a choice made from one song shows how sure it is.
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mixitcli.model import BSLocoformer
from mixitcli.stems import STEMS, describe


class SelectionError(Exception):
    """A selection file is missing, malformed or does not fit the model or the data."""


@dataclass
class Selection:
    """Result of channel selection.

    Attributes:
        stems: the stem order of ``selected`` (the data's stems, e.g. bass, drums, vocals, other).
        selected: output index per stem.
        counts: (n_outputs x n_stems) how often each output was the best match of each stem.
        chunks: number of chunks that voted.
        conflicts: human-readable notes on stems that wanted the same output.
        checkpoint: the model the selection was made for.
        unmatched: stems that no chunk voted for (silent in all validation songs); their
            outputs are a stated guess, not evidence.
        warnings: what the user must know about this selection (one per unmatched stem).
        report: per stem, {"stem", "active_chunks", "output", "share", "runner_up", "runner_up_share"}:
            the chunks in which it was active, its output and the share of those chunks that output
            won, and the next most frequent output (None when no other output won any).
    """

    stems: list[str]
    selected: list[int]
    counts: list[list[int]]
    chunks: int
    conflicts: list[str] = field(default_factory=list)
    checkpoint: str = ""
    unmatched: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    report: list[dict] = field(default_factory=list)

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


def best_assignment(scores: torch.Tensor) -> tuple[int, ...]:
    """Distinct outputs for the stems maximising the summed score: an exact assignment solver.

    Ties between assignments of the same total go to the lexicographically smallest one: the
    first stem takes the lowest output index it can while the total stays maximal, then the
    second, and so on (what taking the first maximum over all permutations in order would give).
    Dynamic programming over the sets of outputs used: at most 2^n states (4,096 for 12 outputs).

    Args:
        scores: (n_outputs, r) score of each output for each of r <= n_outputs stems (SNRs in
            dB, or counts).

    Returns:
        r output indices, one per stem.
    """
    n, r = scores.shape
    if r > n:
        raise ValueError(f"{r} stems cannot get distinct outputs of a model with {n} outputs")
    s = scores.tolist()

    @functools.cache
    def best(j: int, used: int) -> float:
        """The largest total of stems j.. with the outputs in the bit set ``used`` taken."""
        if j == r:
            return 0
        return max(s[o][j] + best(j + 1, used | 1 << o) for o in range(n) if not used >> o & 1)

    picks, used = [], 0
    for j in range(r):  # the same sums as in best(), so the maximum is met exactly
        target = best(j, used)
        o = next(o for o in range(n) if not used >> o & 1 and s[o][j] + best(j + 1, used | 1 << o) == target)
        picks.append(o)
        used |= 1 << o
    return tuple(picks)


def snr_db(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """SNR in dB of each estimate against each reference: est (n, t), ref (r, t) -> (n, r)."""
    err = (ref.unsqueeze(0) - est.unsqueeze(1)).square().sum(-1)
    return 10 * torch.log10(ref.square().sum(-1) + eps) - 10 * torch.log10(err + eps)


UNMATCHED_RULE = "the unused output that matched the other stems least often (ties: the lowest index)"


def resolve(counts: torch.Tensor, stems: tuple[str, ...] | None = None) -> tuple[list[int], list[str]]:
    """The outputs of the stems: distinct ones with the largest total count (:func:`best_assignment`).

    When every stem's most frequent output is a different one, that is the answer; when two
    stems share their most frequent output, the conflict is noted. Stems with no vote at all (a
    column of zeros) take no part in that; each then gets :data:`UNMATCHED_RULE`'s output among
    those left (in stem order).

    Args:
        counts: (n_outputs, n_stems) votes; at least one stem has some.
        stems: the stem names, for the notes (default: VDBO for 4 stems, else numbers).

    Returns:
        (output per stem, notes on conflicts).
    """
    n_outputs, n_stems = counts.shape
    stems = stems or (STEMS if n_stems == len(STEMS) else tuple(str(j) for j in range(n_stems)))
    voted = [j for j in range(n_stems) if counts[:, j].sum() > 0]
    favourite = counts[:, voted].argmax(0).tolist()  # per voted stem
    wanted = list(best_assignment(counts[:, voted]))
    conflicts = []
    if len(set(favourite)) < len(voted):
        for out in sorted(set(favourite)):
            who = [stems[j] for j, w in zip(voted, favourite) if w == out]
            if len(who) > 1:
                conflicts.append(f"output {out} is the most frequent match of {', '.join(who)}")
        conflicts.append(
            "resolved by choosing distinct outputs with the largest total count: "
            + ", ".join(f"{stems[j]} -> {o}" for j, o in zip(voted, wanted))
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


def stem_report(counts: torch.Tensor, selected: list[int], stems: tuple[str, ...]) -> list[dict]:
    """Per stem: chunks where it was active, its output's share of them, and the runner-up.

    Every active stem of a voting chunk is given exactly one output, so a stem's active chunks
    are its column sum. The runner-up is the other output that won most of them (ties: the
    lowest index), None when no other output won any.
    """
    rows = []
    for j, stem in enumerate(stems):
        column = counts[:, j].tolist()
        active, out = sum(column), selected[j]
        others = [o for o in range(len(column)) if o != out and column[o] > 0]
        runner = min(others, key=lambda o: (-column[o], o)) if others else None
        rows.append(
            {
                "stem": stem,
                "active_chunks": active,
                "output": out,
                "share": round(column[out] / active, 4) if active else None,
                "runner_up": runner,
                "runner_up_share": round(column[runner] / active, 4) if runner is not None else None,
            }
        )
    return rows


@torch.no_grad()
def select_channels(
    model: BSLocoformer,
    songs,
    *,
    stems: tuple[str, ...] = STEMS,
    chunk_seconds: float = 6.0,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    progress=None,
) -> Selection:
    """Run channel selection over ``songs``: an iterable of (name, mixture (c, t), stems (k, c, t))
    with the k stems in the order of ``stems`` (1 <= k <= the model's outputs).

    Raises:
        SelectionError: more stems than outputs, no song, or no chunk in which a stem plays.
    """
    n, k = model.config.n_outputs, len(stems)
    if not 1 <= k <= n:
        raise SelectionError(
            f"the model has {n} outputs, so it can give at most {n} stems distinct outputs; "
            f"the data has {k} ({describe(stems)})"
        )
    model = model.to(device).eval()
    chunk = int(round(chunk_seconds * model.config.sample_rate))
    counts = torch.zeros(n, k, dtype=torch.long)
    voted = n_songs = 0
    for name, mixture, refs in songs:
        n_songs += 1
        pieces = [
            (mixture[:, s : s + chunk], refs[:, :, s : s + chunk]) for s in chunk_starts(mixture.shape[-1], chunk)
        ]
        pieces = [(m, r) for m, r in pieces if m[0].abs().sum() > 0]  # skip digital silence
        for start in range(0, len(pieces), batch_size):
            mix = torch.stack([m for m, _ in pieces[start : start + batch_size]]).to(device)
            est = model(mix).float().cpu()  # (b, n, c, t)
            for i, (_, ref) in enumerate(pieces[start : start + batch_size]):
                active = [j for j in range(k) if ref[j].abs().sum() > 0]
                if not active:
                    continue
                snr = snr_db(est[i, :, 0], ref[active, 0])  # first channel only: (n, r)
                for j, out in zip(active, best_assignment(snr)):
                    counts[out, j] += 1
                voted += 1
        if progress is not None:
            progress(name)
    if n_songs == 0:
        from mixitcli.data.splits import NO_VALIDATION_FIX

        raise SelectionError(
            f"there are no validation songs (the prepared folder's valid.txt lists none); {NO_VALIDATION_FIX}"
        )
    if voted == 0:
        raise SelectionError(
            f"no chunk with an active stem: the {n_songs} validation song(s) are all silent or shorter than "
            f"--chunk-seconds {chunk_seconds:g}; use longer songs or a shorter --chunk-seconds"
        )
    selected, conflicts = resolve(counts, stems)
    unmatched = [j for j in range(k) if counts[:, j].sum() == 0]
    return Selection(
        stems=list(stems),
        selected=selected,
        counts=counts.tolist(),
        chunks=voted,
        conflicts=conflicts,
        unmatched=[stems[j] for j in unmatched],
        warnings=[unmatched_warning(stems[j], selected[j]) for j in unmatched],
        report=stem_report(counts, selected, stems),
    )


def read_selection(path: str | Path, *, n_outputs: int, stems: tuple[str, ...] = STEMS) -> list[int]:
    """The output of each of ``stems`` (in that order), from a selection JSON.

    Accepts our format (``stems`` + ``selected``, from `mixit select-channels`) and the official
    ``inst_head.json`` ({"vocals": 3, "bass": 7, ...}). Anything else is refused with the reason,
    never a traceback (issue 20): not a JSON object, ``selected`` without ``stems`` (or of
    another length), an output that is not a whole number, out of range or chosen twice, a stem
    of the data that the selection does not cover.

    Raises:
        SelectionError: the message names the file, the problem and how to make a selection.
    """
    path = Path(path)
    fix = f"make one with `mixit select-channels PRETRAINED --data DIR --out {path}`"
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SelectionError(f"{path}: cannot read the selection ({e}); {fix}") from e
    if not isinstance(d, dict):
        raise SelectionError(
            f"{path}: a selection is a JSON object (`mixit select-channels` writes one; the official "
            f'inst_head.json is {{"vocals": 3, ...}}), not a {type(d).__name__}; {fix}'
        )
    if "stems" in d or "selected" in d:  # ours
        names, outputs = d.get("stems"), d.get("selected")
        if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
            raise SelectionError(f'{path}: no "stems" list of names beside "selected"; {fix}')
        if not isinstance(outputs, list) or len(outputs) != len(names):
            raise SelectionError(f'{path}: "selected" must list one output per stem of "stems" ({len(names)}); {fix}')
        by_stem = dict(zip(names, outputs))
    else:  # the official inst_head.json
        by_stem = d
    missing = [s for s in stems if s not in by_stem]
    if missing:
        raise SelectionError(
            f"{path}: no output chosen for {', '.join(missing)}: it selects for {describe(by_stem) or 'no stem'}, and the data's "
            f"stems are {describe(stems)}; select for this data: `mixit select-channels PRETRAINED --data DIR --out {path}`"
        )
    keep = [by_stem[s] for s in stems]
    head = f"{path}: outputs {keep} are not distinct indices of a {n_outputs}-output model"
    bad = [
        f"{s} -> {by_stem[s]!r}"
        for s in stems
        if not isinstance(by_stem[s], int) or isinstance(by_stem[s], bool) or not 0 <= by_stem[s] < n_outputs
    ]
    if bad:
        raise SelectionError(f"{head}: {', '.join(bad)} is not a whole number from 0 to {n_outputs - 1}; {fix}")
    twice = sorted({o for o in keep if keep.count(o) > 1})
    if twice:
        who = "; ".join(f"output {o} is chosen for {' and '.join(s for s in stems if by_stem[s] == o)}" for o in twice)
        raise SelectionError(f"{head}: {who}, but each stem needs its own output; {fix}")
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
    fig, ax = plt.subplots(figsize=(1.5 + 0.75 * len(selection.stems), 0.35 * len(counts) + 1.5))
    ax.imshow(counts, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(selection.stems)), selection.stems)
    ax.set_yticks(range(len(counts)), [f"out {i}" for i in range(len(counts))])
    for (i, j), v in (
        (ij, int(counts[ij])) for ij in itertools.product(range(counts.shape[0]), range(counts.shape[1]))
    ):
        ax.text(j, i, str(v), ha="center", va="center", color="w" if v < counts.max() / 2 else "k", fontsize=8)
    for j, i in enumerate(selection.selected):
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_title(f"best-matching output per stem ({selection.chunks} chunks)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
