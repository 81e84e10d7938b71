"""BS-Locoformer speed and memory: forward (12 s, inference) and forward+backward (6 s, batch 1).

Each figure comes from a fresh process, so peak memory (VmHWM on CPU, max allocated on
CUDA) is that configuration's alone. Also measures the bf16 inference path and its distance
from float32 as an SNR in dB.

    python bench/model.py                       # all presets on CPU
    python bench/model.py --presets medium --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import Timer, peak_rss_gb, run_isolated  # noqa: E402

SR = 44100


def measure(
    preset: str, mode: str, device: str, n_outputs: int, dropout: float, checkpointing: bool, threads: int
) -> dict:
    import torch

    from mixitcli import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(preset, n_outputs=n_outputs, dropout=dropout).to(device)
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    result = {"preset": preset, "mode": mode, "device": device, "n_outputs": n_outputs}
    if mode in ("forward", "forward-bf16"):
        wav = torch.randn(1, 2, 12 * SR, device=device) * 0.1
        model.eval()
        with torch.inference_mode():
            model(wav[..., :SR])  # warm-up
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            with (
                Timer() as t,
                torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=mode == "forward-bf16"),
            ):
                out = model(wav)
                sync()
            if mode == "forward-bf16":
                ref = model(wav)
                result["snr_vs_fp32_db"] = round(
                    float(10 * torch.log10(ref.square().sum() / (ref - out).square().sum())), 2
                )
    else:
        wav = torch.randn(1, 2, 6 * SR, device=device) * 0.1
        model.train()
        model.set_activation_checkpointing(checkpointing)
        result.update(dropout=dropout, checkpointing=checkpointing)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with Timer() as t:
            model(wav).square().mean().backward()
            sync()
    result.update(wall_s=round(t.wall, 2), cpu_s=round(t.cpu, 2))
    result["peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9 if cuda else peak_rss_gb(), 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,small,medium,large")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--outputs", type=int, default=4, help="number of model outputs (4 fine-tuning, 12 MixIT)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default="forward,forward-bf16,train-dropout,train-nodropout")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", type=int, default=1, help="activation checkpointing in training (1/0)")
    args = parser.parse_args()

    if args.one:
        dropout = 0.0 if args.mode == "train-nodropout" else 0.1
        mode = "train" if args.mode.startswith("train") else args.mode
        print(
            json.dumps(
                measure(args.presets, mode, args.device, args.outputs, dropout, bool(args.checkpointing), args.threads)
            )
        )
        return

    results = []
    header = f"{'preset':8} {'mode':16} {'wall s':>8} {'cpu s':>8} {'peak GB':>8}  notes"
    print(f"device={args.device} outputs={args.outputs} threads={args.threads}\n{header}")
    for preset in args.presets.split(","):
        for mode in args.modes.split(","):
            r = run_isolated(
                __file__,
                [
                    "--presets",
                    preset,
                    "--mode",
                    mode,
                    "--device",
                    args.device,
                    "--outputs",
                    str(args.outputs),
                    "--threads",
                    str(args.threads),
                    "--checkpointing",
                    str(args.checkpointing),
                ],
            )
            r.setdefault("preset", preset)
            r["mode"] = mode
            results.append(r)
            if "error" in r:
                print(f"{preset:8} {mode:16} error: {r['error']}")
                continue
            notes = f"bf16 vs fp32 SNR {r['snr_vs_fp32_db']} dB" if "snr_vs_fp32_db" in r else ""
            if "checkpointing" in r:
                notes = f"dropout {r['dropout']}, checkpointing {r['checkpointing']}"
            print(f"{preset:8} {mode:16} {r['wall_s']:8.2f} {r['cpu_s']:8.2f} {r['peak_gb']:8.2f}  {notes}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
