"""The GPU path in one run (issue 14): `make gpu-check`, or

    python bench/gpu_check.py                              # CUDA, medium model, about 5-8 minutes
    python bench/gpu_check.py --device cpu --preset tiny   # the same code at tiny scale (no GPU)

A GPU machine is lent rarely and briefly, so this script checks everything the CUDA path
needs in one run and writes one JSON report ($OUT/gpu_check.json when $OUT is set, else
--report). Items, in the issue's order:

1. model       medium, 4 and 12 outputs, 6 s input: CUDA float32 vs CPU float32 (SNR dB), bf16
               autocast vs float32 (SNR dB), and which SDPA kernel runs in training (dropout
               0.1, bf16) and in inference (float32 and bf16).
2. training    `mixit make-demo-data`, `prepare-fma`, `prepare-musdb`, then 30 steps of
               `mixit pretrain` (12 outputs, MixIT, 6 s crops, bf16, the recipe's per-GPU batch,
               halved until it fits) and of `mixit finetune`: s/step, examples/s, peak memory,
               finite losses; an overfit check on one fixed batch (the loop's train_step);
               5 steps, then `--resume` for 5 more, against 10 uninterrupted steps (a batch of 2
               per device, so that the comparison costs little GPU time).
3. ddp         `torchrun --nproc_per_node=N` (N = the GPUs present; 2 CPU ranks on gloo without
               CUDA) for 10 steps: ranks in sync, one checkpoint written by rank 0.
4. separation  `mixit separate` of a 60 s song with the medium model on the device: real-time
               factor, peak memory, stems vs the CPU float32 stems (SNR dB); the same with --bf16.
5. throughput  FLOPs of a training step (torch.utils.flop_counter, as the README's compute
               table) over the measured s/step = achieved TFLOP/s, and from it the GPU-hours
               of Tables 1-3 on this GPU.
extras         (CUDA only by default) `mixit eval --device cuda` on the generated test song, and
               bench/model.py, train.py and separate.py with --device cuda (their JSON figures).

The CLI commands run in this process through the real Typer app (`mixitcli.cli.app`), so
their peak memory can be read and reset (torch.cuda.max_memory_allocated on CUDA, VmHWM on
the CPU); DDP runs under torchrun as its own processes. Every check is guarded: a failure is
recorded with its error and the rest still runs. --budget-s bounds the whole run, and each
check may use only its share of it (30 % for the pre-training run, 10-20 % for the others):
a check still running then is stopped, and the ones left when the budget is spent are
skipped, each with its reason. The report is rewritten after every check, so a killed run leaves what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    REPO,
    BudgetExceeded,
    CheckFailed,
    Context,
    Report,
    cli,
    environment,
    free_port,
    is_oom,
    read_metrics,
    run_process,
    sig,
    snr_db,
    step_figures,
)
from _util import Timer  # noqa: E402

SR = 44100

# README "Compute": forward TFLOP per 6 s example (PyTorch's FLOP counter); used for the presets
# not counted in this run. A step costs 3 forwards (forward + backward) plus one more with
# activation checkpointing.
README_FORWARD_TFLOP = {
    ("small", 12): 0.39,
    ("medium", 12): 1.09,
    ("large", 12): 3.19,
    ("small", 4): 0.37,
    ("medium", 4): 1.05,
    ("large", 4): 3.13,
}
README_ASSUMED_TFLOPS = 100.0
# The training runs behind each table (recipes/tables.mk): (stage, recipe name); the preset is
# the recipe name's first word.
TABLE_RUNS = {
    "table1": [("pretrain", p) for p in ("small", "medium", "large")]
    + [("finetune", p) for p in ("small", "medium", "large")] * 2,
    "table2": [("freeze-finetune", "medium")] * 2,  # shares Table 1's medium pre-training
    "table3": [("pretrain", f"medium-fma-{s}") for s in ("small", "medium", "full")] + [("finetune", "medium")] * 3,
}


ISSUE_ORDER = (
    "model",
    "training",
    "ddp",
    "separation",
    "throughput",
    "extras",
)  # extras: eval and bench/*.py with --device


@dataclass
class Scale:
    """Sizes of the checks. "paper": the issue's figures; "tiny": the same code in ~1 minute on a CPU."""

    crop_s: float  # training crops and model inputs
    pretrain_batch: int  # per device; halved on out-of-memory
    finetune_batch: int
    small_batch: int  # per device, for the resume and DDP checks
    steps: int  # CLI training steps (and overfit steps)
    resume_steps: int  # steps before and after the interruption
    ddp_steps: int
    model_input_s: float  # item 1
    song_s: float  # item 4
    data_s: float  # length of the generated songs
    data_songs: int  # unlabeled songs


SCALES = {
    # Per-GPU batches of the official recipes (docs/method.md §5): 16 MoMs (their 32 clips,
    # paired), 4 fine-tuning examples.
    "paper": Scale(
        crop_s=6.0,
        pretrain_batch=16,
        finetune_batch=4,
        small_batch=2,
        steps=30,
        resume_steps=5,
        ddp_steps=10,
        model_input_s=6.0,
        song_s=60.0,
        data_s=20.0,
        data_songs=8,
    ),
    # Tiny: enough steps to time and to see the loss fall; 4 songs give 2 training and 2
    # validation tracks with --valid-fraction 0.5 (the split is a hash of the track id).
    "tiny": Scale(
        crop_s=0.5,
        pretrain_batch=2,
        finetune_batch=2,
        small_batch=1,
        steps=6,
        resume_steps=2,
        ddp_steps=3,
        model_input_s=2.0,
        song_s=12.0,
        data_s=11.0,
        data_songs=4,
    ),
}


