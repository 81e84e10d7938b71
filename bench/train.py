"""Training speed and memory: optimizer steps per second and peak memory per preset and batch.

Each configuration runs in a fresh process: a few real training steps (the loop's own
``train_step``: forward, loss, backward, clipping, AdamW) on random stereo examples, the
first step not timed. MixIT pre-training (12 outputs) and supervised fine-tuning (4 outputs);
stage ``forward`` times inference instead (4 outputs, eval mode, one example of ``--seconds``).
On CUDA it also compares float32 with bf16 autocast (SDPA picks flash attention for bf16).

    python bench/train.py --presets tiny,small --batches 1,2            # CPU
    python bench/train.py --device cuda --presets medium --batches 8,32 --precisions fp32,bf16

Paired mode (``--against REF``) measures this checkout and another version of the code in
one run on one machine: REF is a git ref (exported with ``git archive`` into a temporary
folder) or the path of a second checkout. The two alternate, one fresh process per
repetition, and the table gives the median seconds per step of each, the speed-up (REF
median / ours) and the range of the per-repetition ratios, a measure of how noisy the
machine was. Figures from different runs or machines are never comparable; these are.

    python bench/train.py --against main --presets tiny --stages pretrain --batches 1 --reps 5
    python bench/train.py --against ../other-checkout --presets medium --stages forward --seconds 12

Each process is set up as the ``mixit`` command sets itself up (``--allocator mixit``: glibc keeps
freed memory, where the code has ``mixitcli.allocator``); training steps use each version's
default activation checkpointing for the preset and device unless ``--checkpointing on|off``
fixes it for both sides.
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
from _util import REPO, Timer, alternate, export_ref, peak_rss_gb, run_isolated, set_up_process  # noqa: E402

SR = 44100


def measure(
    preset: str,
    stage: str,
    batch: int,
    device: str,
    precision: str,
    steps: int,
    seconds: float,
    threads: int,
    checkpointing: str = "default",
) -> dict:
    import torch

    torch.set_num_threads(threads)
    if stage == "forward":
        return measure_forward(preset, batch, device, precision, steps, seconds)
    from mixitcli.train.config import FinetuneConfig, PretrainConfig
    from mixitcli.train.loop import Runtime, prepare_model, train_step
    from mixitcli.train.schedule import make_scheduler

    cls = PretrainConfig if stage == "pretrain" else FinetuneConfig
    fixed = {} if checkpointing == "default" else {"activation_checkpointing": checkpointing == "on"}
    config = cls(
        data="-",
        out="-",
        size=preset,
        batch_size=batch,
        bf16=precision == "bf16",
        warmup_steps=1,
        device=device,
        **fixed,
    )
    rt = Runtime(rank=0, world=1, local_rank=0, device=torch.device(device))
    model, _ = prepare_model(config)
    model = model.to(rt.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config)
    m = 2 if stage == "pretrain" else 4
    data = torch.randn(steps + 1, batch, m, 2, int(seconds * SR)) * 0.1
    batches = iter(data)
    cuda = rt.device.type == "cuda"
    train_step(model, model, batches, optimizer, scheduler, config, rt)  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with Timer() as t:
        for _ in range(steps):
            train_step(model, model, batches, optimizer, scheduler, config, rt)
        if cuda:
            torch.cuda.synchronize()
    return result(preset, stage, batch, device, precision, steps, t, cuda)


def measure_forward(preset: str, batch: int, device: str, precision: str, steps: int, seconds: float) -> dict:
    """Inference of ``batch`` examples of ``seconds`` by a 4-output model in eval mode."""
    import torch

    from mixitcli import build_model

    torch.manual_seed(0)
    model = build_model(preset, n_outputs=4).to(device).eval()
    cuda = device.startswith("cuda")
    wav = torch.randn(batch, 2, int(seconds * SR), device=device) * 0.1
    with (
        torch.inference_mode(),
        torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16"),
    ):
        model(wav[..., :SR])  # warm-up
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with Timer() as t:
            for _ in range(steps):
                model(wav)
            if cuda:
                torch.cuda.synchronize()
    return result(preset, "forward", batch, device, precision, steps, t, cuda)


def result(preset, stage, batch, device, precision, steps, t: Timer, cuda: bool) -> dict:
    import torch

    import mixitcli

    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else peak_rss_gb()
    return {
        "preset": preset,
        "stage": stage,
        "batch": batch,
        "device": device,
        "precision": precision,
        "s_per_step": round(t.wall / steps, 3),
        "cpu_s_per_step": round(t.cpu / steps, 3),
        "examples_per_s": round(batch * steps / t.wall, 2),
        "peak_gb": round(peak, 2),
        "code": str(Path(mixitcli.__file__).resolve().parents[1]),
    }


def paired(args, ref_tree: Path, configs: list[list[str]]) -> list[dict]:
    """Alternate ours and REF ``args.reps`` times per configuration; print medians and the speed-up."""
    print(
        f"paired: ours={REPO} vs {args.against} ({ref_tree}); device={args.device} threads={args.threads} "
        f"{args.seconds} s examples, {args.steps} timed steps, {args.reps} alternating repetitions"
    )
    print(
        f"{'preset':8} {'stage':9} {'batch':>5} {'prec':5} {'ours s':>8} {'ref s':>8} {'speed-up':>9} "
        f"{'ratio range':>13} {'cpu ratio':>9}"
    )
    rows = []
    for argv in configs:
        runs = alternate(__file__, argv, ref_tree, args.reps)
        wall = {s: [r["s_per_step"] for r in runs[s]] for s in runs}
        cpu = {s: [r["cpu_s_per_step"] for r in runs[s]] for s in runs}
        ratios = [b / a for a, b in zip(wall["ours"], wall["ref"])]
        row = {
            **{k: runs["ours"][0][k] for k in ("preset", "stage", "batch", "precision")},
            "ours_s": statistics.median(wall["ours"]),
            "ref_s": statistics.median(wall["ref"]),
            "ours_cpu_s": statistics.median(cpu["ours"]),
            "ref_cpu_s": statistics.median(cpu["ref"]),
            "ours_all": wall["ours"],
            "ref_all": wall["ref"],
        }
        row["speedup"] = row["ref_s"] / row["ours_s"]
        row["cpu_speedup"] = row["ref_cpu_s"] / row["ours_cpu_s"]
        rows.append(row)
        print(
            f"{row['preset']:8} {row['stage']:9} {row['batch']:>5} {row['precision']:5} {row['ours_s']:8.2f} "
            f"{row['ref_s']:8.2f} {row['speedup']:8.2f}x {min(ratios):5.2f}-{max(ratios):5.2f}x "
            f"{row['cpu_speedup']:8.2f}x",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,small,medium")
    parser.add_argument("--stages", default="pretrain,finetune", help="pretrain, finetune and/or forward")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32", help="fp32 and/or bf16 (bf16: autocast, on CUDA by default)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--against",
        default=None,
        metavar="REF",
        help="paired mode: also measure this git ref or checkout folder, alternating (e.g. main)",
    )
    parser.add_argument("--reps", type=int, default=3, help="paired mode: repetitions of each side")
    parser.add_argument(
        "--checkpointing",
        choices=("default", "on", "off"),
        default="default",
        help="activation checkpointing in training steps: each version's default for the preset "
        "and device, or on / off for both",
    )
    parser.add_argument(
        "--allocator",
        choices=("mixit", "default"),
        default="mixit",
        help="mixit: glibc keeps freed memory, as the mixit command sets it (code that predates "
        "mixitcli.allocator runs with the defaults); default: glibc's defaults on both sides",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        set_up_process(args.allocator)
        print(
            json.dumps(
                measure(
                    args.presets,
                    args.stages,
                    int(args.batches),
                    args.device,
                    args.precisions,
                    args.steps,
                    args.seconds,
                    args.threads,
                    args.checkpointing,
                )
            )
        )
        return
    configs = [
        [
            "--presets",
            preset,
            "--stages",
            stage,
            "--batches",
            batch,
            "--device",
            args.device,
            "--precisions",
            precision,
            "--steps",
            str(args.steps),
            "--seconds",
            str(args.seconds),
            "--threads",
            str(args.threads),
            "--allocator",
            args.allocator,
            "--checkpointing",
            args.checkpointing,
        ]
        for preset in args.presets.split(",")
        for stage in args.stages.split(",")
        for batch in args.batches.split(",")
        for precision in args.precisions.split(",")
    ]
    if args.against:
        tmp = Path(tempfile.mkdtemp(prefix="mixit-bench-ref-"))
        try:
            results = paired(args, export_ref(args.against, tmp), configs)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"device={args.device} threads={args.threads} {args.seconds} s examples, {args.steps} timed steps")
        print(f"{'preset':8} {'stage':9} {'batch':>5} {'prec':5} {'s/step':>8} {'ex/s':>8} {'peak GB':>8}")
        results = []
        for argv in configs:
            r = run_isolated(__file__, argv)
            results.append(r)
            label = f"{argv[1]:8} {argv[3]:9} {argv[5]:>5} {argv[9]:5}"
            if "error" in r:
                print(f"{label} error: {r['error']}", flush=True)
            else:
                print(f"{label} {r['s_per_step']:8.2f} {r['examples_per_s']:8.2f} {r['peak_gb']:8.2f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
