"""Summaries and tables: the summary of one evaluation over its tracks (written by `mixit eval`
as summary.json and summary.md), and `mixit report`, the results of several evaluations in
the layout of the paper's Tables 1–3 (Markdown) and one bar chart per stem (PNG).

The summary lives here, not in :mod:`mixitcli.metrics`, because it is the paper's way of
reporting (the median or mean over tracks, the Average column of Table 1, the table order of
the stems) and every table reads it; the metrics stay numbers of one track, which training
validation uses without any of this.

Each result is a ``summary.json`` written by `mixit eval` (or its folder), optionally named
``LABEL=PATH``. A result is placed in the paper's tables by what its label or model name
says (docs/method.md §9):

- size: ``bslocoformer-small|medium|large`` or a word small/medium/large, or the paper's
  ``S1 S2 M1 M2 L1 L2`` (1: from scratch, 2: pre-trained on FMA large);
- pre-training: ``fma-small|medium|large|full`` (none: trained from scratch);
- ``freeze`` anywhere: the separator was frozen (Table 2).

Published model names (:mod:`mixitcli.registry`) say all of this. Results that say nothing
appear only in the "All results" table. Results of other stems than MUSDB18-HQ's four (issue 21)
get that generic table alone, one column per stem (a summary records its stems).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixitcli.metrics import METRICS

TABLE_STEMS: tuple[str, ...] = ("vocals", "bass", "drums", "other")
"""The paper's table order (Table 1), used wherever MUSDB18-HQ results are written or printed;
models output :data:`mixitcli.stems.STEMS`."""
COLUMNS = list(TABLE_STEMS) + ["average"]
"""The columns of a MUSDB18-HQ table; a summary of other stems has its own (:func:`columns`)."""


def table_order(stems) -> tuple[str, ...]:
    """The order results list stems in: the paper's Table 1 order for MUSDB18-HQ's four stems,
    otherwise the stem set's own order (issue 21)."""
    return TABLE_STEMS if set(stems) == set(TABLE_STEMS) else tuple(stems)


def summary_stems(summary: dict) -> tuple[str, ...]:
    """The stems of an evaluation's summary (MUSDB18-HQ's, for a summary written before stem sets)."""
    return tuple(summary.get("stems") or TABLE_STEMS)


def columns(summary: dict) -> list[str]:
    """The table columns of one summary: its stems and the average."""
    return list(summary_stems(summary)) + ["average"]


SUMMARY_JSON, SUMMARY_MD = "summary.json", "summary.md"
"""The summary files of a `mixit eval` results folder (written by :mod:`mixitcli.evaluate`, read here)."""
PAPER_REFERENCES = (  # (name, cSDR average, uSDR average), docs/method.md §9
    ("BSRNN", 8.24, 7.94),
    ("SIMO stereo BSRNN", 8.54, 8.55),
    ("TS-BSMamba2", 9.56, 8.71),
    ("BS-RoFormer", 9.80, None),
)


class ReportError(Exception):
    """A result file is missing or is not a `mixit eval` summary."""


# -- the summary of one evaluation -----------------------------------------------------------


def summarise(records: Iterable[dict], *, stems: Sequence[str] = TABLE_STEMS, **meta) -> dict:
    """Per stem: median cSDR and mean uSDRs over tracks (NaN/None left out); Average over stems.

    Args:
        stems: the evaluated stems, in table order (:func:`table_order`); recorded as ``stems``.
    """
    records = list(records)
    summary = dict(meta)
    summary["tracks"] = len(records)
    summary["stems"] = list(stems)
    for metric in METRICS:
        per_stem = {}
        for stem in stems:
            values = np.array([r[metric][stem] for r in records if r[metric].get(stem) is not None], dtype=np.float64)
            if values.size == 0:
                per_stem[stem] = None
            else:
                per_stem[stem] = float(np.median(values) if metric == "csdr" else np.mean(values))
        done = [v for v in per_stem.values() if v is not None]
        per_stem["average"] = float(np.mean(done)) if len(done) == len(stems) else None
        summary[metric] = per_stem
    summary["flagged"] = [
        {"track": r["track"], "stem": s, "flag": f} for r in records for s, f in r.get("flags", {}).items()
    ]
    summary["nonfinite"] = [
        {"track": r["track"], "file": f, "samples": n} for r in records for f, n in r.get("nonfinite", {}).items()
    ]
    summary["length_mismatch"] = [
        {"track": r["track"], "stem": s, **n} for r in records for s, n in r.get("length_mismatch", {}).items()
    ]
    return summary


def fmt(x: float | None) -> str:
    """A value in dB with two decimals, or a dash for a value that is undefined."""
    return "–" if x is None else f"{x:.2f}"