# ----------------------------------------------------------------------------- 1. model

SDPA_KERNELS = (  # profiler op name (prefix) -> kernel
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "flash (CPU)"),
    ("aten::_scaled_dot_product_flash_attention", "flash"),
    ("aten::_scaled_dot_product_efficient_attention", "memory-efficient"),
    ("aten::_scaled_dot_product_cudnn_attention", "cudnn"),
    ("aten::_scaled_dot_product_attention_math", "math"),
    ("aten::_scaled_dot_product_fused_attention_overrideable", "overrideable"),
    ("_DropoutAttention", "mixit chunked dropout attention (CPU)"),
)


def kernels_seen(fn) -> dict:
    """Run ``fn`` under the profiler (op names only); which attention kernels ran, forward and backward."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.key for e in prof.key_averages()}
    found = {"forward": set(), "backward": set()}
    for name in names:
        for prefix, kernel in SDPA_KERNELS:
            if name.startswith(prefix):
                found["backward" if "backward" in name.lower() else "forward"].add(kernel)
                break
    return {k: sorted(v) for k, v in found.items() if v or k == "forward"}


def check_outputs(ctx: Context, n_outputs: int) -> dict:
    """One model: device float32 vs CPU float32, bf16 autocast vs float32 (same device)."""
    import torch

    from mixitcli import build_model

    torch.manual_seed(0)
    model = build_model(ctx.args.preset, n_outputs=n_outputs).eval()
    x = torch.randn(1, 2, int(ctx.scale.model_input_s * SR), generator=torch.Generator().manual_seed(1)) * 0.1
    out = {"preset": ctx.args.preset, "n_outputs": n_outputs, "input_s": ctx.scale.model_input_s, "problems": []}
    with torch.inference_mode():
        with Timer() as t:
            ref = model(x)
        out["cpu_fp32_s"] = round(t.wall, 3)
        if ctx.cuda:
            model.to(ctx.device)
            xd = x.to(ctx.device)
            model(xd)  # warm-up
            ctx.sync()
            with Timer() as t:
                y = model(xd)
                ctx.sync()
            out["device_fp32_s"] = round(t.wall, 4)
            out["snr_device_vs_cpu_db"] = snr_db(ref, y.cpu())
            out["max_abs_diff_device_vs_cpu"] = float((ref - y.cpu()).abs().max())
        else:
            y, xd = ref, x
            out["snr_device_vs_cpu_db"] = None
            out["note"] = "the device is the CPU: no CUDA vs CPU comparison"
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
            model(xd)  # warm-up
            ctx.sync()
            with Timer() as t:
                y16 = model(xd)
                ctx.sync()
        out["device_bf16_s"] = round(t.wall, 4)
        out["snr_bf16_vs_fp32_db"] = snr_db(y.float().cpu(), y16.float().cpu())
    if not torch.isfinite(y16).all():
        out["problems"].append("bf16 output is not finite")
    if ctx.cuda and out["snr_device_vs_cpu_db"] < ctx.args.min_snr_fp32:
        out["problems"].append(f"CUDA vs CPU float32 SNR {out['snr_device_vs_cpu_db']} dB < {ctx.args.min_snr_fp32}")
    if out["snr_bf16_vs_fp32_db"] < ctx.args.min_snr_bf16:
        out["problems"].append(f"bf16 vs float32 SNR {out['snr_bf16_vs_fp32_db']} dB < {ctx.args.min_snr_bf16}")
    return out


def check_sdpa(ctx: Context) -> dict:
    """Which attention kernel runs: a training step as the loop makes it (12 outputs, dropout
    0.1, MixIT loss, bf16 autocast on CUDA, checkpointing), and inference in float32 and bf16."""
    import torch

    from mixitcli import build_model
    from mixitcli.train.config import PretrainConfig
    from mixitcli.train.loop import compute_loss

    torch.manual_seed(0)
    model = build_model(ctx.args.preset, n_outputs=12, dropout=0.1).to(ctx.device)
    model.set_activation_checkpointing(ctx.checkpointing)
    config = PretrainConfig(data="-", out="-", size=ctx.args.preset, bf16=ctx.bf16)
    t = int(ctx.scale.crop_s * SR)
    batch = torch.randn(1, 2, 2, t, device=ctx.device) * 0.1  # (b, m, c, t): one mixture of mixtures
    x = batch.sum(1)

    def train_step():
        model.train()
        compute_loss(model, model, batch, config).backward()
        ctx.sync()

    def infer(bf16: bool):
        def run():
            model.eval()
            with torch.inference_mode(), torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=bf16):
                model(x)
            ctx.sync()

        return run

    train_step()  # warm-up outside the profiler
    out = {
        "train": {"bf16": ctx.bf16, "dropout": 0.1, "checkpointing": ctx.checkpointing, **kernels_seen(train_step)},
        "inference_fp32": kernels_seen(infer(False)),
        "inference_bf16": kernels_seen(infer(True)),
        "problems": [],
    }
    if ctx.cuda:
        out["sdp_enabled"] = {
            "flash": torch.backends.cuda.flash_sdp_enabled(),
            "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "math": torch.backends.cuda.math_sdp_enabled(),
            "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
        }
    for key in ("train", "inference_fp32", "inference_bf16"):
        if not out[key]["forward"]:
            out["problems"].append(f"{key}: no attention kernel seen by the profiler")
    return out


def item_model(ctx: Context, report: Report) -> None:
    for n in (4, 12):
        report.check("model", f"outputs_{n}", lambda n=n: check_outputs(ctx, n))
    report.check("model", "sdpa_kernels", lambda: check_sdpa(ctx))


# ----------------------------------------------------------------------------- 2. training


def check_data(ctx: Context) -> dict:
    """Songs from `mixit make-demo-data`, prepared by `prepare-fma` and `prepare-musdb`."""
    s, w = ctx.scale, ctx.args.workers
    data, prep = ctx.work / "data", ctx.work / "prep"
    runs = [
        cli(
            ctx,
            "make-demo-data",
            data,
            "--songs",
            s.data_songs,
            "--musdb-train",
            3,
            "--musdb-valid",
            1,
            "--musdb-test",
            1,
            "--seconds",
            s.data_s,
            "--no-progress",
        ),
        cli(
            ctx,
            "prepare-fma",
            "--audio-dir",
            data / "unlabeled",
            "--out",
            prep / "fma",
            "--valid-fraction",
            0.5,
            "--workers",
            w,
            "--no-progress",
        ),
        cli(ctx, "prepare-musdb", data / "musdb", "--out", prep / "musdb", "--workers", w, "--no-progress"),
    ]
    ctx.shared.update(fma=prep / "fma", musdb=prep / "musdb")
    return {"songs": s.data_songs, "song_s": s.data_s, "wall_s": [r["wall_s"] for r in runs]}


def train_args(ctx: Context, stage: str, run: Path, batch: int, steps: int) -> list:
    data = ctx.shared["fma"] if stage == "pretrain" else ctx.shared["musdb"]
    args = [
        stage,
        "--config",
        ctx.recipe(stage),
        "--data",
        data,
        "--out",
        run,
        "--batch-size",
        batch,
        "--segment-seconds",
        ctx.scale.crop_s,
        "--epochs",
        1,
        "--steps-per-epoch",
        steps,
        "--device",
        ctx.args.device,
        "--bf16" if ctx.bf16 else "--no-bf16",
        "--checkpointing" if ctx.checkpointing else "--no-checkpointing",
        "--workers",
        ctx.args.workers,
        "--log-every",
        1,
        "--save-every",
        0,
        "--keep-best",
        1,
    ]
    return args + (["--valid-size", batch] if stage == "pretrain" else [])


def check_cli_training(ctx: Context, stage: str, batch: int) -> dict:
    """`mixit STAGE` for --steps steps; on out-of-memory the batch is halved and the run repeated."""
    steps, tried = ctx.scale.steps, []
    while True:
        run = ctx.work / "runs" / f"{stage}-b{batch}"
        tried.append(batch)
        try:
            result = cli(ctx, *train_args(ctx, stage, run, batch, steps))
            break
        except BudgetExceeded:  # out of time: the steps logged so far still give the figures
            result = {"wall_s": None, "peak_gb": ctx.peak_gb(), "stopped": "time cap"}
            break
        except Exception as e:  # noqa: BLE001 - only out-of-memory is retried
            if not (ctx.cuda and is_oom(e) and batch > 1):
                raise
            batch //= 2
            gc.collect()
    figures = step_figures(read_metrics(run), batch)
    out = {
        "batch_per_device": batch,
        "batches_tried": tried,
        "steps": steps,
        "crop_s": ctx.scale.crop_s,
        "bf16": ctx.bf16,
        "checkpointing": ctx.checkpointing,
        "wall_s": result["wall_s"],
        "peak_gb": result["peak_gb"],
        "peak_kind": "torch.cuda.max_memory_allocated" if ctx.cuda else "process VmHWM",
        **figures,
        "run": run,
        "problems": [],
    }
    if result.get("stopped"):
        out["stopped"] = f"by the time cap after {figures['steps_logged']} of {steps} steps (figures from those)"
    if not figures["losses_finite"] or figures["steps_logged"] != steps:
        out["problems"].append(
            f"{figures['steps_logged']} of {steps} steps logged; losses finite: {figures['losses_finite']}"
        )
    if "s_per_step" not in figures:
        out["problems"].append("too few steps logged to time (need 3)")
    ctx.shared[stage] = out
    return out


def check_overfit(ctx: Context) -> dict:
    """The loop's own train_step on one fixed batch of mixtures of mixtures: the loss must fall."""
    import itertools

    import torch

    from mixitcli.data.samplers import MixtureOfMixtures
    from mixitcli.train.config import build_config
    from mixitcli.train.loop import Runtime, prepare_model, train_step
    from mixitcli.train.schedule import make_scheduler

    b, steps = ctx.scale.small_batch, ctx.scale.steps
    config = build_config(
        "pretrain",
        recipe=ctx.recipe("pretrain"),
        overrides={
            "data": str(ctx.shared["fma"]),
            "out": "-",
            "batch_size": b,
            "segment_seconds": ctx.scale.crop_s,
            "warmup_steps": 1,
            "bf16": ctx.bf16,
            "activation_checkpointing": ctx.checkpointing,
        },
    )
    rt = Runtime(rank=0, world=1, local_rank=0, device=ctx.device)
    model, _ = prepare_model(config)
    model.to(ctx.device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    scheduler = make_scheduler(optimizer, config)
    ds = MixtureOfMixtures(config.data, split="train", segment_seconds=config.segment_seconds, seed=0)
    fixed = torch.stack([ds[i] for i in range(b)])  # (b, m, c, t)
    batches = itertools.repeat(fixed)
    losses = [
        float(train_step(model, model, batches, optimizer, scheduler, config, rt)["loss/train"]) for _ in range(steps)
    ]
    tail = sum(losses[-3:]) / 3
    out = {
        "batch": b,
        "steps": steps,
        "lr": config.lr,
        "loss_first": round(losses[0], 3),
        "loss_last3_mean": round(tail, 3),
        "drop_db": round(losses[0] - tail, 3),
        "losses": [round(x, 3) for x in losses],
        "problems": [],
    }
    if not all(math.isfinite(x) for x in losses):
        out["problems"].append("non-finite loss")
    elif losses[0] - tail < ctx.args.min_overfit_drop:
        out["problems"].append(
            f"loss fell by {losses[0] - tail:.2f} dB < {ctx.args.min_overfit_drop} dB in {steps} steps on one batch"
        )
    return out


def check_resume(ctx: Context) -> dict:
    """K steps, then `--resume` for K more, against 2K uninterrupted steps: losses and weights."""
    from mixitcli.model.checkpoints import load_checkpoint

    k, b = ctx.scale.resume_steps, ctx.scale.small_batch
    split, whole = ctx.work / "runs" / "resume-split", ctx.work / "runs" / "resume-whole"
    cli(ctx, *train_args(ctx, "pretrain", split, b, 2 * k), "--max-steps", k)
    cli(ctx, "pretrain", "--out", split, "--resume", "--max-steps", 2 * k)
    cli(ctx, *train_args(ctx, "pretrain", whole, b, 2 * k))
    losses = [
        {r["step"]: r["loss/train"] for r in read_metrics(run) if "loss/train" in r and r["step"] > k}
        for run in (split, whole)
    ]
    steps = sorted(set(losses[0]) & set(losses[1]))
    loss_diff = max((abs(losses[0][s] - losses[1][s]) for s in steps), default=float("nan"))
    weights = [load_checkpoint(run / "checkpoints" / "last.pt")["model"]["state_dict"] for run in (split, whole)]
    weight_diff = max(float((weights[0][n].double() - weights[1][n].double()).abs().max()) for n in weights[1])
    out = {
        "steps_before": k,
        "steps_after": k,
        "batch": b,
        "steps_compared": steps,
        "max_loss_diff": loss_diff,
        "max_weight_diff": weight_diff,
        "bitwise_equal": loss_diff == 0.0 and weight_diff == 0.0,
        "final_step": load_checkpoint(split / "checkpoints" / "last.pt")["step"],
        "problems": [],
    }
    # CUDA kernels with atomics (attention and convolution backward) are not bitwise repeatable.
    tol = 1e-2 * max(abs(v) for v in losses[1].values()) if ctx.cuda and losses[1] else 0.0
    out["equal"] = len(steps) == k and loss_diff <= tol and (weight_diff == 0.0 or ctx.cuda)
    if out["final_step"] != 2 * k or len(steps) != k:
        out["problems"].append(
            f"the resumed run ended at step {out['final_step']} with {len(steps)} of {k} steps to compare"
        )
    elif not out["equal"]:
        out["problems"].append(
            f"resumed run differs from the uninterrupted one (loss by {loss_diff:.3g}, weights by {weight_diff:.3g})"
        )
    return out


def item_training(ctx: Context, report: Report) -> None:
    if report.check("training", "data", lambda: check_data(ctx), cap=0.15) is None:
        report.skip(
            "training", ["pretrain", "finetune", "overfit", "resume"], "no prepared data (training.data failed)"
        )
        return
    report.check(
        "training",
        "pretrain",
        lambda: check_cli_training(ctx, "pretrain", ctx.args.pretrain_batch or ctx.scale.pretrain_batch),
        cap=0.3,
    )
    report.check(
        "training",
        "finetune",
        lambda: check_cli_training(ctx, "finetune", ctx.args.finetune_batch or ctx.scale.finetune_batch),
        cap=0.15,
    )
    report.check("training", "overfit", lambda: check_overfit(ctx))
    report.check("training", "resume", lambda: check_resume(ctx), cap=0.15)


# ----------------------------------------------------------------------------- 3. DDP


def nccl_probe(ctx: Context) -> dict:
    """One-rank NCCL group in this process: an all-reduce on the GPU (the loop never starts NCCL
    with a single rank, so this is the only NCCL call a one-GPU machine can make)."""
    import torch
    import torch.distributed as dist

    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1, device_id=ctx.device
    )
    try:
        x = torch.ones(4, device=ctx.device)
        dist.all_reduce(x)
        ctx.sync()
        return {"nccl_all_reduce": bool(torch.equal(x, torch.ones(4, device=ctx.device)))}
    finally:
        dist.destroy_process_group()


