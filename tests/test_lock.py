"""One writer per folder (mixitcli/lock.py, issue 20): real processes race for one lock, a lock
of a process that is gone (killed, or whose pid was reused) is taken over with a warning, a
lock of another host is refused with the command that removes it, and the commands that write
a folder (pretrain, prepare-musdb, eval, listen) refuse it while another process holds it.

The holders are small Python processes that take the lock as the commands do (no torch import;
start_holders in tests/builders.py), so the races are real and cheap; `mixit separate` racing a
real `mixit separate` is in tests/test_batch.py."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixitcli import lock as lock_module
from mixitcli.cli import app
from mixitcli.lock import LOCK_NAME, Holder, Lock, LockError, folder_lock
from tests.builders import stale_lock, start_holders, stop

runner = CliRunner()


def test_processes_racing_for_a_lock_one_wins_also_over_a_stale_one(tmp_path):
    free, stale = tmp_path / "free", tmp_path / "stale"
    stale_lock(stale)  # all racers find it stale at once: only one may take it over
    for folder in (free, stale):
        procs = start_holders(folder, n=5)
        answers = sorted(p.answer for p in procs)
        winner = next(p for p in procs if p.answer == "won")
        assert answers == ["refused"] * 4 + ["won"], answers
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == winner.pid
        stop(procs)
        # released by its holder: no lock, temporary or take-over file left (and a folder
        # made only for the lock is gone too)
        assert not folder.exists() or not any(folder.iterdir())


def test_a_stale_lock_of_a_gone_process_is_taken_over_with_a_warning(tmp_path):
    folder = tmp_path / "out"
    dead = stale_lock(folder)
    lock = folder_lock(folder)
    with pytest.warns(
        UserWarning, match=rf"took over the lock left by .*process {dead} on {socket.gethostname()}.*no longer running"
    ):
        with lock:
            assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (folder / LOCK_NAME).exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times come from /proc (Linux)")
def test_a_reused_pid_does_not_keep_a_lock(tmp_path):
    parent = os.getppid()  # a process that runs, but did not take the lock below
    started = lock_module._process_start(parent)
    path = tmp_path / LOCK_NAME

    def lock_file(proc_start: int) -> None:
        holder = dataclasses.replace(
            Holder.this_process(), pid=parent, proc_start=proc_start, command="mixit pretrain --out run"
        )
        path.write_text(json.dumps(dataclasses.asdict(holder)))

    lock_file(started)  # that process itself holds it: refused
    with pytest.raises(LockError, match=f"kill {parent}"):
        Lock(path, what=tmp_path).acquire()
    lock_file(started + 1)  # the holder died and its pid went to a process started later
    lock = Lock(path, what=tmp_path)
    assert lock.acquire().pid == parent
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_a_lock_of_another_host_is_refused_with_the_command_that_removes_it(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    other = {**Holder.this_process().__dict__, "host": "node17", "pid": 4242, "command": "mixit eval --out out"}
    (folder / LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(LockError) as info:
        folder_lock(folder).acquire()
    message = str(info.value)
    assert "`mixit eval --out out` (process 4242 on node17" in message
    rm = message[message.index("rm ") :]
    subprocess.run(rm, shell=True, check=True)  # the advice works as printed
    with folder_lock(folder):
        pass


def test_commands_refuse_a_folder_another_process_writes(tmp_path):
    """pretrain (issue 20: two runs on one folder both exited 0, the second overwriting the
    first's checkpoints) and prepare-musdb refuse the folder, name the holder, exit 1 and
    write nothing there; the holder keeps its lock. eval and listen: their own test files."""
    run, data = tmp_path / "run", tmp_path / "data"
    data.mkdir()
    (holder,) = start_holders(run)
    try:
        for args in (
            ["pretrain", "--data", str(data), "--out", str(run), "--size", "tiny", "--device", "cpu"],
            ["prepare-musdb", str(data), "--out", str(run), "--workers", "0", "--no-progress"],
        ):
            result = runner.invoke(app, args)
            said = " ".join(result.output.split())
            assert result.exit_code == 1, result.output
            assert f"{run} is being written by another command" in said, said
            assert f"(process {holder.pid} on {socket.gethostname()}" in said and f"kill {holder.pid}" in said, said
            assert "Traceback" not in result.output
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing was written
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == holder.pid
    finally:
        stop([holder])
