"""Issue 11 on real file systems: prepare-fma on a full disk and a read-only one, and two
prepare-fma runs racing on one finished folder. Needs root (it mounts small tmpfs).

    sudo python bench/faults.py [--files 16] [--seconds 30] [--races 10]

Prints, for each case, the exit code and the command's last lines, then the figures: files
kept on the 20 MB disk, files kept by the rerun after the disk grew, whether the manifest
equals one made on a roomy disk, and how the racing runs ended (finished, refused with a
message, or crashed with a traceback). The tests inject these faults instead (tests/data/
test_fma.py, tests/test_storage.py), so they run anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


def mixit(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "mixitcli", *args], env=env, capture_output=True, text=True)


def tail(result: subprocess.CompletedProcess, lines: int = 6) -> str:
    return "\n".join("    " + line for line in (result.stdout + result.stderr).strip().splitlines()[-lines:])


def mount(folder: Path, size_mb: int, *options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    opts = ",".join([f"size={size_mb}m", *options])
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], check=True, capture_output=True)


def umount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True)


def songs(folder: Path, n: int, seconds: float) -> Path:
    rng = np.random.default_rng(0)
    for k in range(n):
        t = np.arange(int(seconds * 44100)) / 44100
        x = 0.05 * rng.standard_normal((t.size, 2)) + 0.2 * np.sin(2 * np.pi * rng.uniform(80, 800) * t)[:, None]
        path = folder / f"{k:03d}" / f"{k:06d}.mp3"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, x.astype(np.float32), 44100, format="MP3")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--races", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/faults.py mounts tmpfs file systems: run it as root")
    work = Path(tempfile.mkdtemp(prefix="mixit-faults-"))
    audio = songs(work / "music", args.files, args.seconds)
    base = ["prepare-fma", "--audio-dir", str(audio), "--workers", "2", "--no-progress", "--valid-fraction", "0.2"]
    small = work / "small"
    try:
        mount(small, 20)
        full = mixit(*base, "--out", str(small / "prep"))
        print(f"20 MB tmpfs: exit {full.returncode}\n{tail(full)}")
        kept_full = len(open(small / "prep" / "shards" / "0-of-1" / "journal.jsonl").readlines())
        leftovers = [p.name for p in (small / "prep").rglob("*") if ".partial" in p.name or ".tmp" in p.name]
        subprocess.run(["mount", "-o", "remount,size=2000m", str(small)], check=True)
        rerun = mixit(*base, "--out", str(small / "prep"))
        print(f"after the disk grew: exit {rerun.returncode}\n{tail(rerun, 3)}")
        roomy = mixit(*base, "--out", str(work / "roomy"))
        same = (small / "prep" / "manifest.jsonl").read_text() == (work / "roomy" / "manifest.jsonl").read_text()
        summary = json.loads((small / "prep" / "summary.json").read_text())
        print(
            f"figures: {kept_full} of {args.files} files journaled on the full disk, {len(leftovers)} temporary "
            f"files left; rerun: {summary['files_kept']} kept, {summary['segments_kept']} clips; "
            f"manifest equals the roomy disk's: {same} (roomy exit {roomy.returncode})"
        )

        outcomes = {"finished": 0, "refused": 0, "crashed": 0}
        for _ in range(args.races):
            env = dict(os.environ, PYTHONPATH=str(REPO))
            cmd = [sys.executable, "-m", "mixitcli", *base, "--out", str(work / "roomy")]
            procs = [
                subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)
            ]
            for p in procs:
                out, err = p.communicate()
                key = "crashed" if "Traceback" in err else "finished" if p.returncode == 0 else "refused"
                outcomes[key] += 1
        print(f"two runs at once on a finished folder, {args.races} tries: {outcomes}")

        ro = work / "ro"
        mount(ro, 1, "ro")
        result = mixit(*base, "--out", str(ro / "prep"))
        print(f"read-only tmpfs: exit {result.returncode}\n{tail(result, 3)}")
        umount(ro)
    finally:
        umount(small)


if __name__ == "__main__":
    main()