def check_ddp(ctx: Context, report: Report) -> dict:
    """`torchrun --nproc_per_node=N -m mixitcli pretrain` with a weight check on every step."""
    import torch
    import yaml

    from mixitcli.model.checkpoints import load_checkpoint

    n = max(torch.cuda.device_count(), 1) if ctx.cuda else 2
    steps, b = ctx.scale.ddp_steps, ctx.scale.small_batch * n
    recipe = yaml.safe_load(ctx.recipe("pretrain").read_text())
    recipe.update(check_sync_every=1)  # not a CLI option: every step's weights are compared across ranks
    recipe_path = ctx.work / "ddp-recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    run = ctx.work / "runs" / "ddp"
    args = train_args(ctx, "pretrain", run, b, steps)
    args[args.index("--config") + 1] = recipe_path
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(n),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "mixitcli",
        *map(str, args),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if ctx.args.threads:
        env["OMP_NUM_THREADS"] = str(ctx.args.threads)
    with Timer() as t:
        proc = run_process(cmd, timeout=max(report.budget_s - report.elapsed() - 2, 1), env=env)
    if proc.returncode != 0:
        raise CheckFailed(f"torchrun exited {proc.returncode}: {proc.stderr[-2000:].strip()}")
    records = read_metrics(run)
    spreads = [r["dist/param_spread"] for r in records if "dist/param_spread" in r]
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    header = next((line.strip() for line in proc.stderr.splitlines() if "global batch" in line), "")
    out = {
        "nproc_per_node": n,
        "backend": "nccl" if ctx.cuda else "gloo",
        "world_size": n,
        "steps": steps,
        "global_batch": b,
        "wall_s": round(t.wall, 1),
        "header": header,
        **step_figures(records, b),
        "param_spread": spreads,
        "in_sync": n == 1 or (len(spreads) == steps and all(s == 0.0 for s in spreads)),
        "checkpoint_files": files,
        "checkpoint_step": ckpt["step"],
        "rng_states_in_checkpoint": len(ckpt["rng"]) if isinstance(ckpt["rng"], list) else 1,
        "problems": [],
    }
    # One writer: exactly one last.pt, one best checkpoint (keep-best 1) and best.json, no
    # temporary files, holding the RNG state of every rank (gathered, then written by rank 0).
    written_once = (
        files.count("last.pt") == 1
        and len([f for f in files if f.startswith("best-")]) == 1
        and "best.json" in files
        and len(files) == 3
        and out["rng_states_in_checkpoint"] == n
    )
    out["checkpoint_written_once"] = written_once
    if n == 1:
        out["note"] = (
            "one device: torchrun runs a single rank and the loop uses no process group; "
            "cross-rank sync and NCCL collectives need at least 2 GPUs"
        )
        if ctx.cuda:
            out.update(nccl_probe(ctx))
    if not out["in_sync"]:
        out["problems"].append(f"ranks out of sync or not checked every step: {spreads}")
    if not written_once:
        out["problems"].append(f"checkpoint folder {files} with {out['rng_states_in_checkpoint']} rank RNG state(s)")
    if ckpt["step"] != steps or not out["losses_finite"]:
        out["problems"].append(f"ended at step {ckpt['step']} of {steps}; losses finite: {out['losses_finite']}")
    return out


