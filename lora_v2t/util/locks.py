"""Exclusive locks between processes on one machine: a lock file held with ``fcntl.flock``.

The operating system drops the lock when its holder ends, however it ends (``kill -9`` included), so a lock is
never stale. The holder writes its pid into the file so that another process can say who holds it, and removes
the file when it lets go; a process that locked a file just removed by its previous holder notices and locks the
new one instead. Where ``fcntl`` does not exist (Windows) nothing is locked.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import V2TError

if sys.platform != "win32":
    import fcntl
else:  # pragma: no cover - not POSIX
    fcntl = None


class LockBusy(Exception):
    """Another process holds the lock; ``pid`` is its process id when it wrote one."""

    def __init__(self, path: Path, pid: int | None):
        super().__init__(f"{path} is held by {'process ' + str(pid) if pid else 'another process'}")
        self.path, self.pid = path, pid


class FileLock:
    """An exclusive lock on ``path``: ``acquire()`` (or ``with``), ``release()``.

    Args:
        path: the lock file (created if missing; its folder must exist).
        wait: block until the lock is free; otherwise :class:`LockBusy` is raised at once.
        on_wait: called with the holder's pid (or None) before blocking, when ``wait`` is true.
    """

    def __init__(self, path: str | Path, wait: bool = False, on_wait=None):
        self.path, self.wait, self.on_wait = Path(path), wait, on_wait
        self.fd: int | None = None

    def acquire(self) -> FileLock:
        if fcntl is None:
            return self
        while self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                self._lock(fd)
            except BaseException:
                os.close(fd)
                raise
            if self._still_there(fd):
                self.fd = fd
            else:  # the previous holder removed the file after we opened it: lock the one there now
                os.close(fd)
        if not _holds_a_pid_or_nothing(self.fd):  # someone else's file by this name: neither rewrite nor remove it
            os.close(self.fd)
            self.fd = None
            raise V2TError(
                f"{self.path} exists and is not a lock file (it holds something other than a process "
                "id): move it away, lora_v2t needs that name for its lock"
            )
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def _lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = _read_pid(fd)
            if not self.wait:
                raise LockBusy(self.path, holder) from None
        if self.on_wait is not None:
            self.on_wait(holder)
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _still_there(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)

    def release(self) -> None:
        """Remove the lock file and let go (removing first, so that no one locks a file about to vanish)."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _holds_a_pid_or_nothing(fd: int) -> bool:
    """Whether a file is one this module writes: empty, or a process id and a newline."""
    head = os.pread(fd, 64, 0)
    return not head or (head.endswith(b"\n") and head[:-1].isdigit())


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (one of another user's counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def held(path: str | Path, busy: Callable[[str], str], cannot: Callable[[str], str]) -> Iterator[FileLock]:
    """Hold the lock file ``path`` for the ``with`` block, or refuse in one line: ``busy(holder)`` when another
    process holds it (``holder``: "process PID", or "another process"), ``cannot(reason)`` when the file cannot
    be made."""
    lock = FileLock(path)
    try:
        lock.acquire()
    except LockBusy as exc:
        raise V2TError(busy(f"process {exc.pid}" if exc.pid else "another process")) from None
    except OSError as exc:
        raise V2TError(cannot(str(exc.strerror or exc))) from exc
    try:
        yield lock
    finally:
        lock.release()
