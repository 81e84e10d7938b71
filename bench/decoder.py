"""Mask decoder, masking, iSTFT and loss: CPU seconds per step, this checkout against another.

What is timed is each version's own code: its ``compute_loss`` (the training step's loss and
its backward) or its ``model(wav)`` (inference), on a model whose encoder is a stub returning
fixed separator features (b, l, k, d) and whose separator has no blocks. A step is then: the
input-scale and analysis STFTs of the mixture (2 signals per item, a few per cent of the
step), the mask decoder, the masking, the iSTFT and the loss, forward and backward (the
gradient reaches the features and every decoder parameter, as in training). Cases:

    tiny-pretrain     tiny preset, 12 outputs, MixIT (efficient solver) on 2 mixtures
    medium-finetune   medium preset, 4 outputs, the fine-tuning loss on 4 stems
    medium-forward    medium preset, 4 outputs, eval-mode inference (no gradients)

Each (side, repetition) runs in a fresh process: one warm-up step, then ``--steps`` timed
steps, whose median CPU time it reports. The sides alternate (ours, ref, ref, ours, ...) and
the table gives the median over ``--reps`` of each side, the speed-up (ref / ours), the range
of the per-repetition ratios (how noisy the machine was) and each side's peak memory. REF is
a git ref (exported with ``git archive`` into a temporary folder) or a checkout folder.

    python bench/decoder.py --against 6d4e8a4
    python bench/decoder.py --against main --cases tiny-pretrain --reps 7 --seconds 6
    python bench/decoder.py                       # this checkout only
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REPO, Timer, alternate, export_ref, peak_rss_gb, run_in, set_up_process  # noqa: E402

SR = 44100
CASES = {  # name: (preset, outputs, stage)
    "tiny-pretrain": ("tiny", 12, "pretrain"),
    "medium-finetune": ("medium", 4, "finetune"),
    "medium-forward": ("medium", 4, "forward"),
}


def stub_network(model, batch: int, frames: int):
    """Replace the encoder by fixed features (a parameter, so they get a gradient) and drop the
    separator blocks: what is left of the model is analysis, decoder, masking and synthesis."""
    import torch
    from torch import nn

    cfg = model.config

    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            # (b, k, l, d) stored, handed over as (b, l, k, d): the layout the separator leaves
            self.x = nn.Parameter(torch.randn(batch, len(cfg.bands), frames, cfg.d_model))

        def forward(self, spec):
            return self.x.transpose(1, 2)

    model.encoder = Features()
    model.separator = nn.ModuleList()
    return model


def measure(case: str, batch: int, seconds: float, steps: int, threads: int) -> dict:
    import torch

    import mixitcli
    from mixitcli import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    preset, outputs, stage = CASES[case]
    t = int(seconds * SR)
    model = stub_network(build_model(preset, n_outputs=outputs), batch, t // 512)
    if stage == "forward":
        model.eval()
        wav = torch.randn(batch, 2, t) * 0.1

        def step():
            with torch.inference_mode():
                model(wav)
    else:
        from mixitcli.train.config import FinetuneConfig, PretrainConfig
        from mixitcli.train.loop import compute_loss

        cls = PretrainConfig if stage == "pretrain" else FinetuneConfig
        config = cls(data="-", out="-", size=preset, bf16=False, mixit_solver="efficient")
        data = torch.randn(batch, 2 if stage == "pretrain" else 4, 2, t) * 0.1  # mixtures or stems
        model.train()

        def step():
            compute_loss(model, model, data, config).backward()
            model.zero_grad(set_to_none=True)

    step()  # warm-up
    cpu, wall = [], []
    for _ in range(steps):
        with Timer() as timer:
            step()
        cpu.append(timer.cpu)
        wall.append(timer.wall)
    return {
        "case": case,
        "batch": batch,
        "seconds": seconds,
        "cpu_s": statistics.median(cpu),
        "wall_s": statistics.median(wall),
        "peak_gb": round(peak_rss_gb(), 2),
        "code": str(Path(mixitcli.__file__).resolve().parents[1]),
    }


def one_argv(args, case: str) -> list[str]:
    """The arguments of one fresh process measuring one case."""
    return [
        "--cases",
        case,
        "--batch",
        str(args.batch),
        "--seconds",
        str(args.seconds),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
    ]


def paired(args, ref_tree: Path) -> list[dict]:
    print(
        f"paired: ours={REPO} vs {args.against} ({ref_tree}); threads={args.threads}, batch {args.batch}, "
        f"{args.seconds} s stereo, median of {args.steps} steps per process, {args.reps} alternating repetitions"
    )
    print(
        f"{'case':16} {'ours cpu s':>10} {'ref cpu s':>10} {'speed-up':>9} {'ratio range':>13} {'ours GB':>8} {'ref GB':>7}"
    )
    rows = []
    for case in args.cases.split(","):
        runs = alternate(__file__, one_argv(args, case), ref_tree, args.reps)
        cpu = {side: [r["cpu_s"] for r in runs[side]] for side in runs}
        ratios = [ref / ours for ours, ref in zip(cpu["ours"], cpu["ref"])]
        row = {
            "case": case,
            "batch": args.batch,
            "seconds": args.seconds,
            "ours_cpu_s": statistics.median(cpu["ours"]),
            "ref_cpu_s": statistics.median(cpu["ref"]),
            "ours_peak_gb": max(r["peak_gb"] for r in runs["ours"]),
            "ref_peak_gb": max(r["peak_gb"] for r in runs["ref"]),
            "ours_all": cpu["ours"],
            "ref_all": cpu["ref"],
        }
        row["speedup"] = row["ref_cpu_s"] / row["ours_cpu_s"]
        rows.append(row)
        print(
            f"{case:16} {row['ours_cpu_s']:10.3f} {row['ref_cpu_s']:10.3f} {row['speedup']:8.2f}x "
            f"{min(ratios):5.2f}-{max(ratios):5.2f}x {row['ours_peak_gb']:8.2f} {row['ref_peak_gb']:7.2f}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each example")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process (the median is kept)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--against", default=None, metavar="REF", help="paired mode: a git ref or checkout folder")
    parser.add_argument("--reps", type=int, default=5, help="paired mode: repetitions of each side")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = set(args.cases.split(",")) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; choose from {', '.join(CASES)}")
    if args.one:
        set_up_process("mixit")
        print(json.dumps(measure(args.cases, args.batch, args.seconds, args.steps, args.threads)))
        return
    if args.against:
        tmp = Path(tempfile.mkdtemp(prefix="mixit-bench-ref-"))
        try:
            results = paired(args, export_ref(args.against, tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(
            f"ours={REPO}; threads={args.threads}, batch {args.batch}, {args.seconds} s stereo, median of {args.steps} steps"
        )
        print(f"{'case':16} {'cpu s':>8} {'wall s':>8} {'peak GB':>8}")
        results = [run_in(__file__, one_argv(args, case), REPO) for case in args.cases.split(",")]
        for r in results:
            print(f"{r['case']:16} {r['cpu_s']:8.3f} {r['wall_s']:8.3f} {r['peak_gb']:8.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
