"""Separation speed, memory and quality: real-time factor and peak memory of `separate_file` per
preset for a 3-minute stereo song, where the time goes, and paired runs against another version.

Each figure comes from a fresh process (peak RSS on CPU; max allocated on CUDA). The model
has random weights (speed does not depend on them); the song is noise written as 16-bit WAV,
decoded, separated with the paper's chunking (12 s chunks, 6 s hop) and written as 4 float
WAV stems, so the figures include decoding and encoding.

    python bench/separate.py                                  # tiny,small,medium,large on CPU
    python bench/separate.py --presets medium --precision fp32 --threads 1
    python bench/separate.py --presets medium --device cuda --batch-size 4 --precision bf16
    python bench/separate.py --memory 60,1800 --presets tiny  # peak memory vs song length

Where the time goes (``--profile``): every run is split into decode and resample, STFT, model,
iSTFT and overlap-add, encode and write (and "other": the rest of the chunk loop), for
precisions fp32 and bf16 and 1 and 2 threads (``--profile-precisions``, ``--profile-threads``);
with ``--against REF`` the same rows for REF (its bf16 is the autocast of ``--bf16``):

    python bench/separate.py --presets medium --seconds 36 --profile --against 0e4017c

Paired runs (``--against REF``, a git ref or a checkout folder, as bench/train.py): per
repetition one fresh process of REF at its default (float32) and one of this checkout per
precision of ``--precisions`` (default auto,fp32), the order reversed every other repetition.
The table gives the median wall and CPU seconds, the real-time factor, the speed-up against REF
(median of the per-repetition ratios) and their range; then each variant's stems against REF's:
SNR per stem in dB, or "identical" when every sample is equal. This is the issue-23 measurement
(about 26 minutes on 2 quiet cores):

    python bench/separate.py --presets medium --seconds 180 --threads 2 --against 0e4017c --reps 2

onnxruntime against torch (``--backends torch,onnxruntime``): the model is exported once
(`mixit export --onnx`), then the backends alternate, both at float32 with ``--threads``
threads, with ``--precisions``' other precisions of torch beside them:

    python bench/separate.py --presets medium --seconds 36 --backends torch,onnxruntime --precisions fp32,auto --reps 3

docs/benchmarks.md holds the figures measured with these commands.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REPO, Timer, alternate, export_ref, peak_rss_gb, run_isolated, set_up_process  # noqa: E402

SR = 44100
STAGES = ("decode", "stft", "model", "istft", "encode", "other")
STAGE_NAMES = {
    "decode": "decode+resample",
    "stft": "STFT",
    "model": "model",
    "istft": "iSTFT+OLA",
    "encode": "encode+write",
    "other": "other",
}


def make_song(path: Path, seconds: int) -> None:
    """Noise, written 6 s at a time (the bench itself must not hold the song)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=SR, channels=2, subtype="PCM_16") as f:
        for start in range(0, seconds, 6):
            n = min(6, seconds - start) * SR
            f.write((0.1 * rng.standard_normal((n, 2))).astype(np.float32))


