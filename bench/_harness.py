"""The harness of bench/gpu_check.py: guarded, time-boxed checks writing one JSON report, the
`mixit` CLI run in this process with its peak memory, and small measuring helpers."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

from _util import Timer, peak_rss_gb

REPO = Path(__file__).resolve().parents[1]


class BudgetExceeded(BaseException):
    """The time budget ran out inside a check (a BaseException: library code must not swallow it)."""


class CheckFailed(Exception):
    """A check ran but did not get what it needed (the message says what)."""


# ----------------------------------------------------------------------------- report


def _clean(value):
    """JSON-safe copy: non-finite floats become the strings "inf", "-inf" or "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class Report:
    """The JSON report: items -> checks, each with a status, its seconds and its figures."""

    def __init__(self, path: Path, budget_s: float, args: dict):
        self.path, self.budget_s, self.started = path, budget_s, time.perf_counter()
        self.data = {
            "tool": "bench/gpu_check.py",
            "issue": 14,
            "args": _clean(args),
            "budget_s": budget_s,
            "environment": {},
            "items": {},
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def check(self, item: str, name: str, fn, *, cap: float = 0.1, min_s: float = 5.0) -> dict | None:
        """Run ``fn() -> dict`` as check ``item.name``; record ok / failed / skipped. A dict with
        a non-empty "problems" list counts as failed (its figures are kept). The check may run
        for ``cap`` x the budget at most, so that one slow check cannot starve the others."""
        entry: dict = {}
        self.item(item)["checks"][name] = entry
        left = self.budget_s - self.elapsed()
        if left < min_s:
            entry.update(
                status="skipped", reason=f"time budget spent ({self.elapsed():.0f} s of --budget-s {self.budget_s:.0f})"
            )
            return self._done(item, None)
        print(f"[gpu_check {self.elapsed():6.1f} s] {item}.{name}", file=sys.stderr, flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        result = None
        try:
            with deadline(min(left, cap * self.budget_s)):
                result = fn()
            entry.update(_clean(result))
            problems = result.get("problems") or []
            entry["status"] = "failed" if problems else "ok"
            if problems:
                entry["error"] = "; ".join(problems)
        except BudgetExceeded:
            entry.update(
                status="failed",
                error=f"stopped after {time.perf_counter() - t0:.0f} s: its share ({cap:.0%}) of the "
                f"time budget (--budget-s {self.budget_s:.0f}) or the budget itself ran out",
            )
        except Exception as e:  # noqa: BLE001 - every failure is recorded and the next check runs
            entry.update(
                status="failed",
                error=f"{type(e).__name__}: {e}"[:4000],
                traceback=traceback.format_exc(limit=-4)[-3000:],
            )
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        entry["cpu_s"] = round(time.process_time() - c0, 2)  # this process only (not torchrun's)
        return self._done(item, result if entry["status"] == "ok" else None)

    def item(self, item: str) -> dict:
        entry = self.data["items"].setdefault(item, {"status": "ok", "checks": {}})
        entry.pop("reason", None)
        return entry

    def skip(self, item: str, names: list[str], reason: str) -> None:
        for name in names:
            self.item(item)["checks"][name] = {"status": "skipped", "reason": reason}
        self._done(item, None)

    def _done(self, item: str, result):
        statuses = [c["status"] for c in self.data["items"][item]["checks"].values()]
        self.data["items"][item]["status"] = (
            "failed"
            if "failed" in statuses
            else "ok"
            if set(statuses) == {"ok"}
            else "skipped"
            if set(statuses) == {"skipped"}
            else "incomplete"
        )
        self.write()
        return result

    def write(self) -> None:
        items = self.data["items"]
        self.data["summary"] = {
            s: [k for k, v in items.items() if v["status"] == s] for s in ("ok", "failed", "skipped", "incomplete")
        }
        self.data["total_s"] = round(self.elapsed(), 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".partial")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise BudgetExceeded in this (main) thread after ``seconds``."""

    def stop(signum, frame):
        raise BudgetExceeded()

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------- helpers


class Context:
    """What the checks share: options, device, folders, and figures passed between items."""

    def __init__(self, args, scale, work: Path):
        import torch

        self.args, self.scale, self.work = args, scale, work
        self.device = torch.device(args.device if args.device != "cuda" else "cuda:0")
        self.cuda = self.device.type == "cuda"
        self.bf16 = self.cuda if args.bf16 is None else args.bf16  # training precision, as the loop's default
        self.checkpointing = True  # the recipes' default
        self.shared: dict = {}

    def reset_peak(self) -> None:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with contextlib.suppress(OSError):  # Linux: "5" resets VmHWM (the peak resident set)
                Path("/proc/self/clear_refs").write_text("5")

    def peak_gb(self) -> float:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)
            return round(torch.cuda.max_memory_allocated(self.device) / 1e9, 3)
        return round(peak_rss_gb(), 3)

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)

    def recipe(self, stage: str) -> Path:
        """The recipe of the stage for this preset (the demo's for tiny)."""
        name = f"demo/{stage}.yaml" if self.args.preset == "tiny" else f"{stage}/{self.args.preset}.yaml"
        return REPO / "recipes" / name


class _Tee(io.TextIOBase):
    """Writes to the real stderr and keeps the last characters for error messages."""

    def __init__(self, stream, keep: int = 6000):
        self.stream, self.keep, self.tail = stream, keep, ""

    def write(self, s: str) -> int:
        self.stream.write(s)
        self.tail = (self.tail + s)[-self.keep :]
        return len(s)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def cli(ctx: Context, *args) -> dict:
    """Run `mixit ARGS` through the real Typer app in this process: wall seconds, peak memory,
    and the output's tail. Raises CheckFailed when the command fails."""
    import click

    from mixitcli.cli import app

    argv = [str(a) for a in args]
    ctx.reset_peak()
    tee = _Tee(sys.stderr)
    code = 0
    with contextlib.redirect_stderr(tee), Timer() as t:
        try:
            code = app(argv, standalone_mode=False, prog_name="mixit") or 0
        except click.ClickException as e:
            tee.write(e.format_message())
            code = e.exit_code
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    if code:
        raise CheckFailed(f"`mixit {' '.join(argv[:2])} ...` exited {code}: {tee.tail[-1500:].strip()}")
    return {"wall_s": round(t.wall, 2), "peak_gb": ctx.peak_gb(), "output": tee.tail}


def is_oom(error: Exception) -> bool:
    return "out of memory" in str(error).lower() or type(error).__name__ == "OutOfMemoryError"


def sig(x: float, digits: int = 3) -> float:
    """``x`` rounded to ``digits`` significant digits."""
    return float(f"{x:.{digits}g}") if math.isfinite(x) and x else x


def snr_db(ref, est) -> float:
    """10 log10(|ref|^2 / |ref - est|^2) over all samples; inf when equal."""
    import torch

    ref, est = torch.as_tensor(ref).double(), torch.as_tensor(est).double()
    noise = (ref - est).square().sum().item()
    return float("inf") if noise == 0 else round(10 * math.log10(ref.square().sum().item() / noise), 2)


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def step_figures(records: list[dict], batch: int) -> dict:
    """s/step and examples/s from the per-step log (step 1, the warm-up, not timed), losses."""
    steps = [r for r in records if "loss/train" in r]
    losses = [r["loss/train"] for r in steps]
    out = {
        "steps_logged": len(steps),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "losses_finite": bool(losses) and all(math.isfinite(x) for x in losses),
        "skipped_steps": steps[-1].get("skipped_steps") if steps else None,
    }
    if len(steps) >= 3:
        span = steps[-1]["time"] - steps[0]["time"]
        per_step = span / (steps[-1]["step"] - steps[0]["step"])
        out.update(
            s_per_step=round(per_step, 4),
            examples_per_s=round(batch / per_step, 2),
            timed_steps=steps[-1]["step"] - steps[0]["step"],
        )
    valid = [r["loss/valid"] for r in records if "loss/valid" in r]
    if valid:
        out["loss_valid"] = valid[-1]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(ctx: Context) -> dict:
    import torch

    import mixitcli
    from mixitcli.train.checkpoint import git_commit

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mixit": mixitcli.__version__,
        "git_commit": git_commit(),
        "cpu_count": os.cpu_count(),
        "device": str(ctx.device),
        "cuda_available": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            gpu_count=torch.cuda.device_count(),
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gb=round(props.total_memory / 1e9, 1),
            capability=f"{props.major}.{props.minor}",
            nccl=".".join(map(str, torch.cuda.nccl.version())),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
            sdp_enabled={
                "flash": torch.backends.cuda.flash_sdp_enabled(),
                "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                "math": torch.backends.cuda.math_sdp_enabled(),
                "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
            },
        )
    return env


def run_process(cmd: list[str], timeout: float, env: dict) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on timeout the whole group is killed."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True, cwd=REPO
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except (subprocess.TimeoutExpired, BudgetExceeded):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
