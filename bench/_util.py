"""Helpers shared by the benchmark scripts: peak memory, timing, subprocess isolation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def peak_rss_gb() -> float:
    """Peak resident memory of this process (VmHWM), in GB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


class Timer:
    """Wall and CPU seconds of a block."""

    def __enter__(self):
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def run_isolated(script: str, args: list[str], *, pythonpath: str | None = None) -> dict:
    """Run ``script --one ARGS`` in a fresh interpreter (clean peak memory); return its JSON line.

    ``pythonpath`` is the checkout whose ``mixitcli`` it imports (default: the current folder).
    """
    env = dict(os.environ, PYTHONPATH=pythonpath or os.getcwd())
    proc = subprocess.run([sys.executable, script, "--one", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])