class StageClock:
    """Wall and CPU seconds per stage of a separation, by wrapping the functions each stage runs.

    The functions exist in every version since the streaming separation, so the same split
    is measured in this checkout and in REF. "model" is the network call minus the STFT and
    iSTFT inside it; "other" is the total minus the stages.
    """

    KEYS = ("decode", "stft", "forward", "synthesis", "ola", "encode")

    def __init__(self):
        self.wall = dict.fromkeys(self.KEYS, 0.0)
        self.cpu = dict.fromkeys(self.KEYS, 0.0)

    def timed(self, stage: str, fn):
        def wrapper(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.wall[stage] += time.perf_counter() - wall
                self.cpu[stage] += time.process_time() - cpu

        return wrapper

    def timed_iterator(self, stage: str, fn):
        def wrapper(*args, **kwargs):
            it = fn(*args, **kwargs)
            while True:
                try:
                    item = self.timed(stage, next)(it)
                except StopIteration:
                    return
                yield item

        return wrapper

    def install(self) -> None:
        from mixitcli import audio, separate
        from mixitcli.model.bslocoformer import BSLocoformer

        audio.read_blocks = self.timed_iterator("decode", audio.read_blocks)
        separate._Resampler.__call__ = self.timed("decode", separate._Resampler.__call__)
        BSLocoformer.analyse = self.timed("stft", BSLocoformer.analyse)
        BSLocoformer.synthesise = self.timed("synthesis", BSLocoformer.synthesise)
        try:
            from mixitcli import onnxrun  # the onnxruntime backend's numpy STFT and iSTFT

            onnxrun.analyse = self.timed("stft", onnxrun.analyse)
            onnxrun.synthesise = self.timed("synthesis", onnxrun.synthesise)
        except ImportError:  # older code
            pass
        sep = separate.ChunkedSeparator
        sep._forward_or_zeros = self.timed("forward", sep._forward_or_zeros)  # STFT, model and iSTFT of a batch
        sep._accumulate = self.timed("ola", sep._accumulate)
        sep._emit = self.timed("ola", sep._emit)
        audio.BlockWriter.write = self.timed("encode", audio.BlockWriter.write)
        audio.BlockWriter.close = self.timed("encode", audio.BlockWriter.close)

    def result(self, wall: float, cpu: float) -> dict:
        """Per stage of :data:`STAGES`, {"wall": s, "cpu": s}."""
        out = {}
        for kind, clock, total in (("wall", self.wall, wall), ("cpu", self.cpu, cpu)):
            split = {
                "decode": clock["decode"],
                "stft": clock["stft"],
                "istft": clock["synthesis"] + clock["ola"],
                "model": clock["forward"] - clock["stft"] - clock["synthesis"],
                "encode": clock["encode"],
            }
            split["other"] = total - sum(split.values())
            for stage in STAGES:
                out.setdefault(stage, {})[kind] = round(split[stage], 3)
        return out


def separate_kwargs(separate_file, precision: str | None) -> dict:
    """The precision arguments this version of ``separate_file`` takes (``bf16`` before issue 23)."""
    if "precision" in inspect.signature(separate_file).parameters:
        return {"precision": precision or "auto"}
    return {"bf16": precision == "bf16"}


def measure(args) -> dict:
    import torch

    from mixitcli import build_model
    from mixitcli.separate import ChunkOptions, separate_file

    set_up_process(args.allocator)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = args.device
    model = build_model(args.presets).to(device).eval()
    cuda = device.startswith("cuda")
    clock = StageClock() if args.profile else None
    if args.backend == "onnxruntime":
        from mixitcli.inference import OnnxNetwork

        net = OnnxNetwork(args.onnx, threads=args.threads)
        net(torch.zeros(1, 2, SR))  # warm-up
    else:
        net = model
        with torch.no_grad():
            model(torch.zeros(1, 2, SR, device=device))  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    if clock:
        clock.install()
    stems_dir = Path(args.stems) / args.label if args.stems else Path(tempfile.mkdtemp(prefix="mixit-bench-stems-"))
    stems_dir.mkdir(parents=True, exist_ok=True)
    kwargs = separate_kwargs(separate_file, args.precision)
    with Timer() as t:
        result = separate_file(
            net,
            args.song,
            {s: stems_dir / f"{s}.wav" for s in model.stems},
            options=ChunkOptions(batch_size=args.batch_size or None),
            device=device if args.backend == "torch" else None,
            bits="float",
            **kwargs,
        )
        if cuda:
            torch.cuda.synchronize()
    if not args.stems:
        shutil.rmtree(stems_dir, ignore_errors=True)
    import mixitcli

    out = {
        "preset": args.presets,
        "device": device,
        "batch_size": args.batch_size,
        "label": args.label,
        "precision": args.precision or "default",
        "backend": args.backend,
        "network": getattr(result, "network", "") or ("bfloat16 autocast" if kwargs.get("bf16") else "float32"),
        "threads": args.threads,
        "song_s": round(result.seconds, 1),
        "wall_s": round(t.wall, 2),
        "cpu_s": round(t.cpu, 2),
        "rtf": round(t.wall / result.seconds, 3),
        "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9 if cuda else peak_rss_gb(), 3),
        "code": str(Path(mixitcli.__file__).resolve().parents[1]),
    }
    if clock:
        out["stages"] = clock.result(t.wall, t.cpu)
    return out


def child_argv(args, preset: str, song: Path, **changes) -> list[str]:
    """The ``--one`` arguments of a measurement; ``changes`` overrides options by name."""
    values = {
        "presets": preset,
        "song": str(song),
        "device": args.device,
        "batch-size": str(args.batch_size),
        "threads": str(args.threads),
        "allocator": args.allocator,
        "label": "run",
        "backend": "torch",
    }
    values.update({k.replace("_", "-"): str(v) for k, v in changes.items() if v is not None})
    argv = [x for key, value in values.items() for x in (f"--{key}", value)]
    if args.stems_dir:
        argv += ["--stems", str(args.stems_dir)]
    return argv


def snr_table(stems_dir: Path, labels: list[str], ref_label: str) -> dict[str, dict[str, str]]:
    """Each label's stems against ``ref_label``'s: SNR in dB per stem, or "identical"."""
    import numpy as np
    import soundfile as sf

    table = {}
    for label in labels:
        row = {}
        for ref_file in sorted((stems_dir / ref_label).glob("*.wav")):
            ref = sf.read(ref_file, dtype="float32")[0]
            est = sf.read(stems_dir / label / ref_file.name, dtype="float32")[0]
            if np.array_equal(ref, est):
                row[ref_file.stem] = "identical"
            else:
                noise = np.sum((ref.astype(np.float64) - est) ** 2)
                row[ref_file.stem] = f"{10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / noise):.1f} dB"
        table[label] = row
    return table


def print_paired(runs: dict[str, list[dict]], ref_name: str, ref_desc: str) -> list[dict]:
    """Median seconds per side and speed-ups against ``ref_name``."""
    print(f"{'side':22} {'network':32} {'wall s':>8} {'cpu s':>8} {'RTF':>6} {'speed-up':>9} {'ratio range':>13}")
    rows = []
    ref_wall = [r["wall_s"] for r in runs[ref_name]]
    for side, results in runs.items():
        wall = [r["wall_s"] for r in results]
        ratios = [b / a for a, b in zip(wall, ref_wall)]
        row = {
            "side": side,
            "network": results[0]["network"],
            "wall_s": statistics.median(wall),
            "cpu_s": statistics.median(r["cpu_s"] for r in results),
            "rtf": statistics.median(r["rtf"] for r in results),
            "speedup": statistics.median(ratios),
            "ratios": ratios,
            "all": results,
        }
        rows.append(row)
        name = ref_desc if side == ref_name else side
        print(
            f"{name:22} {row['network']:32} {row['wall_s']:8.1f} {row['cpu_s']:8.1f} {row['rtf']:6.3f} "
            f"{row['speedup']:8.2f}x {min(ratios):5.2f}-{max(ratios):5.2f}x",
            flush=True,
        )
    return rows


def print_profile(results: list[dict]) -> None:
    print(
        f"{'code':6} {'network':32} {'thr':>3} " + " ".join(f"{STAGE_NAMES[s]:>15}" for s in STAGES) + f" {'total':>8}"
    )
    for r in results:
        cells = [f"{r['stages'][s]['wall']:7.1f} ({r['stages'][s]['wall'] / r['wall_s']:4.0%})" for s in STAGES]
        print(
            f"{r['label']:6} {r['network']:32} {r['threads']:3} "
            + " ".join(f"{c:>15}" for c in cells)
            + f" {r['wall_s']:8.1f}",
            flush=True,
        )
    print("wall seconds (share of the total); CPU seconds per stage are in --json")


def export_for_bench(preset: str, path: Path) -> None:
    """The model every --one process builds (seed 0), exported for onnxruntime."""
    import torch

    from mixitcli import build_model
    from mixitcli.export import export_onnx

    torch.manual_seed(0)
    result = export_onnx(build_model(preset).eval(), path)
    print(f"exported {preset} to ONNX in {result.seconds:.0f} s (relative error {result.error:.1e})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,small,medium,large")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=int, default=180, help="song length for the real-time factor")
    parser.add_argument("--memory", default="", help="comma-separated song lengths in seconds: peak memory at each")
    parser.add_argument(
        "--batch-size", type=int, default=0, help="chunks per forward pass (0: 4 on a GPU, 1 on the CPU)"
    )
    parser.add_argument(
        "--precision",
        default=None,
        choices=("auto", "fp32", "bf16"),
        help="separate_file's precision (default: the code's own default)",
    )
    parser.add_argument("--bf16", action="store_true", help="the same as --precision bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="split each run into stages (see above)")
    parser.add_argument("--profile-precisions", default="fp32,bf16")
    parser.add_argument("--profile-threads", default="1,2")
    parser.add_argument(
        "--against", default=None, metavar="REF", help="paired mode (see above): a git ref or checkout folder"
    )
    parser.add_argument("--precisions", default="auto,fp32", help="paired mode: this checkout's precisions")
    parser.add_argument(
        "--backends", default="torch", help="torch and/or onnxruntime (onnxruntime: paired against torch)"
    )
    parser.add_argument("--reps", type=int, default=2, help="paired mode: repetitions of each side")
    parser.add_argument(
        "--allocator",
        choices=("mixit", "default"),
        default="mixit",
        help="mixit: glibc keeps freed memory, as the mixit command sets it (older code: glibc's defaults)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--song", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--label", default="run", help=argparse.SUPPRESS)
    parser.add_argument("--stems", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="torch", help=argparse.SUPPRESS)
    parser.add_argument("--onnx", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bf16:
        args.precision = "bf16"

    if args.one:
        print(json.dumps(measure(args)))
        return

    tmp = Path(tempfile.mkdtemp(prefix="mixit-bench-separate-"))
    args.stems_dir = None
    results = []
    try:
        (tmp / "ref").mkdir()
        ref_tree = export_ref(args.against, tmp / "ref") if args.against else None
        backends = args.backends.split(",")
        if ref_tree and "onnxruntime" in backends and not args.profile:
            raise SystemExit("--backends onnxruntime compares the backends of this checkout: leave out --against")
        paired = ref_tree is not None or "onnxruntime" in backends
        lengths = [int(s) for s in args.memory.split(",") if s] or [args.seconds]
        for seconds in lengths:
            song = tmp / f"song{seconds}.wav"
            make_song(song, seconds)
            for preset in args.presets.split(","):
                print(
                    f"{preset}: {seconds} s song, device={args.device} threads={args.threads} (12 s chunks, 6 s hop)",
                    flush=True,
                )
                if args.profile:
                    results += profile(args, preset, song, ref_tree)
                elif paired:
                    results += run_paired(args, preset, song, ref_tree, backends, tmp)
                else:
                    results.append(single(args, preset, song, seconds))
            song.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))


def single(args, preset: str, song: Path, seconds: int) -> dict:
    r = run_isolated(__file__, child_argv(args, preset, song, precision=args.precision))
    r.setdefault("preset", preset)
    if "error" in r:
        print(f"{preset:8} {seconds:7} error: {r['error']}", flush=True)
    else:
        print(f"{'preset':8} {'song s':>7} {'network':32} {'wall s':>8} {'cpu s':>8} {'RTF':>7} {'peak GB':>8}")
        print(
            f"{preset:8} {r['song_s']:7.0f} {r['network']:32} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} {r['rtf']:7.3f} "
            f"{r['peak_gb']:8.3f}",
            flush=True,
        )
    return r


def profile(args, preset: str, song: Path, ref_tree: Path | None) -> list[dict]:
    results = []
    trees = [("ours", REPO)] + ([("ref", ref_tree)] if ref_tree else [])
    for label, tree in trees:
        for precision in args.profile_precisions.split(","):
            for threads in args.profile_threads.split(","):
                argv = child_argv(args, preset, song, precision=precision, threads=threads, label=label) + ["--profile"]
                r = run_isolated(__file__, argv, pythonpath=str(tree))
                if "error" in r:
                    raise SystemExit(f"{label} {precision} {threads} threads: {r['error']}")
                results.append(r)
    print_profile(results)
    return results


def run_paired(args, preset: str, song: Path, ref_tree: Path | None, backends: list[str], tmp: Path) -> list[dict]:
    args.stems_dir = tmp / "stems"
    precisions = args.precisions.split(",")
    if ref_tree is not None:  # this checkout's precisions against REF's default
        base = child_argv(args, preset, song, label="ref")
        variants = {f"ours {p}": ["--precision", p, "--label", f"ours-{p}"] for p in precisions}
        ref_name, ref_desc = "ref", f"{args.against} (default)"
    else:  # onnxruntime against torch float32, in this checkout
        onnx = tmp / f"{preset}.onnx"
        export_for_bench(preset, onnx)
        base = child_argv(args, preset, song, label="ref", precision="fp32")
        variants = {
            "onnxruntime fp32": ["--backend", "onnxruntime", "--onnx", str(onnx), "--label", "ours-onnxruntime"]
        }
        variants.update({f"torch {p}": ["--precision", p, "--label", f"ours-{p}"] for p in precisions if p != "fp32"})
        ref_tree, ref_name, ref_desc = REPO, "ref", "torch fp32"
    print(f"paired: {args.reps} repetitions, fresh process per run, order reversed every other repetition", flush=True)
    runs = alternate(__file__, base, ref_tree, args.reps, variants=variants)
    rows = print_paired(runs, ref_name, ref_desc)
    labels = [runs[side][-1]["label"] for side in variants]
    print(f"stems against {ref_desc}'s:")
    for label, row in snr_table(args.stems_dir, labels, "ref").items():
        print(f"  {label:22} " + ", ".join(f"{stem} {value}" for stem, value in row.items()), flush=True)
    return rows


if __name__ == "__main__":
    main()
