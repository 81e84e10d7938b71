"""MixIT solvers: time of the exact and efficient solvers, and how often efficient is optimal.

Timing: n = 12 outputs, a batch of 16 mixtures of mixtures of 6 s stereo (docs/method.md §4).
Agreement: on model outputs for mixtures of mixtures, the fraction of items where the
efficient solver's assignment has the exact solver's (minimal) loss, and the mean loss gap.
By default the model is the official tiny 12-output fixture and the mixtures are made by
the pre-training sampler from a prepared folder (--data), or synthetic if none is given;
pass --model with a pre-trained checkpoint for figures on a trained model.

    python bench/mixit.py [--model RUN_OR_CKPT] [--data FMA_PREP_DIR] [--items 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import Timer  # noqa: E402

from mixitcli.losses import mixit_loss  # noqa: E402

SR = 44100
FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official-tiny"


def time_solvers(batch: int, n: int, seconds: float, repeats: int) -> dict:
    torch.manual_seed(0)
    t = int(seconds * SR)
    est = (torch.randn(batch, n, 2, t) * 0.1).requires_grad_()
    mixtures = torch.randn(batch, 2, 2, t) * 0.1
    out = {}
    for solver in ("efficient", "exact"):
        mixit_loss(est[:2, :, :, :SR], mixtures[:2, :, :, :SR], solver=solver)  # warm-up
        walls = []
        for _ in range(repeats):
            with Timer() as timer:
                loss, _ = mixit_loss(est, mixtures, solver=solver)
                loss.backward()
            walls.append(timer.wall)
            est.grad = None
        out[solver] = min(walls)
    return out


def synthetic_moms(items: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """(items, 2, 2, t): each mixture a sum of 3 band-limited noise 'instruments' with gaps."""
    g = torch.Generator().manual_seed(seed)
    t = int(seconds * SR)
    moms = torch.zeros(items, 2, 2, t)
    for i in range(items):
        for m in range(2):
            for _ in range(3):
                tone = torch.randn(2, t, generator=g)
                kernel = torch.randn(int(torch.randint(4, 128, (1,), generator=g)) * 2 + 1, generator=g)
                tone = torch.nn.functional.conv1d(tone.unsqueeze(1), kernel.view(1, 1, -1), padding="same").squeeze(1)
                gate = (torch.rand(t // 4410 + 1, generator=g) > 0.3).float().repeat_interleave(4410)[:t]
                moms[i, m] += tone * gate * torch.rand(1, generator=g)
    return moms / moms.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8) * 0.5


def agreement(model, moms: torch.Tensor, batch: int = 4) -> dict:
    same, gaps = 0, []
    for start in range(0, len(moms), batch):
        refs = moms[start : start + batch]
        with torch.inference_mode():
            est = model(refs.sum(1))
        for i in range(len(refs)):
            losses = {}
            for solver in ("exact", "efficient"):
                losses[solver], _ = mixit_loss(est[i : i + 1], refs[i : i + 1], solver=solver)
            gap = float(losses["efficient"] - losses["exact"])
            gaps.append(gap)
            same += gap <= 1e-6
    return {
        "items": len(moms),
        "efficient_optimal": same / len(moms),
        "mean_gap_db": sum(gaps) / len(gaps),
        "max_gap_db": max(gaps),
    }


def load_moms(data: Path | None, items: int, seconds: float) -> tuple[torch.Tensor, str]:
    if data is None:
        return synthetic_moms(items, seconds), "synthetic noise instruments"
    from mixitcli.data.samplers import MixtureOfMixtures

    ds = MixtureOfMixtures(data, split="train", segment_seconds=seconds, seed=123)
    return torch.stack([ds[i] for i in range(items)]), f"mixtures of mixtures from {data}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--outputs", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None, help="mixit checkpoint/run or official folder (12 outputs)")
    parser.add_argument("--data", type=Path, default=None, help="prepared FMA folder for real mixtures of mixtures")
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    times = time_solvers(args.batch, args.outputs, args.seconds, args.repeats)
    print(
        f"MixIT loss + backward, batch {args.batch}, n={args.outputs}, {args.seconds} s stereo, {args.threads} threads"
    )
    for solver, wall in times.items():
        print(f"  {solver:9} {wall:7.3f} s")
    print(f"  exact / efficient = {times['exact'] / times['efficient']:.2f}x")

    from mixitcli.model import load_model
    from mixitcli.model.official import load_official

    if args.model is not None:
        model, name = load_model(args.model), str(args.model)
    else:
        model = load_official(FIXTURE / "tiny12_model.pth", FIXTURE / "tiny12_merged_config.yaml")
        name = "official tiny 12-output fixture (random init)"
    moms, source = load_moms(args.data, args.items, args.seconds)
    a = agreement(model.eval(), moms)
    print(f"efficient vs exact on outputs of {name}, {source}:")
    print(
        f"  efficient finds the optimum in {a['efficient_optimal'] * 100:.1f}% of {a['items']} items; "
        f"loss gap mean {a['mean_gap_db']:.3f} dB, max {a['max_gap_db']:.3f} dB"
    )


if __name__ == "__main__":
    main()