def markdown_table(summary: dict) -> str:
    """The paper's Table 1 layout for one model: rows are metrics, columns the stems and Average."""
    cols = columns(summary)
    lines = ["| metric | " + " | ".join(c.capitalize() for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for metric, label in METRICS.items():
        lines.append(f"| {label} | " + " | ".join(fmt(summary[metric][c]) for c in cols) + " |")
    note = f"\n{summary['tracks']} tracks"
    if summary.get("flagged"):
        note += f"; {len(summary['flagged'])} stem(s) flagged (silent), see summary.json"
    if summary.get("length_mismatch"):
        note += f"; {len(summary['length_mismatch'])} estimate(s) of another length than the reference, scored on the reference's length (cut or zero-padded), see summary.json"
    return "\n".join(lines) + note + "\n"


def print_table(summary: dict, console) -> None:
    """The table of :func:`markdown_table` on a rich console (what `mixit eval` prints)."""
    from rich.table import Table

    on = summary.get("data") or "MUSDB18-HQ"
    table = Table(
        title=f"{summary.get('model') or summary.get('estimates')} on {on} {summary.get('subset', '')} ({summary['tracks']} tracks)"
    )
    table.add_column("metric")
    for c in columns(summary):
        table.add_column(c.capitalize(), justify="right")
    for metric, label in METRICS.items():
        table.add_row(label, *(fmt(summary[metric][c]) for c in columns(summary)))
    console.print(table)
    if summary.get("flagged"):
        console.print(
            f"[yellow]{len(summary['flagged'])} stem(s) flagged[/] (silent estimate or reference; README, 'Evaluation: silent stems')"
        )
    if summary.get("nonfinite"):
        console.print(
            f"[yellow]{len(summary['nonfinite'])} file(s) had non-finite samples[/], scored as 0 (listed in summary.json)"
        )
    if summary.get("length_mismatch"):
        console.print(
            f"[yellow]{len(summary['length_mismatch'])} estimate(s) of another length than the reference[/], scored on "
            "the reference's length: cut or padded with zeros (listed in summary.json)"
        )


# -- the paper's tables over several evaluations ---------------------------------------------


@dataclass(frozen=True)
class Result:
    """One evaluated model: its label, what it is, and its summary."""

    label: str
    summary: dict
    size: str | None
    pretrain: str | None  # FMA subset, None: from scratch
    freeze: bool


def classify(text: str) -> tuple[str | None, str | None, bool]:
    """(size, FMA pre-training subset or None, frozen separator) from a label or model name."""
    paper = re.search(r"\b([SML])([12])\b", text)
    size = re.search(r"bslocoformer-(small|medium|large)", text) or re.search(r"\b(small|medium|large)\b", text)
    fma = re.search(r"fma-(small|medium|large|full)", text)
    freeze = "freeze" in text.lower()
    if paper and not size:
        sizes = {"S": "small", "M": "medium", "L": "large"}
        return sizes[paper.group(1)], "large" if paper.group(2) == "2" else None, freeze
    return (size.group(1) if size else None), (fma.group(1) if fma else None), freeze


def load_result(spec: str) -> Result:
    """Read ``[LABEL=]PATH`` where PATH is a summary.json or a folder holding one.

    Raises:
        ReportError: missing file or not a summary.
    """
    label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
    path = Path(path)
    file = path / SUMMARY_JSON if path.is_dir() else path
    try:
        summary = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{file}: not a readable summary.json written by `mixit eval` ({e})") from e
    if not all(m in summary for m in METRICS):
        raise ReportError(f"{file}: not a `mixit eval` summary (no {', '.join(METRICS)})")
    if not label:
        model = summary.get("model") or summary.get("estimates") or file.parent.name
        label = Path(str(model)).name or str(model)
    size, pretrain, freeze = classify(f"{label} {summary.get('model') or ''}")
    return Result(label, summary, size, pretrain, freeze)


def _cells(summary: dict, metric: str, cols: Sequence[str]) -> list[str]:
    return [fmt(summary[metric].get(c)) for c in cols]


SHORT = {"csdr": "cSDR", "usdr": "uSDR", "usdr_mdx": "uSDR-MDX21"}


def _table(
    rows: Sequence[tuple[str, Result | None]],
    *,
    metrics: Sequence[str] = ("csdr", "usdr"),
    cols: Sequence[str] = COLUMNS,
) -> str:
    head = "| model | " + " | ".join(f"{SHORT[m]} {c.capitalize()}" for m in metrics for c in cols) + " |"
    lines = [head, "|---" * (1 + len(cols) * len(metrics)) + "|"]
    for name, result in rows:
        cells = [c for m in metrics for c in (_cells(result.summary, m, cols) if result else ["–"] * len(cols))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pick(results: Sequence[Result], **want) -> Result | None:
    for r in results:
        if all(getattr(r, k) == v for k, v in want.items()):
            return r
    return None


def _label(r: Result | None, fallback: str) -> str:
    return f"{fallback} ({r.label})" if r else fallback


def report_columns(results: Sequence[Result]) -> list[str]:
    """The stems of all results in one order (the first result's first, then new ones), and the average."""
    stems: list[str] = []
    for r in results:
        stems += [s for s in summary_stems(r.summary) if s not in stems]
    return list(COLUMNS) if set(stems) == set(TABLE_STEMS) else stems + ["average"]


def build_report(results: Sequence[Result]) -> str:
    """The Markdown report: all results, then Tables 1–3 where the results fill them. Results of
    other stems than MUSDB18-HQ's four get the generic table of all results only (issue 21)."""
    cols = report_columns(results)
    note = "cSDR: museval BSSEval v4, median over tracks; uSDR: mean over tracks (paper: per-channel; MDX21: both channels). README, 'Evaluation'.\n"
    if cols != COLUMNS:
        stems = ", ".join(cols[:-1])
        return "\n".join(
            [
                "# Results\n",
                f"Stems: {stems}; Average: their mean. {note}",
                "## All results\n",
                _table([(r.label, r) for r in results], metrics=tuple(METRICS), cols=cols),
            ]
        )
    out = ["# MUSDB18-HQ results\n", note]
    out += ["## All results\n", _table([(r.label, r) for r in results], metrics=tuple(METRICS))]
    table1 = []
    for size, letter in (("small", "S"), ("medium", "M"), ("large", "L")):
        for pre, digit in ((None, "1"), ("large", "2")):
            r = _pick(results, size=size, pretrain=pre, freeze=False)
            table1.append((_label(r, f"{letter}{digit}: {size}, {'MixIT on FMA large' if pre else 'from scratch'}"), r))
    if any(r for _, r in table1):
        out += ["## Table 1: model size, from scratch (1) vs MixIT pre-training on FMA large (2)\n", _table(table1)]
        refs = ["| reference (paper) | cSDR average | uSDR average |", "|---|---|---|"]
        refs += [f"| {n} | {c:.2f} | {'–' if u is None else f'{u:.2f}'} |" for n, c, u in PAPER_REFERENCES]
        out += ["\n".join(refs) + "\n"]
    table2 = []
    for pre in ("large", None):
        r = next((x for x in results if x.freeze and (x.pretrain is not None) == (pre is not None)), None)
        table2.append((_label(r, "separator pre-trained with MixIT, frozen" if pre else "separator random, frozen"), r))
    if any(r for _, r in table2):
        out += ["## Table 2: frozen separator, encoder and decoder fine-tuned\n", _table(table2)]
    table3 = []
    for pre in (None, "small", "medium", "large", "full"):
        r = _pick(results, size="medium", pretrain=pre, freeze=False)
        table3.append((_label(r, f"medium, {'no pre-training' if pre is None else f'MixIT on FMA {pre}'}"), r))
    if any(r for _, r in table3):
        out += ["## Table 3: pre-training data size (medium model)\n", _table(table3)]
    return "\n".join(out)


def bar_charts(results: Sequence[Result], out_dir: Path) -> list[Path]:
    """One PNG per stem (and the average): cSDR and uSDR bars per result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    y = np.arange(len(results))[::-1]  # first result on top
    metrics = ("csdr", "usdr", "usdr_mdx")
    height = 0.8 / len(metrics)
    cols = report_columns(results)
    for column in cols:
        fig, ax = plt.subplots(figsize=(8, 1.2 + 0.75 * len(results)))
        for k, metric in enumerate(metrics):
            values = [r.summary[metric].get(column) for r in results]
            pos = y + (1 - k) * height
            bars = ax.barh(pos, [np.nan if v is None else v for v in values], height=height, label=METRICS[metric])
            ax.bar_label(bars, labels=["–" if v is None else f"{v:.2f}" for v in values], fontsize=7, padding=2)
        ax.set_yticks(y, [r.label for r in results], fontsize=8)
        ax.set_xlabel("dB")
        ax.set_title(f"{column.capitalize()} on MUSDB18-HQ" if cols == COLUMNS else column.capitalize())
        ax.legend(
            fontsize=7,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.5 / (0.5 + 0.4 * len(results))),
            ncol=3,
            frameon=False,
        )
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.12)
        fig.tight_layout()
        path = out_dir / f"{column}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(specs: Sequence[str], out_dir: str | Path) -> list[Path]:
    """`mixit report`: read every result, write OUT/report.md and OUT/<stem>.png.

    Returns:
        The files written.

    Raises:
        ReportError: a result cannot be read (all are checked before anything is written).
    """
    results, problems = [], []
    for spec in specs:
        try:
            results.append(load_result(spec))
        except ReportError as e:
            problems.append(str(e))
    if problems:
        raise ReportError("cannot read the results:\n" + "\n".join(f"  - {p}" for p in problems))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "report.md"
    md.write_text(build_report(results))
    return [md, *bar_charts(results, out_dir)]
