"""Helpers shared by the benchmark scripts: peak memory, timing, subprocess isolation, the code
to compare with in paired mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def run_in(script: str, argv: list[str], tree: Path) -> dict:
    """``run_isolated`` with the ``mixitcli`` of ``tree``, checked.

    Raises:
        SystemExit: the process failed, or imported ``mixitcli`` from somewhere else.
    """
    result = run_isolated(script, argv, pythonpath=str(tree))
    if "error" in result:
        raise SystemExit(f"the code in {tree} failed on {' '.join(argv)}: {result['error']}")
    if Path(result["code"]) != tree.resolve():
        raise SystemExit(f"imported mixitcli from {result['code']}, not {tree}: is mixitcli installed non-editable?")
    return result


def alternate(
    script: str, argv: list[str], ref_tree: Path, reps: int, *, variants: dict[str, list[str]] | None = None
) -> dict[str, list[dict]]:
    """Paired mode: ``reps`` fresh processes each of this checkout ("ours") and of ``ref_tree``
    ("ref"), alternating which goes first, so slow phases of a shared machine hit both sides.

    ``variants`` measures several configurations of ours against one ref run per repetition:
    name -> arguments appended to ``argv`` for ours; the result has a list per name and "ref",
    and the order of the sides is reversed every other repetition.
    """
    sides = {name: (REPO, argv + extra) for name, extra in (variants or {"ours": []}).items()}
    sides["ref"] = (ref_tree, argv)
    runs = {side: [] for side in sides}
    for rep in range(reps):
        for side in list(sides) if rep % 2 == 0 else list(sides)[::-1]:
            tree, args = sides[side]
            runs[side].append(run_in(script, args, tree))
    return runs


def set_up_process(allocator: str) -> None:
    """Set the process up as the ``mixit`` command does (if this version of the code does it)."""
    if allocator != "mixit":
        return
    import importlib.util

    import mixitcli

    # Look in this version's own folder: an editable install's finder would otherwise supply
    # a submodule that older code lacks from the installed checkout.
    path = Path(mixitcli.__file__).parent / "allocator.py"
    if not path.is_file():  # older code: glibc's defaults, as its command had
        return
    spec = importlib.util.spec_from_file_location("_mixit_allocator", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.keep_freed_memory()


def export_ref(ref: str, into: Path) -> Path:
    """The code to compare with: a checkout folder as it is, or ``git archive REF`` unpacked in ``into``.

    Raises:
        SystemExit: REF is neither a folder holding ``mixitcli`` nor a ref git knows.
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "mixitcli").is_dir():
            raise SystemExit(f"--against {ref}: the folder has no mixitcli package; give a checkout of this repository")
        return path.resolve()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"--against {ref}: not a folder and not a git ref ({archive.stderr.decode().strip()})")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into
