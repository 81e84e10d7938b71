"""run_parallel: every task once, and a task that kills its process is isolated, not fatal."""

from __future__ import annotations

import os

from mixitcli.data.parallel import Task, run_parallel


def square_or_die(x: int) -> int:
    if x == 3:
        os._exit(9)  # what a segfaulting decoder does to its worker
    return x * x


def test_every_task_once_and_crash_isolated():
    results, crashed = {}, []
    tasks = [Task(key=str(x), args=(x,)) for x in range(8)]
    run_parallel(
        square_or_die,
        tasks,
        workers=2,
        progress=False,
        on_result=lambda t, r: results.__setitem__(t.key, r),
        on_crash=lambda t: crashed.append(t.key),
    )
    assert crashed == ["3"]
    assert results == {str(x): x * x for x in range(8) if x != 3}


def test_in_process():
    seen = []
    run_parallel(
        abs,
        [Task(key="a", args=(-2,))],
        workers=0,
        progress=False,
        on_result=lambda t, r: seen.append(r),
        on_crash=None,
    )
    assert seen == [2]