def item_ddp(ctx: Context, report: Report) -> None:
    if "fma" not in ctx.shared:
        report.skip("ddp", ["torchrun"], "no prepared data (training.data did not run or failed)")
        return
    report.check("ddp", "torchrun", lambda: check_ddp(ctx, report), cap=0.15, min_s=20)


# ----------------------------------------------------------------------------- 4. separation


def check_separation(ctx: Context) -> dict:
    """`mixit separate` of one song on the device (float32, twice: cold and warm; then --bf16)
    and on the CPU in float32 (the reference); the stems are compared as SNR in dB."""
    import soundfile as sf
    import torch

    from mixitcli import build_model
    from mixitcli.model import model_to_dict
    from mixitcli.train.checkpoint import atomic_save

    song_dir = ctx.work / "song"
    cli(
        ctx,
        "make-demo-data",
        song_dir,
        "--songs",
        0,
        "--musdb-train",
        0,
        "--musdb-test",
        1,
        "--seconds",
        ctx.scale.song_s,
        "--no-progress",
    )
    song = next((song_dir / "musdb" / "test").glob("*/mixture.wav"))
    torch.manual_seed(0)  # random weights: speed and numerics do not depend on training
    model_path = ctx.work / f"{ctx.args.preset}-4.pt"
    atomic_save(model_to_dict(build_model(ctx.args.preset, n_outputs=4)), model_path)

    def separate(name: str, device: str, *extra) -> dict:
        out = ctx.work / "stems" / name
        result = cli(
            ctx,
            "separate",
            song,
            "--out",
            out,
            "--model",
            model_path,
            "--device",
            device,
            "--bits",
            "float",
            "--filename",
            "{stem}.{ext}",
            *extra,
        )
        stems = {p.stem: sf.read(p, dtype="float32")[0] for p in sorted(out.glob("*.wav"))}
        return {
            "wall_s": result["wall_s"],
            "rtf": round(result["wall_s"] / ctx.scale.song_s, 4),
            "peak_gb": result["peak_gb"],
            "stems": stems,
        }

    def compare(run: dict, ref: dict) -> dict:
        per_stem = {s: snr_db(ref["stems"][s], run["stems"][s]) for s in ref["stems"]}
        return {"snr_vs_cpu_fp32_db": per_stem, "snr_min_db": min(per_stem.values())}

    runs = {"cpu_fp32": separate("cpu_fp32", "cpu", "--precision", "fp32")}  # the default, auto, is bf16 on some CPUs
    if ctx.cuda:
        runs["device_fp32_cold"] = separate("device_fp32_cold", "cuda", "--precision", "fp32")
        runs["device_fp32"] = separate("device_fp32", "cuda", "--precision", "fp32")
    runs["device_bf16"] = separate("device_bf16", ctx.args.device, "--bf16")
    ref = runs["cpu_fp32"]
    out = {
        "preset": ctx.args.preset,
        "song_s": ctx.scale.song_s,
        "stems": sorted(ref["stems"]),
        "problems": [],
        "rtf_note": "wall time of the whole command (model load included) / song length",
    }
    for name, run in runs.items():
        out[name] = {k: v for k, v in run.items() if k != "stems"}
        if name != "cpu_fp32":
            out[name].update(compare(run, ref))
        if sorted(run["stems"]) != out["stems"] or not all(
            len(s) == len(ref["stems"]["bass"]) for s in run["stems"].values()
        ):
            out["problems"].append(f"{name}: stems or their lengths differ from the CPU run's")
    if not ctx.cuda:
        out["device_fp32"] = {"note": "the device is the CPU: the reference run is the device run"}
    bars = {"device_fp32": ctx.args.min_snr_fp32, "device_bf16": ctx.args.min_snr_bf16}
    for name, bar in bars.items():
        snr = out[name].get("snr_min_db")
        if snr is not None and snr < bar:
            out["problems"].append(f"{name}: stems {snr} dB from the CPU float32 stems (< {bar} dB)")
    return out


