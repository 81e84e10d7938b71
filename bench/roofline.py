"""The arithmetic floor of a CPU separation: how fast the network could run if every product ran
at the CPU's own peak, against how fast it runs.

    python bench/roofline.py --presets medium --threads 2             # the default precision (auto)
    python bench/roofline.py --presets medium --threads 2 --precision fp32

For one chunk (12 s) of a preset's network, prepared as `mixit separate` prepares it, in one
process:

- its floating-point operations per kind of product: convolutions, attention (two products
  per score: q k^T and the weights times v) and the other products (linear layers, the
  decoder), counted by ``torch.utils.flop_counter`` (attention by the formula below, as the
  counter does not know torch's CPU attention kernel);
- the chunk's wall time (best of ``--reps`` warm calls), then the seconds of each kind in one
  more call under torch's profiler (the kernels' self time; the rest of that call is
  "everything else");
- the CPU's peak for products at the network's precision: the faster of a square matrix
  product of ``--peak-size`` on the same threads (best of 3) and the fastest kind of the
  network itself (oneDNN's convolutions can beat the square product).

It prints each kind's share of that peak, and for a song of ``--seconds`` (as many chunks as
`mixit separate` runs: 12 s chunks, 6 s hop) the real-time factor of the chunks as measured,
its floor (every product at the peak, nothing else costing time), and how fast attention
would have to be for a real-time factor of 1.0 with everything else as measured. The model
has random weights (speed does not depend on them). docs/benchmarks.md quotes the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import set_up_process  # noqa: E402

CHUNK_S, HOP_S = 12.0, 6.0
KINDS = ("convolutions", "attention", "other products")
PRODUCT_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def chunks_of(seconds: float, chunk_s: float = CHUNK_S, hop_s: float = HOP_S) -> int:
    """How many chunks ``mixit separate`` runs for a song of ``seconds``: one for a song shorter than
    a chunk, else ceil((length - overlap) / hop) (:meth:`mixitcli.separate.ChunkedSeparator.finish`)."""
    if seconds <= 0:
        return 0
    if seconds < chunk_s:
        return 1
    return math.ceil((seconds - (chunk_s - hop_s)) / hop_s)


def attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of attention on (N, h, s, dh) shapes: 2 N h s_q s_k dh for q k^T, as many for the weights times v."""
    n, h, s_q, dh = query
    s_k, dv = key[-2], value[-1]
    return 2 * n * h * s_q * s_k * dh + 2 * n * h * s_q * s_k * dv


