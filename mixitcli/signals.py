"""Stop signals, the same way in every command.

Clusters end jobs with a signal first: Slurm sends SIGTERM (or, with ``--signal=USR1@SECONDS``,
SIGUSR1 a chosen time before the end), and a user at a terminal presses Ctrl-C (SIGINT). A
command that writes files must stop at a point where what it wrote is whole. Two ways:

- :func:`deferred_stop` (long loops such as training): the first signal is only recorded; the
  loop asks :attr:`StopRequest.signum` at its next safe point (a step boundary), saves, and
  stops. A second signal raises :class:`Interrupted` at once, for a user who means it; but a
  SIGTERM or SIGUSR1 repeated within :data:`DUPLICATE_WINDOW_S` is the same request delivered
  twice (Slurm signals every process of a job step, and torchrun forwards the signal it got
  to its workers as well), not a second one.
- :func:`raise_on_stop` (commands whose partial output is simply removed): every signal raises
  :class:`Interrupted` where the program is, so ``finally`` blocks remove partial files.

Either way the command exits with 128 + the signal's number, as a shell reports a process that
a signal ended (130 for Ctrl-C, 143 for SIGTERM): the CLI maps :class:`Interrupted` to that code.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator

STOP_SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name)
)
"""The signals every command treats as "stop, keeping what is done"."""

DUPLICATE_WINDOW_S = 2.0
"""Seconds within which a repeated SIGTERM or SIGUSR1 counts as one delivery (see above).
Never SIGINT: a second Ctrl-C is a person who means it."""


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, ...; the number for one Python does not name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(BaseException):
    """A stop signal arrived. A BaseException, like KeyboardInterrupt, so that ``except
    Exception`` blocks do not swallow it on its way to the CLI."""

    def __init__(self, signum: int, message: str = "", *, quiet: bool = False):
        self.signum = signum
        self.message = message
        self.quiet = quiet  # said already (or by another process, e.g. rank 0 of a torchrun job)
        super().__init__(message or f"interrupted by {signal_name(signum)}")

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, the shell's code for a process a signal ended."""
        return 128 + self.signum


class StopRequest:
    """The first stop signal :func:`deferred_stop` recorded, or None while none came."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.at: float | None = None  # time.monotonic() of the first signal

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal_name(self.signum) if self.signum is not None else ""


@contextlib.contextmanager
def _handlers(handler, signals: tuple[int, ...]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; a worker thread keeps the defaults
        return
    previous = {s: signal.getsignal(s) for s in signals}
    try:
        for s in signals:
            signal.signal(s, handler)
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred_stop(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[StopRequest]:
    """Record the first stop signal instead of acting on it; raise :class:`Interrupted` on a
    second one. The previous handlers come back when the block ends.

    A repeat of the first signal within :data:`DUPLICATE_WINDOW_S` is ignored when that signal
    is SIGTERM or SIGUSR1 (one request delivered twice, see the module's docstring).

    Yields:
        A :class:`StopRequest`: falsy until a signal arrives, then its ``signum`` and ``name``.
    """
    request = StopRequest()

    def handler(signum, frame):
        if request.signum is None:
            request.signum, request.at = signum, time.monotonic()
        elif signum == request.signum != signal.SIGINT and time.monotonic() - request.at < DUPLICATE_WINDOW_S:
            return
        else:
            raise Interrupted(signum, f"{signal_name(signum)} again: stopped at once")

    with _handlers(handler, signals):
        yield request


@contextlib.contextmanager
def raise_on_stop(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Raise :class:`Interrupted` wherever the program is when a stop signal arrives (Ctrl-C
    included, instead of KeyboardInterrupt). The previous handlers come back when the block ends."""

    def handler(signum, frame):
        raise Interrupted(signum)

    with _handlers(handler, signals):
        yield


def ignore_stop_signals(*_) -> None:
    """Ignore the stop signals in this process: for helper processes (DataLoader workers,
    given as ``worker_init_fn``) whose parent decides when to stop and ends them. A terminal
    sends Ctrl-C to every process of the job, and Slurm its SIGTERM to every process of the
    step; a helper that died of it would break the parent's last save (or print a traceback)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
