"""Attention with dropout on CPU: CPU seconds of the forward pass and of forward + backward, per shape.

Times ``mixitcli.model.attention.attention(q, k, v, dropout_p=P)`` and its backward pass on
random inputs laid out as ``SelfAttention`` makes them (q, k, v: (N, h, s, dh) views of one
(N, s, 3, h, dh) tensor). Each repetition is a fresh process, set up as the ``mixit`` command
sets itself up (glibc keeps freed memory), with ``torch.set_num_threads(--threads)``: one
warm-up call, then ``--calls`` timed ones, of which it reports the median CPU time
(``time.process_time``; ``--clock wall``: elapsed time, which says more with several
threads) and its peak resident memory. The default shapes are those the tiny
and medium presets' attention sees in training on 6 s examples at batch 1 (62 bands, 516
frames): along time (N, h, s, dh) = (62, h, 516, dh), along frequency (516, h, 62, dh).

Paired mode (``--against REF``) measures this checkout and another version of the code, REF
being a git ref (exported with ``git archive``) or the path of a second checkout, alternating
one process of each per repetition. The table gives each side's median over the repetitions,
the speed-up of forward + backward (REF median / ours) and the range of the per-repetition
ratios, a measure of how noisy the machine was.

    python bench/attention.py                                      # this checkout
    python bench/attention.py --against 6d4e8a4 --reps 5           # paired, with the attention before this work
    python bench/attention.py --shapes tiny-time,4x2x300x8 --threads 2 --clock wall
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REPO, alternate, export_ref, peak_rss_gb, run_in, set_up_process  # noqa: E402

SHAPES = {
    "tiny-time": (62, 2, 516, 8),
    "tiny-freq": (516, 2, 62, 8),
    "medium-time": (62, 8, 516, 16),
    "medium-freq": (516, 8, 62, 16),
}
"""(N, h, s, dh) of each path of the tiny and medium presets, 6 s examples at batch 1."""


def parse_shape(name: str) -> tuple[int, int, int, int] | None:
    """A name of :data:`SHAPES` or ``NxHxSxD`` -> (N, h, s, dh); None if neither."""
    if name in SHAPES:
        return SHAPES[name]
    parts = name.split("x")
    if len(parts) != 4 or not all(part.isdigit() and int(part) > 0 for part in parts):
        return None
    n, h, s, dh = (int(part) for part in parts)
    return n, h, s, dh


def check(args) -> list[str]:
    """Every problem with the arguments, each with its fix."""
    problems = [
        f"--shapes: {name!r} is neither one of {', '.join(SHAPES)} nor NxHxSxD (e.g. 62x2x516x8)"
        for name in args.shapes.split(",")
        if parse_shape(name) is None
    ]
    if not 0.0 < args.p < 1.0:
        problems.append(f"--p: the dropout path needs 0 < p < 1, got {args.p}")
    problems += [
        f"--{name}: at least 1, got {getattr(args, name)}"
        for name in ("calls", "threads", "reps")
        if getattr(args, name) < 1
    ]
    return problems


def measure(shape: tuple[int, int, int, int], p: float, calls: int, threads: int, clock: str) -> dict:
    """Median seconds of ``calls`` forward and forward + backward passes, after one warm-up."""
    import torch

    import mixitcli
    from mixitcli.model.attention import attention

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    n, h, s, dh = shape
    qkv = torch.randn(n, s, 3, h, dh, requires_grad=True)
    grad = torch.randn(n, h, s, dh)
    now = time.process_time if clock == "cpu" else time.perf_counter
    forward, total = [], []
    for _ in range(calls + 1):
        t0 = now()
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (N, s, 3, h, dh) -> 3 x (N, h, s, dh)
        out = attention(q, k, v, dropout_p=p)
        t1 = now()
        torch.autograd.grad(out, qkv, grad)
        t2 = now()
        forward.append(t1 - t0)
        total.append(t2 - t0)
        del out
    return {
        "shape": list(shape),
        "forward_s": statistics.median(forward[1:]),
        "total_s": statistics.median(total[1:]),
        "peak_gb": round(peak_rss_gb(), 3),
        "code": str(Path(mixitcli.__file__).resolve().parents[1]),
    }


def one_argv(args, shape_name: str) -> list[str]:
    """The arguments of one fresh process measuring one shape."""
    return [
        "--shapes",
        shape_name,
        "--p",
        str(args.p),
        "--calls",
        str(args.calls),
        "--threads",
        str(args.threads),
        "--clock",
        args.clock,
    ]


def single(args, shapes: list[str]) -> list[dict]:
    """This checkout alone: medians over ``args.reps`` processes per shape."""
    print(
        f"ours={REPO}; threads={args.threads} p={args.p}, {args.clock} seconds, median of {args.calls} calls "
        f"per process, {args.reps} processes per shape"
    )
    print(f"{'shape':12} {'(N, h, s, dh)':20} {'fwd s':>7} {'fwd+bwd s':>10} {'peak GB':>8}")
    rows = []
    for name in shapes:
        runs = [run_in(__file__, one_argv(args, name), REPO) for _ in range(args.reps)]
        row = {
            "shape": name,
            "dims": runs[0]["shape"],
            "forward_s": statistics.median(r["forward_s"] for r in runs),
            "total_s": statistics.median(r["total_s"] for r in runs),
            "peak_gb": max(r["peak_gb"] for r in runs),
        }
        rows.append(row)
        print(
            f"{name:12} {str(tuple(row['dims'])):20} {row['forward_s']:7.3f} {row['total_s']:10.3f} {row['peak_gb']:8.2f}",
            flush=True,
        )
    return rows


def paired(args, ref_tree: Path, shapes: list[str]) -> list[dict]:
    """Alternate ours and REF ``args.reps`` times per shape; print medians and the speed-up."""
    print(
        f"paired: ours={REPO} vs {args.against} ({ref_tree}); threads={args.threads} p={args.p}, {args.clock} "
        f"seconds, median of {args.calls} calls per process, {args.reps} alternating repetitions"
    )
    print(
        f"{'shape':12} {'(N, h, s, dh)':20} {'ours fwd':>8} {'ref fwd':>8} {'ours f+b':>8} {'ref f+b':>8} "
        f"{'speed-up':>9} {'ratio range':>13} {'ours GB':>8} {'ref GB':>7}"
    )
    rows = []
    for name in shapes:
        runs = alternate(__file__, one_argv(args, name), ref_tree, args.reps)
        row = {"shape": name, "dims": runs["ours"][0]["shape"]}
        for side, values in runs.items():
            row[f"{side}_forward_s"] = statistics.median(r["forward_s"] for r in values)
            row[f"{side}_total_s"] = statistics.median(r["total_s"] for r in values)
            row[f"{side}_total_all"] = [r["total_s"] for r in values]
            row[f"{side}_peak_gb"] = max(r["peak_gb"] for r in values)
        row["speedup"] = row["ref_total_s"] / row["ours_total_s"]
        ratios = [b / a for a, b in zip(row["ours_total_all"], row["ref_total_all"])]
        rows.append(row)
        print(
            f"{name:12} {str(tuple(row['dims'])):20} {row['ours_forward_s']:8.3f} {row['ref_forward_s']:8.3f} "
            f"{row['ours_total_s']:8.3f} {row['ref_total_s']:8.3f} {row['speedup']:8.2f}x "
            f"{min(ratios):5.2f}-{max(ratios):5.2f}x {row['ours_peak_gb']:8.2f} {row['ref_peak_gb']:7.2f}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--shapes", default=",".join(SHAPES), help=f"names ({', '.join(SHAPES)}) or NxHxSxD, comma-separated"
    )
    parser.add_argument("--p", type=float, default=0.1, help="attention dropout (docs/method.md §3.5: 0.1)")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per process, after one warm-up")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--clock", choices=("cpu", "wall"), default="cpu", help="CPU time of the process, or elapsed time"
    )
    parser.add_argument("--reps", type=int, default=5, help="processes per shape (and side, in paired mode)")
    parser.add_argument(
        "--against",
        default=None,
        metavar="REF",
        help="paired mode: also measure this git ref or checkout folder, alternating (e.g. main)",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    problems = check(args)
    if problems:
        raise SystemExit("\n".join(problems))
    shapes = args.shapes.split(",")
    if args.one:
        set_up_process("mixit")
        print(json.dumps(measure(parse_shape(shapes[0]), args.p, args.calls, args.threads, args.clock)))
        return
    if args.against:
        tmp = Path(tempfile.mkdtemp(prefix="mixit-bench-ref-"))
        try:
            results = paired(args, export_ref(args.against, tmp), shapes)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        results = single(args, shapes)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