def chunk_flops(network, chunk) -> dict[str, int]:
    """FLOPs of one ``network(chunk)`` call per kind (:data:`KINDS`)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    attention_ops = [
        getattr(aten, name)
        for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention")
        if hasattr(aten, name)
    ]
    with FlopCounterMode(display=False, custom_mapping=dict.fromkeys(attention_ops, attention_flops)) as counter:
        network(chunk)
    flops = dict.fromkeys(KINDS, 0)
    for op, count in counter.get_flop_counts()["Global"].items():
        name = str(op)
        kind = "convolutions" if "convolution" in name else "attention" if "scaled_dot_product" in name else None
        flops[kind or "other products"] += count
    return flops


def kind_of(op_name: str) -> str | None:
    """The kind (:data:`KINDS`) of a profiler op name, or None for everything else."""
    if "convolution" in op_name or op_name.startswith("aten::conv"):  # not aten::_convert...
        return "convolutions"
    if "scaled_dot_product" in op_name:
        return "attention"
    if op_name in PRODUCT_OPS:
        return "other products"
    return None


def chunk_seconds(network, chunk, reps: int) -> tuple[float, dict[str, float], float]:
    """The wall seconds of one warm ``network(chunk)`` call (best of ``reps``); then, of one more
    call under the profiler, the seconds of each kind (the kernels' self time) and its wall seconds."""
    from torch.profiler import ProfilerActivity, profile

    network(chunk)  # warm-up
    walls = []
    for _ in range(reps):
        start = time.perf_counter()
        network(chunk)
        walls.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        network(chunk)
        profiled = time.perf_counter() - start
    seconds = dict.fromkeys(KINDS, 0.0)
    for event in prof.key_averages():
        kind = kind_of(event.key)
        if kind:
            seconds[kind] += event.self_cpu_time_total / 1e6
    return min(walls), seconds, profiled


def peak_flops(dtype, size: int) -> float:
    """FLOP/s of a (size x size) by (size x size) matrix product in ``dtype``, best of 3."""
    import torch

    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def measure(preset: str, precision: str, threads: int, seconds: float, reps: int, peak_size: int) -> dict:
    """The figures of one preset (see the module's docstring), as a dict."""
    import torch

    from mixitcli import build_model
    from mixitcli.inference import prepare

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(preset).eval()
    network = prepare(model, device="cpu", precision=precision)
    rate = model.config.sample_rate
    chunk = 0.1 * torch.randn(1, model.config.n_channels, int(CHUNK_S * rate))
    flops = chunk_flops(network, chunk)
    wall, seconds_by_kind, profiled = chunk_seconds(network, chunk, reps)
    dtype = torch.bfloat16 if network.precision == "bf16" else torch.float32
    square = peak_flops(dtype, peak_size)
    fastest = max(flops[kind] / seconds_by_kind[kind] for kind in KINDS if seconds_by_kind[kind] > 0)
    peak = max(square, fastest)
    n_chunks = chunks_of(seconds)
    total = sum(flops.values())
    budget = seconds / n_chunks  # a chunk's seconds at a real-time factor of 1.0
    others = wall * (1 - seconds_by_kind["attention"] / profiled)  # the rest's share of the profiled call
    return {
        "preset": preset,
        "network": network.describe(),
        "threads": threads,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "peak_gflops": peak / 1e9,
        "square_gflops": square / 1e9,
        "gflop": {kind: flops[kind] / 1e9 for kind in KINDS},
        "seconds": seconds_by_kind,
        "chunk_gflop": total / 1e9,
        "chunk_s": wall,
        "profiled_s": profiled,
        "song_s": seconds,
        "chunks": n_chunks,
        "rtf": n_chunks * wall / seconds,
        "rtf_floor": n_chunks * total / peak / seconds,
        "chunk_s_for_rtf_1": budget,
        # attention's seconds a chunk for RTF 1.0 with everything else as measured (<= 0: out of reach)
        "attention_s_for_rtf_1": budget - others,
    }


def report(r: dict) -> None:
    print(
        f"{r['preset']}: one {CHUNK_S:g} s chunk, {r['network']}, {r['threads']} threads; "
        f"{r['cpu']}, {r['cores']} cores, torch {r['torch']}"
    )
    print(
        f"peak of the products at this precision: {r['peak_gflops']:.0f} GFLOP/s "
        f"(a square matrix product: {r['square_gflops']:.0f}; the peak is the faster of it and the fastest kind below)"
    )
    print(f"{'kind':16} {'GFLOP':>8} {'seconds':>8} {'GFLOP/s':>8} {'of peak':>8}")
    for kind in KINDS:
        gflop, s = r["gflop"][kind], r["seconds"][kind]
        rate = gflop / s if s else 0.0
        print(f"{kind:16} {gflop:8.1f} {s:8.2f} {rate:8.0f} {rate / r['peak_gflops']:8.0%}")
    rest = r["profiled_s"] - sum(r["seconds"].values())
    print(f"{'everything else':16} {'':8} {rest:8.2f}   (norms, residual adds, SiLU, STFT, masks, casts)")
    rate = r["chunk_gflop"] / r["profiled_s"]
    print(
        f"{'chunk, profiled':16} {r['chunk_gflop']:8.1f} {r['profiled_s']:8.2f} {rate:8.0f} {rate / r['peak_gflops']:8.0%}"
    )
    rate = r["chunk_gflop"] / r["chunk_s"]
    print(f"{'chunk, best':16} {r['chunk_gflop']:8.1f} {r['chunk_s']:8.2f} {rate:8.0f} {rate / r['peak_gflops']:8.0%}")
    print(
        f"song of {r['song_s']:g} s, {r['chunks']} chunks: RTF of the chunks {r['rtf']:.2f}; "
        f"floor {r['rtf_floor']:.2f} (every product at the peak, nothing else taking time). "
        f"RTF 1.0 needs {r['chunk_s_for_rtf_1']:.2f} s a chunk: "
        f"{r['chunk_gflop'] / r['chunk_s_for_rtf_1'] / r['peak_gflops']:.0%} of the peak over the whole chunk.",
    )
    need = r["attention_s_for_rtf_1"]
    if need <= 0:
        print("with everything but attention as measured, RTF 1.0 is out of reach even with free attention", flush=True)
    elif need >= r["seconds"]["attention"]:
        print("RTF 1.0 is met with attention as it is", flush=True)
    else:
        rate = r["gflop"]["attention"] / need
        print(
            f"with everything but attention as measured, attention would have to take {need:.2f} s a chunk: "
            f"{rate:.0f} GFLOP/s, {r['seconds']['attention'] / need:.1f}x its speed, "
            f"{rate / r['peak_gflops']:.0%} of the peak",
            flush=True,
        )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="medium", help="comma-separated model presets")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=180.0, help="song length for the real-time factor")
    parser.add_argument("--reps", type=int, default=3, help="timed chunks (the best is kept)")
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the matrices of the peak's product")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.reps < 1 or args.threads < 1:
        parser.error("--seconds must be above 0, --reps and --threads at least 1")
    set_up_process("mixit")  # glibc keeps freed memory, as the mixit command sets it
    results = []
    for preset in args.presets.split(","):
        r = measure(preset, args.precision, args.threads, args.seconds, args.reps, args.peak_size)
        report(r)
        results.append(r)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if len(results) > 1:
        print("floors:", ", ".join(f"{r['preset']} {r['rtf_floor']:.2f}" for r in results))
    return results


if __name__ == "__main__":
    main()
