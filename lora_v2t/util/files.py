"""How lora_v2t writes files and folders.

- A file or folder is written under a temporary sibling name (``.NAME.tmp-PID``) and renamed into place once
  complete (:func:`atomic_write`, :func:`atomic_folder`): a stop leaves the old version or the new one, never half
  of one. A folder being replaced is first renamed ``.NAME.old-PID`` and removed once the new one is in place.
- Rows appended to a log go in whole or not at all (:func:`append_complete`).
- Only what lora_v2t can tell is its own is replaced or removed (:func:`foreign_entries`, :func:`remove_own`).
- A full disk is one line (:class:`DiskFull`) that says where and how much space the write needs: checked
  before writing where the size is known, and every ``ENOSPC`` met while writing becomes that line.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import V2TError

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})  # a full disk, or a full quota
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")  # what a write in progress is named
FREE_SOME_SPACE = "free some space there, or choose a folder on another disk"


class DiskFull(V2TError):
    """A write found no space left: the message says where, how much it needs and how much is free."""


def temporary_sibling(path: Path, kind: str = "tmp") -> Path:
    """``.NAME.tmp-PID`` (or ``.NAME.old-PID``) beside ``path``: this process's temporary name for it."""
    return path.parent / f".{path.name}.{kind}-{os.getpid()}"


def temporary_of(name: str) -> tuple[str, int] | None:
    """For a temporary name (:func:`temporary_sibling`, nested ones too), the name it stands for and the pid of the
    process that made it; None for any other name."""
    match, pid = TEMPORARY.match(name), None
    while match:
        name, pid = match["name"], int(match["pid"]) if pid is None else pid
        match = TEMPORARY.match(name)
    return None if pid is None else (name, pid)


# ---------------------------------------------------------------------- space
def human_size(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def free_bytes(where: Path) -> int | None:
    """The space free to this user on the disk of ``where`` (its nearest existing folder); None if unknown."""
    folder = Path(where).absolute()
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full(
    where: Path, needed: int | None = None, advice: str = FREE_SOME_SPACE, free: int | None = None
) -> DiskFull:
    """The one line for a full disk at ``where``."""
    free = free_bytes(where) if free is None else free
    amounts = [f"{human_size(needed)} needed" if needed else "", "" if free is None else f"{human_size(free)} free"]
    said = ", ".join(a for a in amounts if a)
    return DiskFull(f"no space left on the disk of {where}{f' ({said})' if said else ''}: {advice}")


def check_free_space(where: Path, needed: int, advice: str = FREE_SOME_SPACE) -> None:
    """Raise :class:`DiskFull` before writing ``needed`` bytes at ``where`` if its disk has less free."""
    free = free_bytes(where)
    if free is not None and needed > free:
        raise disk_full(where, needed, advice, free)


@contextmanager
def no_space_is_one_line(where: Path, needed: int | None = None, advice: str = FREE_SOME_SPACE) -> Iterator[None]:
    """Turn an ``ENOSPC`` (or quota) ``OSError`` raised in the block into :class:`DiskFull`."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        raise disk_full(where, needed, advice) from exc


# ---------------------------------------------------------------------- writing
def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write(
    path: str | Path,
    data: str | bytes | Callable[[Path], object],
    advice: str = FREE_SOME_SPACE,
    encoding: str = "utf-8",
) -> Path:
    """Write a file under its temporary name, then rename it to ``path`` (replacing an older one).

    Args:
        data: the text or bytes to write, or a function that writes the file at the path it is given.
        advice: what a :class:`DiskFull` line tells the user to do.
    """
    path = Path(path)
    payload = data.encode(encoding) if isinstance(data, str) else data
    needed = len(payload) if isinstance(payload, bytes) else None
    if needed is not None:
        check_free_space(path, needed, advice)
    tmp = temporary_sibling(path)
    try:
        with no_space_is_one_line(path, needed, advice):
            if not isinstance(payload, bytes):
                payload(tmp)
            else:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    _write_all(fd, payload)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def append_complete(path: str | Path, payload: bytes, advice: str = FREE_SOME_SPACE) -> None:
    """Append ``payload`` whole, or not at all: a write that fails (a full disk, Ctrl-C) cuts the file back to
    where it ended, so it never ends in half a row."""
    path = Path(path)
    check_free_space(path, len(payload), advice)
    with no_space_is_one_line(path, len(payload), advice):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            end = os.fstat(fd).st_size
            try:
                _write_all(fd, payload)
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)


@contextmanager
def atomic_folder(path: str | Path, needed: int | None = None, advice: str = FREE_SOME_SPACE) -> Iterator[Path]:
    """Yield a new empty temporary folder to fill; when the block ends, it replaces ``path`` (see
    :func:`replace_dir`); when the block raises, it is removed. The caller checks that a folder already at
    ``path`` is its own to replace (:func:`foreign_entries`).

    Args:
        needed: about how many bytes the folder takes, for the :class:`DiskFull` line (None: unknown).
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        with no_space_is_one_line(path, needed, advice):
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # this process's name: left by a process of the same pid
            tmp.mkdir()
            yield tmp
            replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def try_writing_in(folder: Path) -> None:
    """Create a temporary folder (``.NAME.tmp-PID``) holding a small file in the existing ``folder``, then remove
    both: raises the ``OSError`` of a place that looks writable but takes nothing (``/proc``, ``/sys``, a read-only
    mount), before hours of work that end in writing there."""
    probe = temporary_sibling(Path(folder) / "lora_v2t-write-check")
    try:
        probe.mkdir()
        (probe / "check").write_bytes(b"")
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder ``src`` to ``dst``; an older ``dst`` is removed only after the swap."""
    old = temporary_sibling(dst, "old")
    had_old = dst.exists()
    if had_old:
        dst.rename(old)
    try:
        src.rename(dst)
    except BaseException:
        if had_old:  # put the previous folder back before giving up
            old.rename(dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------- what is lora_v2t's own
def foreign_entries(folder: Path, own: Collection[str]) -> list[str]:
    """The names in ``folder`` that are not among ``own`` (the names lora_v2t writes there), sorted."""
    if not folder.is_dir():
        return []
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.name not in own)


def refuse_foreign(folder: Path, own: Collection[str], what: str, fix: str) -> None:
    """Raise V2TError naming the entries of ``folder`` that a ``what`` does not hold: lora_v2t replaces only
    folders that hold nothing but its own files."""
    foreign = foreign_entries(folder, own)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise V2TError(f"{folder} holds files {what} does not ({shown}), and lora_v2t replaces only its own: {fix}")


def remove_own(folder: Path, own: Collection[str], first: Collection[str] = ()) -> list[str]:
    """Remove the entries of ``folder`` named in ``own`` (those in ``first`` before the others), then the folder
    if that left it empty; returns the names left in it."""
    for name in [*first, *(n for n in own if n not in first)]:
        entry = folder / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)
    left = foreign_entries(folder, ())
    if not left:
        folder.rmdir()
    return left


def folder_size(folder: Path) -> int:
    """The bytes of the files under ``folder`` (0 when it is missing)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
