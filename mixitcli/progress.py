"""The progress display of every long stage: training, data preparation, separation, scoring,
the demo data.

One :class:`Progress` per stage draws its bars on one rich console (stderr unless given):
each bar shows its label, the bar, the percentage, a count (``3/10 files``), an info field
the stage fills (the loss, the file at hand...), the time elapsed and the ETA. Messages go
above the bars through :meth:`Progress.print`. The bars vanish when they end, and each leaves
one final line, the same everywhere::

    train: 150/150 steps in 0:01:23; loss 0.123  lr 1.00e-04  12.3 ex/s

On a console that is not a terminal (a file, a pipe, Typer's ``CliRunner``) the bars are not
drawn: only the messages and the final lines are written, so logs stay readable and tests can
read them. A disabled display (another
rank under DDP, ``progress=False``) writes nothing at all.
"""

from __future__ import annotations

import time
from datetime import timedelta


def clock(seconds: float) -> str:
    """Seconds as H:MM:SS (rich's elapsed-time format)."""
    return str(timedelta(seconds=int(max(seconds, 0))))


class Bar:
    """One bar of a :class:`Progress`: a count out of ``total`` and, optionally, a weight (bytes,
    frames...) that drives the bar and the ETA when items differ in size."""

    def __init__(
        self, progress: Progress, label: str, total: int, *, done: int, unit: str, weight: float | None, info: str
    ):
        self.progress, self.label, self.total, self.done, self.unit, self.info = (
            progress,
            label,
            total,
            done,
            unit,
            info,
        )
        self.weighted = weight is not None
        self.started = time.monotonic()
        self.task = None
        if progress.live is not None:
            total_weight = max(weight, 1e-9) if weight is not None else max(total, 1)
            self.task = progress.live.add_task(
                label, total=total_weight, completed=0 if self.weighted else done, count=self._count(), info=info
            )

    def _count(self) -> str:
        return f"{self.done}/{self.total}" + (f" {self.unit}" if self.unit else "")

    def advance(self, n: int = 1, *, weight: float | None = None, info: str | None = None) -> None:
        """``n`` more items done; a weighted bar moves by ``weight`` (default ``n``)."""
        self.update(done=self.done + n, info=info, advance=weight if weight is not None else n)

    def update(self, *, done: int | None = None, info: str | None = None, advance: float | None = None) -> None:
        """Set the count (and the info); ``advance`` moves a weighted bar by that weight."""
        if done is not None:
            self.done = done
        if info is not None:
            self.info = info
        if self.task is not None:
            moved = {"advance": advance} if self.weighted and advance is not None else {}
            at = {} if self.weighted else {"completed": self.done}
            self.progress.live.update(self.task, count=self._count(), info=self.info, **moved, **at)

    def final_line(self) -> str:
        """``label: done/total unit in H:MM:SS[; info]``."""
        info = f"; {self.info}" if self.info else ""
        return f"{self.label}: {self._count()} in {clock(time.monotonic() - self.started)}{info}"

    def finish(self) -> None:
        """Remove the bar and print its final line."""
        if self.task is not None:
            self.remove()
            self.progress.print(self.final_line())

    def remove(self) -> None:
        """Remove the bar without a final line (a sub-task such as the file at hand)."""
        if self.task is not None:
            self.progress.live.remove_task(self.task)
            self.task = None
        if self in self.progress.bars:
            self.progress.bars.remove(self)


class Progress:
    """The bars of one stage on one console; a context manager (or :meth:`start` / :meth:`stop`).

    Args:
        console: a rich Console (None: a new one on stderr, so stdout stays clean).
        enabled: False shows nothing and prints nothing.
    """

    def __init__(self, console=None, *, enabled: bool = True):
        self.bars: list[Bar] = []
        self.live = None
        self.console = None
        self.drawing = False
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self.console = console if console is not None else Console(stderr=True)
        self.live = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )

    def bar(
        self, label: str, total: int, *, done: int = 0, unit: str = "", weight: float | None = None, info: str = ""
    ) -> Bar:
        """A new bar: ``done`` of ``total`` items already done (a resumed stage); ``weight``, the
        total weight of a weighted bar (its items then advance by their own weights)."""
        bar = Bar(self, label, total, done=done, unit=unit, weight=weight, info=info)
        self.bars.append(bar)
        return bar

    def print(self, message: str) -> None:
        """A line above the bars (nothing when disabled)."""
        if self.console is not None:
            self.console.print(message, highlight=False)

    def start(self) -> Progress:
        """Start drawing the bars; only on a terminal (elsewhere rich would leave a blank line)."""
        if self.live is not None and self.console.is_terminal and not self.drawing:
            self.live.start()
            self.drawing = True
        return self

    def stop(self) -> None:
        """Finish every bar still shown (its final line says how far it got) and stop drawing."""
        for bar in list(self.bars):
            bar.finish()
        self.bars.clear()
        if self.drawing:
            self.live.stop()
            self.drawing = False

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
