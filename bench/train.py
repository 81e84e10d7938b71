"""Training speed and memory: optimizer steps per second and peak memory per preset and batch.

Each configuration runs in a fresh process: a few real training steps (the loop's own
``train_step``: forward, loss, backward, clipping, AdamW) on random 6 s stereo examples, the
first step not timed. MixIT pre-training (12 outputs) and supervised fine-tuning (4 outputs).
On CUDA it also compares float32 with bf16 autocast (SDPA picks flash attention for bf16).

    python bench/train.py --presets tiny,small --batches 1,2            # CPU
    python bench/train.py --device cuda --presets medium --batches 8,32 --precisions fp32,bf16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import Timer, peak_rss_gb, run_isolated  # noqa: E402

SR = 44100


def measure(preset: str, stage: str, batch: int, device: str, precision: str, steps: int, seconds: float, threads: int) -> dict:
    import torch

    from mixitcli.train.config import FinetuneConfig, PretrainConfig
    from mixitcli.train.loop import Runtime, prepare_model, train_step
    from mixitcli.train.schedule import make_scheduler

    torch.set_num_threads(threads)
    cls = PretrainConfig if stage == "pretrain" else FinetuneConfig
    config = cls(data="-", out="-", size=preset, batch_size=batch, bf16=precision == "bf16", warmup_steps=1)
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
    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else peak_rss_gb()
    return {"preset": preset, "stage": stage, "batch": batch, "device": device, "precision": precision,
            "s_per_step": round(t.wall / steps, 3), "examples_per_s": round(batch * steps / t.wall, 2), "peak_gb": round(peak, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,small,medium")
    parser.add_argument("--stages", default="pretrain,finetune")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32", help="fp32 and/or bf16 (bf16: autocast, on CUDA by default)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.presets, args.stages, int(args.batches), args.device, args.precisions, args.steps, args.seconds, args.threads)))
        return
    print(f"device={args.device} threads={args.threads} {args.seconds} s examples, {args.steps} timed steps")
    print(f"{'preset':8} {'stage':9} {'batch':>5} {'prec':5} {'s/step':>8} {'ex/s':>8} {'peak GB':>8}")
    results = []
    for preset in args.presets.split(","):
        for stage in args.stages.split(","):
            for batch in args.batches.split(","):
                for precision in args.precisions.split(","):
                    r = run_isolated(__file__, ["--presets", preset, "--stages", stage, "--batches", batch, "--device", args.device,
                                                "--precisions", precision, "--steps", str(args.steps), "--seconds", str(args.seconds),
                                                "--threads", str(args.threads)])
                    results.append(r)
                    if "error" in r:
                        print(f"{preset:8} {stage:9} {batch:>5} {precision:5} error: {r['error']}", flush=True)
                    else:
                        print(f"{preset:8} {stage:9} {batch:>5} {precision:5} {r['s_per_step']:8.2f} {r['examples_per_s']:8.2f} {r['peak_gb']:8.2f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
