"""Run a function over many files in worker processes, with a progress bar, surviving crashes.

Used by `mixit prepare-fma` and `mixit prepare-musdb`. Results come back to the parent in
completion order through ``on_result`` (which journals them), so the parent is the only
writer of shared state. At most ``2 * workers`` tasks are in flight, so a kill loses at most
that many unfinished files.

Workers die with the parent (a killed run leaves no orphan behind for long) and hold a
shared lock while they live, so the next run can wait until none is left before it cleans up.

A decoder that crashes its process (a segfault on a corrupt file) breaks the pool; the tasks
that were in flight are then re-run one at a time in a fresh process, and a task that kills
its process again on its own is handed to ``on_crash`` instead of stopping the run.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixitcli.progress import Progress


@dataclass
class Task:
    """One unit of work: ``fn(*args)``; ``weight`` drives the progress bar (bytes, frames...)."""

    key: str
    args: tuple
    weight: float = 1.0
    meta: dict = field(default_factory=dict)


_held = []  # the worker's shared lock, kept open for the life of the process


def _die_with_parent() -> None:
    """Exit as soon as the parent dies (kill -9): an orphan would otherwise wait forever."""
    parent = os.getppid()
    try:  # Linux: the kernel kills us together with the parent
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # everywhere else: poll
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _init_worker(log_path: str | None, lock_path: str | None) -> None:
    """Die with the parent, hold the shared workers' lock, send C decoders' chatter to a log."""
    _die_with_parent()
    if lock_path:
        handle = open(lock_path, "a+")
        fcntl.flock(handle, fcntl.LOCK_SH)
        _held.append(handle)
    if log_path:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.close(fd)


def wait_for_orphans(lock_path: Path, timeout_s: float = 60.0) -> bool:
    """Block until no worker of an earlier run holds ``lock_path`` (they die with their parent).

    Returns False when some still hold it after ``timeout_s``.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(lock_path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)


def run_parallel(
    fn: Callable[..., Any],
    tasks: list[Task],
    *,
    workers: int,
    on_result: Callable[[Task, Any], None],
    on_crash: Callable[[Task], None],
    label: str = "working",
    log_path: Path | None = None,
    lock_path: Path | None = None,
    progress: bool = True,
) -> None:
    """Call ``fn(*task.args)`` for every task, in ``workers`` processes (0: in this process).

    Args:
        fn: a picklable top-level function.
        tasks: the work; order is the submission order.
        workers: number of processes; 0 runs everything here (for debugging).
        on_result: called in this process with (task, result) as each task finishes.
        on_crash: called with a task that killed its worker process twice (alone the second time).
        label: progress bar title.
        log_path: the workers' stderr goes there (appended).
        lock_path: every worker holds a shared lock on this file while it lives, so a later
            run can wait (:func:`wait_for_orphans`) until no worker of this one is left.
        progress: show the progress bar (:mod:`mixitcli.progress`) on stderr.
    """
    display = Progress(enabled=progress)
    bar = display.bar(label, len(tasks), unit="files", weight=sum(t.weight for t in tasks))

    def done(task: Task, result: Any, crashed: bool = False) -> None:
        on_crash(task) if crashed else on_result(task, result)
        bar.advance(weight=task.weight)

    with display:
        if workers <= 0:
            for task in tasks:
                done(task, fn(*task.args))
            return
        ctx = multiprocessing.get_context("spawn")  # no fork of a parent holding threads or locks
        init_args = (str(log_path) if log_path else None, str(lock_path) if lock_path else None)
        queue, suspects = deque(tasks), deque()
        while queue or suspects:
            isolated = bool(suspects)
            source = suspects if isolated else queue
            limit = 1 if isolated else 2 * workers
            pool = ProcessPoolExecutor(
                1 if isolated else workers, mp_context=ctx, initializer=_init_worker, initargs=init_args
            )
            inflight: dict = {}
            try:
                while source or inflight:
                    while source and len(inflight) < limit:
                        task = source.popleft()
                        try:
                            inflight[pool.submit(fn, *task.args)] = task
                        except BrokenProcessPool:  # a worker died since the last wait: keep the task
                            source.appendleft(task)
                            raise
                    ready, _ = wait(inflight, return_when=FIRST_COMPLETED)
                    for future in ready:
                        result = future.result()  # BrokenProcessPool when a worker died
                        done(inflight.pop(future), result)
                    if isolated:
                        break  # back to the main pool after each isolated task
            except BrokenProcessPool:
                if isolated:
                    for task in inflight.values():
                        done(task, None, crashed=True)
                else:
                    suspects.extend(inflight.values())
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True, cancel_futures=True)
