"""One writer per folder: an exclusive lock held for a command's life (issue 20).

Two commands writing into one folder at once lose data without a word: two `pretrain` runs
overwrite each other's checkpoints, two `separate` runs mix two songs in one stem file. So a
command that writes takes a lock first and a second one is refused, naming the first.

The lock is a file, ``FOLDER/.mixit.lock`` (or ``.NAME.lock`` beside one output file), holding
the holder's host, process id, command line, start time, the kernel's start time of that
process and the machine's boot id. It must work where the folder is on a network disk that
several nodes share, so it does not rely on ``flock``/``fcntl`` alone (NFS clients implement
them, or not, in many ways). It is made the way NFS honours: the holder writes a file of its
own under a unique name, hard-links it to the lock name, and owns the lock when that file's
link count is then 2 -- ``link`` is atomic on the server, and checking the count instead of
``link``'s answer survives a lost reply. File systems without hard links fall back to
``O_CREAT | O_EXCL``, which NFSv3 and later honour too. Released on exit, on exceptions and
on stop signals (``finally``); a ``kill -9`` leaves the file behind:

- held by a process of this host that is gone (no such pid; or the pid now belongs to a
  process started at another time, a reused pid; or the machine rebooted since): taken over,
  with a warning (:class:`mixitcli.storage.StorageWarning`);
- held by a process of this host that runs: refused, naming it;
- held by another host: refused, since it cannot be checked from here; the message says how
  to remove the lock when that job is certainly gone.

Two processes taking over the same stale lock at once are serialised by a short-lived second
file (``.mixit.lock.break``, made with ``O_EXCL``), so only one of them wins.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shlex
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from mixitcli.storage import StorageWarning, pid_alive

LOCK_NAME = ".mixit.lock"
"""The lock file of a folder."""

BREAK_WAIT_S = 5.0
"""How long a process waits for another one that is taking over a stale lock (milliseconds of work)."""
BREAK_STALE_S = 60.0
"""A take-over file older than this was left by a process killed in those milliseconds."""


class LockError(Exception):
    """Another process holds the lock; the message names it (host, pid, command, start) and what to do.

    Attributes:
        holder: who holds it (None when the lock file cannot be read).
    """

    def __init__(self, message: str, holder: Holder | None = None):
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as written in the lock file.

    Attributes:
        host: the holder's host name.
        pid: its process id on that host.
        command: its command line (``mixit separate song.wav --out stems``).
        started: when it took the lock, local time with the zone (ISO 8601).
        proc_start: the kernel's start time of that process (clock ticks after boot, field 22
            of ``/proc/PID/stat``), which tells a reused pid from the holder; None without /proc.
        boot_id: the machine's boot id (``/proc/sys/kernel/random/boot_id``); None without /proc.
        token: random, unique to this taking of the lock.
    """

    host: str
    pid: int
    command: str
    started: str
    proc_start: int | None
    boot_id: str | None
    token: str

    @classmethod
    def this_process(cls) -> Holder:
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            command=_command_line(),
            started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            proc_start=_process_start(os.getpid()),
            boot_id=_boot_id(),
            token=secrets.token_hex(8),
        )

    def describe(self) -> str:
        return f"`{self.command}` (process {self.pid} on {self.host}, since {self.started})"

    def state(self) -> str:
        """ "running", "gone" (this host, and that process no longer runs) or "unknown" (another host)."""
        if self.host != socket.gethostname():
            return "unknown"
        boot = _boot_id()
        if boot is not None and self.boot_id is not None and boot != self.boot_id:
            return "gone"  # the machine rebooted since
        if not pid_alive(self.pid):
            return "gone"
        start = _process_start(self.pid)
        if start is not None and self.proc_start is not None and start != self.proc_start:
            return "gone"  # the pid was reused by a process started later
        return "running"


def _command_line() -> str:
    argv = list(sys.argv) or ["python"]
    first = Path(argv[0]).name
    if first == "__main__.py":  # `python -m mixitcli ...` (torchrun)
        first = "python -m mixitcli"
    text = " ".join([first, *(shlex.quote(a) for a in argv[1:])])
    return text if len(text) <= 300 else text[:297] + "..."


def _process_start(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time after boot, clock ticks); None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:  # the command name (field 2) is in parentheses and may hold spaces and ")"
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


