"""Writing files safely: atomic writes, leftovers of killed runs, and OS errors as messages.

Every command writes its results through a temporary name beside the final file and renames
it when complete, so a reader (or a resumed run) never sees half a file. Temporary names carry
the writer's process id -- ``.NAME.tmp<pid>`` here and in :mod:`mixitcli.train.checkpoint`,
``.NAME.<pid>.partial`` in the data stage and for audio (:func:`partial_path`) -- so that
:func:`remove_stale_temporaries` can delete the ones whose process is gone (a ``kill -9``
during a save) without touching those of a run that is still writing. A command that holds
the lock of a folder or file (:mod:`mixitcli.lock`) knows that every temporary there is a dead
writer's, whatever its pid: a pid says nothing about a process of another host writing to a
shared disk, so there it removes them all (``locked=True``, :func:`remove_temporaries_of`).

A write that fails because of the machine (full disk, read-only file system, no permission,
I/O error) is never the input's fault: :func:`describe_os_error` turns it into one message
that names the folder and the fix, and the CLI prints it instead of a traceback (issue 11).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shutil
from pathlib import Path

_TEMP_NAME = re.compile(r"^\..+?\.(?:tmp(?P<a>\d+)|(?P<b>\d+)\.partial(?:\.npz)?|partial\.(?P<c>\d+))$")
"""Hidden temporary files of atomic writes, with the writer's pid: ``.NAME.tmp123``,
``.NAME.123.partial`` (``.index.npz.123.partial.npz``) and ``.NAME.partial.123``."""

_LEGACY_PARTIAL = re.compile(r"^\..+\.partial$")
"""``.NAME.partial`` without a pid: audio temporaries of versions before the pid was added."""

SPACE_ERRORS = {errno.ENOSPC, errno.EDQUOT}


class StorageWarning(UserWarning):
    """Something about the files on disk that the user should hear but that does not stop the
    command (a lock taken over from a dead process, an index rebuilt from its manifest); the
    CLI prints it as a ``warning:`` line."""


RUN_AGAIN = "run the same command again: finished work is kept."
"""What to do once the machine is fixed, for most commands (:func:`describe_os_error`'s ``then``)."""


class StorageError(Exception):
    """Writing failed because of the machine (disk full, read-only, permissions, I/O), not the
    input; the message names the folder and what to do. Finished work is kept.

    ``error`` (the OSError) and ``needed`` (bytes) let a caller that knows a better next step
    describe it again with :func:`describe_os_error`'s ``then``."""

    def __init__(self, message: str, *, error: OSError | None = None, needed: int | None = None):
        super().__init__(message)
        self.error, self.needed = error, needed


class WriteError(OSError):
    """An OSError met while writing an output: the machine's problem, never the input's."""


def temp_path(path: Path) -> Path:
    """The temporary name an atomic write of ``path`` uses in this process."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def partial_path(path: Path) -> Path:
    """The temporary name a block-wise writer (audio, data store) of ``path`` uses in this process."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


@contextlib.contextmanager
def naming(path: str | Path):
    """Give an OSError raised inside the block ``path`` as its file name when it has none
    (a failed ``write`` names no file), so the message can say where the disk is full."""
    try:
        yield
    except OSError as e:
        if e.filename or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a whole text file through a temporary name, fsync it, then rename it over ``path``.

    A reader sees the old file or the new one, never a part. On failure the temporary file
    is removed and the OSError raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with naming(path), open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _Recorder(io.RawIOBase):
    """A file wrapper that remembers the OSError of a failed write: libraries that write
    through it (torch.save) may turn that error into a vaguer one of their own."""

    def __init__(self, file) -> None:
        self.file = file
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


def atomic_write_with(path: str | Path, write) -> None:
    """Call ``write(file)`` on a temporary binary file, fsync it, then rename it over ``path``.

    On any failure the temporary file is removed; when the cause was an OSError (even one the
    writer wrapped in another exception, as torch.save does), that OSError is raised, carrying
    ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    recorder = None
    try:
        with open(tmp, "wb") as f:
            recorder = _Recorder(f)
            write(recorder)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        cause = recorder.error if recorder is not None and recorder.error is not None else e
        if isinstance(cause, OSError) and not isinstance(e, KeyboardInterrupt):
            raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from e
        raise


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (another user's counts; this one always does)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def remove_stale_temporaries(*folders: str | Path, recursive: bool = False, locked: bool = False) -> list[Path]:
    """Delete temporary files of atomic writes whose writing process no longer runs.

    Args:
        folders: where to look (missing folders are skipped).
        recursive: also look in every subfolder.
        locked: the caller holds these folders' lock (:mod:`mixitcli.lock`), so no other
            process writes there: every temporary is a dead writer's, whatever its pid (on a
            shared disk the pid may be another host's), and so is ``.NAME.partial`` without one.

    Returns:
        The files removed.
    """
    removed = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        walk = os.walk(folder) if recursive else [(str(folder), [], [p.name for p in folder.iterdir() if p.is_file()])]
        for dirpath, _, names in walk:
            for name in names:
                m = _TEMP_NAME.match(name)
                stale = (
                    (m is not None or _LEGACY_PARTIAL.match(name) is not None)
                    if locked
                    else (m is not None and not pid_alive(int(m.group("a") or m.group("b") or m.group("c"))))
                )
                if stale:
                    path = Path(dirpath) / name
                    path.unlink(missing_ok=True)
                    removed.append(path)
    return removed


def remove_temporaries_of(path: str | Path) -> list[Path]:
    """Delete every temporary file of ``path`` (``.NAME.tmp<pid>``, ``.NAME.<pid>.partial``,
    ``.NAME.partial``), whatever its pid: call it only while holding ``path``'s lock, when they
    are all left over by writers that are gone.

    Returns:
        The files removed.
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    prefix = f".{path.name}."
    for candidate in path.parent.iterdir():
        rest = candidate.name[len(prefix) :] if candidate.name.startswith(prefix) else ""
        if re.fullmatch(r"tmp\d+|\d+\.partial|partial", rest) and candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def check_writable(folder: str | Path) -> None:
    """Raise the OSError that writing into ``folder`` would meet (read-only file system, no
    permission), before any heavy work; folders it had to create for the test are removed."""
    folder = Path(folder).absolute()
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temp_path(folder / ".write-check")
        probe.write_bytes(b"")
        probe.unlink()
    finally:
        for p in missing:  # deepest first
            try:
                p.rmdir()
            except OSError:
                pass


def diagnose_write_failure(path: str | Path, nbytes: int = 0) -> WriteError | None:
    """The likely OS cause of a failed write to ``path`` by a library that does not say
    (libsndfile reports only "System error"): a full disk, a read-only file system or a
    folder without write permission, as a WriteError naming the folder; None when none is seen.
    """
    folder = _existing_folder(Path(path).parent)
    free = free_bytes(folder)
    if free is not None and free < nbytes + 2**20:
        return WriteError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return WriteError(errno.EROFS, os.strerror(errno.EROFS), str(folder))
    except OSError:
        pass
    if not os.access(folder, os.W_OK):
        return WriteError(errno.EACCES, os.strerror(errno.EACCES), str(folder))
    return None


def _existing_folder(path: Path) -> Path:
    """The nearest folder of ``path`` (or above it) that exists."""
    path = path.absolute()
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return Path("/")


def free_bytes(path: str | Path) -> int | None:
    """Free space on the file system holding ``path`` (or its nearest existing parent)."""
    try:
        return shutil.disk_usage(_existing_folder(Path(path))).free
    except OSError:
        return None


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def describe_os_error(e: OSError, *, needed: int | None = None, then: str = RUN_AGAIN) -> str:
    """One clear message for an OS error: what happened, where, and how to fix it.

    Args:
        e: the error; its ``filename`` names the file or folder when known.
        needed: for a full disk, about how many bytes the command needs there.
        then: what to do once space is freed or the disk is fixed (a command that resumes
            needs its own words, e.g. training's ``--resume``).
    """
    target = Path(e.filename) if e.filename else None
    where = str(target) if target is not None else "a file"
    code = e.errno
    if code in SPACE_ERRORS and target is None:
        return (
            "no space left on a device this command writes to. Free some space (or choose output folders on "
            f"a larger disk), then {then}"
        )
    if code in SPACE_ERRORS:
        folder = _existing_folder(target if target.is_dir() else target.parent)
        free = free_bytes(folder)
        notes = [f"writing {target.name}"] if target is not None and target != folder else []
        notes += [f"{human_bytes(free)} free there"] if free is not None else []
        notes += [f"about {human_bytes(needed)} needed"] if needed else []
        what = "disk quota exceeded" if code == errno.EDQUOT else "no space left on the device"
        return (
            f"{what} of {folder} ({'; '.join(notes)}). Free some space there or choose a folder "
            f"on a larger disk, then {then}"
        )
    if code == errno.EROFS:
        folder = _existing_folder(target if target is not None else Path.cwd())
        return f"{folder} is on a read-only file system (writing {where}); choose a writable folder."
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied: {where}. Make it writable (or readable) for this user, or choose another folder."
    if code == errno.EIO:
        return (
            f"input/output error on {where}: the disk or network share failed. Check it (dmesg, the share's "
            f"mount), then {then}"
        )
    reason = e.strerror or str(e) or type(e).__name__
    return f"{where}: {reason}" if target is not None else reason


__all__ = [
    "SPACE_ERRORS",
    "StorageError",
    "StorageWarning",
    "atomic_write_text",
    "atomic_write_with",
    "describe_os_error",
    "free_bytes",
    "human_bytes",
    "partial_path",
    "remove_stale_temporaries",
    "remove_temporaries_of",
    "temp_path",
    "WriteError",
    "check_writable",
    "diagnose_write_failure",
    "naming",
]
