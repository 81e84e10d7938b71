"""Loss and learning-rate curves of a run, from RUN/metrics.jsonl, as a PNG."""

from __future__ import annotations

import json
from pathlib import Path


class PlotError(Exception):
    """The run folder has no readable metrics."""


def read_metrics(run: str | Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise PlotError(f"{path}: no metrics yet (is {run} a run folder?)")
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:  # a line cut by a crash: skip it
                continue
    if not records:
        raise PlotError(f"{path}: empty")
    return records


def plot_run(run: str | Path, out: str | Path | None = None) -> Path:
    """Two panels: train and validation loss (and validation uSDR when fine-tuning); learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run)
    train = [r for r in records if "loss/train" in r]
    valid = [r for r in records if "loss/valid" in r]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=(2, 1))
    ax_loss.plot([r["step"] for r in train], [r["loss/train"] for r in train], lw=1, label="train loss")
    if valid:
        ax_loss.plot([r["step"] for r in valid], [r["loss/valid"] for r in valid], "o-", label="validation loss")
    if any("usdr/valid" in r for r in valid):
        twin = ax_loss.twinx()
        twin.plot(
            [r["step"] for r in valid],
            [r["usdr/valid"] for r in valid],
            "s--",
            color="tab:green",
            label="validation uSDR",
        )
        twin.set_ylabel("uSDR (dB)")
        twin.legend(loc="lower left")
    ax_loss.set_ylabel("loss (dB)")
    ax_loss.legend(loc="upper right")
    ax_loss.grid(alpha=0.3)
    ax_lr.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    ax_loss.set_title(Path(run).name)
    fig.tight_layout()
    out = Path(out) if out is not None else Path(run) / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