def item_separation(ctx: Context, report: Report) -> None:
    report.check("separation", "song", lambda: check_separation(ctx), cap=0.2, min_s=15)


# ----------------------------------------------------------------------------- 5. throughput


def count_flops(
    ctx: Context, preset: str, n_outputs: int, seconds: float, *, step: bool = False, sdpa: list | None = None
) -> float:
    """FLOPs (torch.utils.flop_counter, as the README) of one example's forward, or with
    ``step`` of a whole training step (forward, MixIT/SNR loss, backward, checkpoint recompute).
    The counter has formulas for the CUDA attention kernels but not for SDPA's CPU kernel, so
    the README's CPU count leaves attention out; ``sdpa`` (a list) receives the attention part."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mixitcli import build_model

    model = build_model(preset, n_outputs=n_outputs).to(ctx.device)
    x = torch.randn(1, 2, int(seconds * SR), device=ctx.device) * 0.1
    with FlopCounterMode(display=False) as counter:
        if step:
            model.train().set_activation_checkpointing(ctx.checkpointing)
            model(x).square().mean().backward()
        else:
            with torch.no_grad():
                model.eval()(x)
    if sdpa is not None:
        sdpa.append(
            float(sum(n for op, n in counter.get_flop_counts().get("Global", {}).items() if "attention" in str(op)))
        )
    return float(counter.get_total_flops())


def check_throughput(ctx: Context) -> dict:
    from mixitcli.train.config import build_config

    measured = ctx.shared.get("pretrain")
    if not measured or "s_per_step" not in measured:
        raise CheckFailed("needs the timed pre-training steps of training.pretrain, which did not run")
    crop, batch = measured["crop_s"], measured["batch_per_device"]
    passes = 3 + (1 if measured["checkpointing"] else 0)  # forward + backward (2x), + the recompute
    attention: list = []
    fwd = count_flops(ctx, ctx.args.preset, 12, crop, sdpa=attention)
    counted_step = count_flops(ctx, ctx.args.preset, 12, crop, step=True)
    achieved = passes * fwd * batch / measured["s_per_step"] / 1e12
    out = {
        "preset": ctx.args.preset,
        "crop_s": crop,
        "batch_per_device": batch,
        "s_per_step": measured["s_per_step"],
        "forward_tflop_per_example": sig(fwd / 1e12),
        "forward_tflop_attention_part": sig(attention[0] / 1e12),
        "passes_per_step": passes,
        "step_tflop_counted_per_example": sig(counted_step / 1e12),
        "counted_over_forward": round(counted_step / fwd, 2),
        "achieved_tflops": sig(achieved),
        "problems": [],
    }
    if (ctx.args.preset, 12) in README_FORWARD_TFLOP and crop == 6.0:
        # the README counted on the CPU, where attention is not counted: compare without it
        out["readme_forward_tflop"] = README_FORWARD_TFLOP[(ctx.args.preset, 12)]
        out["forward_tflop_without_attention"] = sig((fwd - attention[0]) / 1e12)
    fine = ctx.shared.get("finetune")
    if fine and "s_per_step" in fine:
        fwd4 = count_flops(ctx, ctx.args.preset, 4, fine["crop_s"])
        out["finetune_achieved_tflops"] = sig(passes * fwd4 * fine["batch_per_device"] / fine["s_per_step"] / 1e12)

    # Forward FLOPs per 6 s example of the presets behind Tables 1-3: counted here, or the README's.
    per_example = {}
    for preset in ("small", "medium", "large"):
        for n in (4, 12):
            if preset in ctx.args.count_presets:
                per_example[(preset, n)] = (count_flops(ctx, preset, n, 6.0) / 1e12, "counted")
            else:
                per_example[(preset, n)] = (README_FORWARD_TFLOP[(preset, n)], "README")
    tables = {}
    for table, runs in TABLE_RUNS.items():
        total = 0.0
        for stage, recipe in runs:
            preset = recipe.split("-")[0]
            cfg = build_config(
                stage, recipe=REPO / "recipes" / stage / f"{recipe}.yaml", overrides={"data": "-", "out": "-"}
            )
            examples = cfg.total_steps * cfg.batch_size
            total += (
                examples
                * (3 + int(cfg.activation_checkpointing is not False))
                * per_example[(preset, cfg.n_outputs)][0]
                * 1e12
            )
        tables[table] = {
            "runs": len(runs),
            "eflop": round(total / 1e18, 1),
            "gpu_hours_this_gpu": round(total / (achieved * 1e12) / 3600),
            f"gpu_hours_at_{README_ASSUMED_TFLOPS:.0f}_tflops": round(total / (README_ASSUMED_TFLOPS * 1e12) / 3600),
        }
    out["forward_tflop_6s"] = {f"{p}/{n}": {"tflop": sig(v), "source": s} for (p, n), (v, s) in per_example.items()}
    out["tables"] = tables
    out["total_gpu_hours_this_gpu"] = sum(t["gpu_hours_this_gpu"] for t in tables.values())
    if not ctx.cuda or ctx.args.preset != "medium" or crop != 6.0:
        out["note"] = (
            "not the paper's configuration (medium, 6 s crops, CUDA): the GPU-hours only exercise the arithmetic"
        )
    if not math.isfinite(achieved) or achieved <= 0:
        out["problems"].append(f"achieved TFLOP/s is {achieved}")
    return out


def item_throughput(ctx: Context, report: Report) -> None:
    report.check("throughput", "flops", lambda: check_throughput(ctx))


# ----------------------------------------------------------------------------- extras


def check_eval(ctx: Context) -> dict:
    """`mixit eval --model M --device D` on the generated test song (separation + museval)."""
    if "fma" not in ctx.shared or not (ctx.work / f"{ctx.args.preset}-4.pt").is_file():
        raise CheckFailed("needs the generated data (training.data) and the model file of separation.song")
    result = cli(
        ctx,
        "eval",
        "--musdb",
        ctx.work / "data" / "musdb",
        "--model",
        ctx.work / f"{ctx.args.preset}-4.pt",
        "--out",
        ctx.work / "eval",
        "--subset",
        "test",
        "--workers",
        0,
        "--device",
        ctx.args.device,
    )
    summary = json.loads((ctx.work / "eval" / "summary.json").read_text())
    out = {
        "wall_s": result["wall_s"],
        "peak_gb": result["peak_gb"],
        "tracks": summary["tracks"],
        "csdr_average": summary["csdr"]["average"],
        "usdr_average": summary["usdr"]["average"],
        "problems": [],
    }
    if summary["tracks"] != 1 or not all(math.isfinite(out[k]) for k in ("csdr_average", "usdr_average")):
        out["problems"].append(
            f"{summary['tracks']} track(s) scored; cSDR {out['csdr_average']}, uSDR {out['usdr_average']}"
        )
    return out


def check_bench_scripts(ctx: Context, report: Report) -> dict:
    """bench/model.py, train.py and separate.py with --device: their own figures, as JSON."""
    p, d = ctx.args.preset, ctx.args.device
    scripts = {
        "model": ["bench/model.py", "--presets", p, "--device", d, "--modes", "forward,forward-bf16,train-dropout"],
        "train": [
            "bench/train.py",
            "--presets",
            p,
            "--device",
            d,
            "--batches",
            str(ctx.scale.finetune_batch),
            "--precisions",
            "fp32,bf16",
            "--steps",
            "2",
        ],
        "separate": [
            "bench/separate.py",
            "--presets",
            p,
            "--device",
            d,
            "--seconds",
            str(int(ctx.scale.song_s)),
            "--bf16",
        ],
    }
    out = {"problems": []}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    for name, cmd in scripts.items():
        target = ctx.work / f"bench-{name}.json"
        try:
            proc = run_process(
                [sys.executable, *cmd, "--json", str(target)],
                timeout=max(report.budget_s - report.elapsed() - 2, 1),
                env=env,
            )
        except subprocess.TimeoutExpired as e:
            out["problems"].append(f"{name}: no result within the time budget ({e.timeout:.0f} s)")
            continue
        if proc.returncode != 0 or not target.is_file():
            out["problems"].append(f"{name}: exit {proc.returncode}: {proc.stderr[-800:].strip()}")
            continue
        out[name] = json.loads(target.read_text())
        out["problems"] += [f"{name}: {r['error']}" for r in out[name] if "error" in r]
    return out


def item_extras(ctx: Context, report: Report) -> None:
    report.check("extras", "eval", lambda: check_eval(ctx), cap=0.15, min_s=20)
    report.check("extras", "bench_scripts", lambda: check_bench_scripts(ctx, report), cap=0.2, min_s=30)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where the checks run (default cuda)")
    parser.add_argument(
        "--preset",
        default="medium",
        choices=("tiny", "small", "medium", "large"),
        help="model preset (medium: the issue's; tiny: a CPU smoke run)",
    )
    parser.add_argument(
        "--budget-s", type=float, default=480, help="total seconds; checks left when it is spent are skipped"
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=REPO / "bench" / "out" / "gpu_check.json",
        help="where the JSON goes when $OUT is not set (with $OUT: $OUT/gpu_check.json)",
    )
    parser.add_argument("--steps", type=int, help="CLI training and overfit steps (default 30; tiny 6)")
    parser.add_argument("--resume-steps", type=int, help="steps before and after the interruption (default 5; tiny 2)")
    parser.add_argument("--ddp-steps", type=int, help="steps under torchrun (default 10; tiny 3)")
    parser.add_argument("--crop-s", type=float, help="training crop in seconds (default 6; tiny 0.5)")
    parser.add_argument("--song-s", type=float, help="length of the separated song (default 60; tiny 12)")
    parser.add_argument("--input-s", type=float, help="model input of item 1 in seconds (default 6; tiny 2)")
    parser.add_argument(
        "--pretrain-batch",
        type=int,
        help="pretrain batch per device in mixtures of mixtures (default 16 = 32 clips, the official per-GPU batch; halved on OOM)",
    )
    parser.add_argument(
        "--finetune-batch", type=int, help="finetune batch per device (default 4, the official per-GPU batch)"
    )
    parser.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 training (default: on CUDA)"
    )
    parser.add_argument(
        "--workers", type=int, help="DataLoader and preparation workers (default: min(8, CPUs/2); 0 for tiny)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--count-presets",
        default=None,
        help="presets whose FLOPs are counted for Tables 1-3 (default on CUDA small,medium,large; else none: the README's)",
    )
    parser.add_argument(
        "--items",
        default=None,
        help="items to run, in this order (default model,training,throughput,ddp,separation, then extras on CUDA)",
    )
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed at the end)")
    parser.add_argument("--min-snr-fp32", type=float, default=30.0, help="bar for CUDA vs CPU float32 SNR in dB")
    parser.add_argument("--min-snr-bf16", type=float, default=15.0, help="bar for bf16 vs float32 SNR in dB")
    parser.add_argument("--min-overfit-drop", type=float, default=1.0, help="dB the loss must fall on one fixed batch")
    args = parser.parse_args(argv)
    args.items = args.items or "model,training,throughput,ddp,separation" + (",extras" if args.device == "cuda" else "")
    unknown = [i for i in args.items.split(",") if i not in ISSUE_ORDER]
    if unknown:
        parser.error(f"--items: unknown {', '.join(unknown)}; choose from {', '.join(ISSUE_ORDER)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    base = SCALES["tiny" if args.preset == "tiny" else "paper"]
    scale = replace(
        base,
        **{
            k: v
            for k, v in {
                "steps": args.steps,
                "resume_steps": args.resume_steps,
                "ddp_steps": args.ddp_steps,
                "crop_s": args.crop_s,
                "song_s": args.song_s,
                "model_input_s": args.input_s,
            }.items()
            if v is not None
        },
    )
    if args.workers is None:
        args.workers = 0 if args.preset == "tiny" else min(8, max(1, (os.cpu_count() or 2) // 2))
    if args.count_presets is None:
        args.count_presets = "small,medium,large" if args.device == "cuda" else ""
    args.count_presets = [p for p in args.count_presets.split(",") if p]
    path = Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else args.report
    report = Report(path, args.budget_s, vars(args) | {"scale": asdict(scale)})

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        report.data["error"] = (
            f"--device cuda: CUDA is not available (torch {torch.__version__}); use --device cpu --preset tiny"
        )
        report.write()
        print(json.dumps(report.data, indent=2))
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(args, scale, work)
    try:
        report.data["environment"] = environment(ctx)
    except Exception as e:  # noqa: BLE001 - a missing detail must not stop the checks
        report.data["environment"] = {"device": str(ctx.device), "error": f"{type(e).__name__}: {e}"}
    report.data["work"] = str(work)
    for name in ISSUE_ORDER:  # the report lists the items in the issue's order
        report.data["items"][name] = {"status": "skipped", "reason": "not in --items", "checks": {}}
    items = {
        "model": item_model,
        "training": item_training,
        "throughput": item_throughput,
        "ddp": item_ddp,
        "separation": item_separation,
        "extras": item_extras,
    }
    try:
        for name in args.items.split(","):
            items[name](ctx, report)
    finally:
        report.write()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report.data, indent=2))
    print(f"report: {path}", file=sys.stderr)
    statuses = [c["status"] for item in report.data["items"].values() for c in item["checks"].values()]
    return 0 if all(s == "ok" for s in statuses) else 1  # a failed or skipped check: exit 1


if __name__ == "__main__":
    sys.exit(main())