class Lock:
    """An exclusive lock: one lock file, taken by :meth:`acquire`, given back by :meth:`release`.

    Args:
        path: the lock file (its folder is created).
        what: what it protects, for messages (a folder or an output file).
    """

    def __init__(self, path: str | Path, *, what: str | Path):
        self.path = Path(path)
        self.what = str(what)
        self.me: Holder | None = None
        self._created: list[Path] = []  # folders made for the lock file, deepest first

    # -- taking and giving back ------------------------------------------------------------
    def acquire(self) -> Holder | None:
        """Take the lock.

        Returns:
            The holder of a stale lock that was taken over (its process is gone), else None.

        Raises:
            LockError: a running process, or one on another host, holds it.
            OSError: the folder cannot be written (read-only, full, ...).
        """
        self._created = []
        for folder in (self.path.parent, *self.path.parent.parents):
            if folder.exists():
                break
            self._created.append(folder)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = Holder.this_process()
        stale = None
        for _ in range(20):  # each round either takes the lock or finds a holder
            if self._create(me):
                self.me = me
                return stale
            holder = self._read()
            if holder is None:
                if not self.path.exists():
                    continue  # released meanwhile: try again
                if self._age() < 5.0:
                    time.sleep(0.05)  # being written through the O_EXCL fallback
                    continue
                # unreadable for seconds: its writer died while writing it
            elif holder.state() != "gone":
                raise LockError(self._refusal(holder), holder)
            if self._take_over(holder) and holder is not None:
                stale = holder
        raise LockError(f"{self.what}: could not take its lock {self.path} (other processes keep taking it); try again")

    def release(self) -> None:
        """Remove the lock file if it is still ours, and the folders made for it that stayed
        empty (a command refused or failed before writing anything leaves no folder behind)."""
        if self.me is None:
            return
        holder = self._read()
        if holder is not None and holder.token == self.me.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.me = None
        for folder in self._created:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break

    def __enter__(self) -> Lock:
        taken = self.acquire()
        if taken is not None:
            warnings.warn(taken_over_message(self.what, taken), StorageWarning, stacklevel=2)
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- the file ------------------------------------------------------------------------
    def _create(self, me: Holder) -> bool:
        """Make the lock file holding ``me`` atomically; True when it is ours."""
        data = json.dumps(asdict(me), indent=1) + "\n"
        unique = self.path.with_name(f"{self.path.name}.{me.host}.{me.pid}.{me.token}")
        try:
            with open(unique, "x") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(unique, self.path)
            except FileExistsError:
                pass
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                    raise
                return self._create_exclusive(data)  # a file system without hard links
            return os.stat(unique).st_nlink == 2  # not link's answer: an NFS reply can be lost
        finally:
            with contextlib.suppress(FileNotFoundError):
                unique.unlink()

    def _create_exclusive(self, data: str) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read(self) -> Holder | None:
        """The holder written in the lock file; None when there is none or it cannot be read."""
        try:
            fields = json.loads(self.path.read_text())
            return Holder(**fields)
        except (OSError, ValueError, TypeError):
            return None

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return 0.0

    def _take_over(self, stale: Holder | None) -> bool:
        """Remove the lock file if it still is ``stale``'s (None: still unreadable); one
        process at a time does this."""
        breaker = self.path.with_name(self.path.name + ".break")
        deadline = time.monotonic() + BREAK_WAIT_S
        while True:
            try:
                os.close(os.open(breaker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                break
            except FileExistsError:
                try:
                    if time.time() - breaker.stat().st_mtime > BREAK_STALE_S:
                        breaker.unlink(missing_ok=True)  # left by a process killed while taking over
                        continue
                except FileNotFoundError:
                    continue
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.02)
        try:
            current = self._read()
            same = current is None if stale is None else (current is not None and current.token == stale.token)
            if same:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            return same
        finally:
            breaker.unlink(missing_ok=True)

    def _refusal(self, holder: Holder) -> str:
        state = holder.state()
        text = f"{self.what} is being written by another command: {holder.describe()}."
        if state == "running":
            return text + f" Wait for it to finish (or stop it: kill {holder.pid}), or write somewhere else."
        return (
            text + f" Wait for it to finish, or write somewhere else. That host cannot be checked from here: if that "
            f"command is certainly gone (its job ended, its machine crashed), remove the lock and run again: rm {shlex.quote(str(self.path))}"
        )


def taken_over_message(what: str, holder: Holder) -> str:
    """The warning for a lock taken over from a process that is gone."""
    return f"{what}: took over the lock left by {holder.describe()}, which is no longer running"


def folder_lock(folder: str | Path) -> Lock:
    """The lock of a whole folder: ``FOLDER/.mixit.lock``."""
    folder = Path(folder)
    return Lock(folder / LOCK_NAME, what=folder)


def file_lock(path: str | Path) -> Lock:
    """The lock of one output file: ``.NAME.lock`` beside it."""
    path = Path(path)
    return Lock(path.with_name(f".{path.name}.lock"), what=path)


@contextlib.contextmanager
def holding(*locks: Lock, what: str | Path | None = None) -> Iterator[list[Holder]]:
    """Take every lock (all or none), yield the stale holders taken over, release them all at the end.

    One warning per stale holder (not per lock), so a killed `separate` taken over on four
    stems says so once; ``what`` names the locked things in it (default: the first lock's).

    Raises:
        LockError: one of them is held; those already taken are given back.
    """
    taken: list[Lock] = []
    stale: dict[str, Holder] = {}
    try:
        for lock in sorted(locks, key=lambda k: str(k.path)):
            holder = lock.acquire()
            taken.append(lock)
            if holder is not None:
                stale.setdefault(holder.token, holder)
        for holder in stale.values():
            warnings.warn(taken_over_message(str(what or locks[0].what), holder), StorageWarning, stacklevel=3)
        yield list(stale.values())
    finally:
        for lock in reversed(taken):
            lock.release()


__all__ = ["LOCK_NAME", "Holder", "Lock", "LockError", "file_lock", "folder_lock", "holding", "taken_over_message"]
