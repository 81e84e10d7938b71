"""Separation speed and memory: real-time factor and peak memory of `separate_file` per preset
for a 3-minute stereo song, and peak memory at two song lengths (bounded by the chunk).

Each figure comes from a fresh process (peak RSS on CPU; max allocated on CUDA). The model
has random weights (speed does not depend on them); the song is noise written as 16-bit WAV,
decoded, separated with the paper's chunking (12 s chunks, 6 s hop) and written as 4 float
WAV stems, so the figures include decoding and encoding.

    python bench/separate.py                                  # tiny,small,medium,large on CPU
    python bench/separate.py --presets medium --device cuda --batch-size 4 --bf16
    python bench/separate.py --memory 60,1800 --presets tiny  # peak memory vs song length

For comparison (foundation issue, this 2-core CPU, torch 2.13): the official implementation
takes 19 s wall and 1.35 GB for one 12 s chunk of the medium model; a 3-minute song is 29
chunks, so about 550 s, a real-time factor of about 3.1 (and it holds the whole song and its
stems in memory).

Measured here (2 cores, 2 threads, torch 2.13 CPU, float32, batch 1, 3-minute song):

    preset   wall s   cpu s    RTF   peak GB
    tiny       15.6    30.4  0.087     0.845
    small     127.7   252.1  0.710     1.039
    medium    309.6   610.7  1.720     1.334
    large     862.6  1680.9  4.792     1.536

Peak memory against song length (tiny): 60 s 0.848 GB, 3600 s 0.883 GB (holding a 1-hour
song and its 4 stems in float32 would take 6.4 GB more).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import Timer, peak_rss_gb, run_isolated  # noqa: E402

SR = 44100


def make_song(path: Path, seconds: int) -> None:
    """Noise, written 6 s at a time (the bench itself must not hold the song)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=SR, channels=2, subtype="PCM_16") as f:
        for start in range(0, seconds, 6):
            n = min(6, seconds - start) * SR
            f.write((0.1 * rng.standard_normal((n, 2))).astype(np.float32))


def measure(preset: str, song: Path, device: str, batch_size: int, bf16: bool, threads: int) -> dict:
    import torch

    from mixitcli import build_model
    from mixitcli.separate import ChunkOptions, separate_file

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(preset).to(device).eval()
    cuda = device.startswith("cuda")
    with torch.no_grad():
        model(torch.zeros(1, 2, SR, device=device))  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out, Timer() as t:
        result = separate_file(
            model, song, {s: Path(out) / f"{s}.wav" for s in model.stems},
            options=ChunkOptions(batch_size=batch_size or None), device=device, bf16=bf16, bits="float",
        )
        if cuda:
            torch.cuda.synchronize()
    return {
        "preset": preset, "device": device, "batch_size": batch_size, "bf16": bf16,
        "song_s": round(result.seconds, 1), "wall_s": round(t.wall, 1), "cpu_s": round(t.cpu, 1),
        "rtf": round(t.wall / result.seconds, 3),
        "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9 if cuda else peak_rss_gb(), 3),
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,small,medium,large")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=int, default=180, help="song length for the real-time factor")
    parser.add_argument("--memory", default="", help="comma-separated song lengths in seconds: peak memory at each")
    parser.add_argument("--batch-size", type=int, default=0, help="chunks per forward pass (0: 4 on a GPU, 1 on the CPU)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--song", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        print(json.dumps(measure(args.presets, args.song, args.device, args.batch_size, args.bf16, args.threads)))
        return

    lengths = [int(s) for s in args.memory.split(",") if s] or [args.seconds]
    results = []
    print(f"device={args.device} threads={args.threads} batch={args.batch_size} bf16={args.bf16} (12 s chunks, 6 s hop)")
    print(f"{'preset':8} {'song s':>7} {'wall s':>8} {'cpu s':>8} {'RTF':>7} {'peak GB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in lengths:
            song = Path(tmp) / f"song{seconds}.wav"
            make_song(song, seconds)
            for preset in args.presets.split(","):
                extra = ["--bf16"] if args.bf16 else []
                r = run_isolated(__file__, ["--presets", preset, "--song", str(song), "--device", args.device,
                                            "--batch-size", str(args.batch_size), "--threads", str(args.threads), *extra])
                r.setdefault("preset", preset)
                results.append(r)
                if "error" in r:
                    print(f"{preset:8} {seconds:7} error: {r['error']}", flush=True)
                    continue
                print(f"{preset:8} {r['song_s']:7.0f} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} {r['rtf']:7.3f} {r['peak_gb']:8.3f}", flush=True)
            song.unlink()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
