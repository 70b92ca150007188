"""
The data directory: checked before anything is created in it, and locked by the one process
that uses it.

The lock is an exclusive C{flock} on C{DATA_DIR/lock}, held on an open descriptor for the life
of the process: the kernel drops it when the process ends, however it ends, so a crash never
leaves a stale lock. The file holds the pid of the holder, for the error message only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

LOCK_FILE = "lock"


class DataDirError(Exception):
    """The data directory cannot be used; C{str()} is one line saying what to do."""


def _topMissing(path: Path) -> Path | None:
    """The outermost directory that creating C{path} would create, or None if it exists."""
    path = path.resolve()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def checkDataDir(path: Path) -> None:
    """
    Check, without creating or changing anything, that C{path} can be the data directory: it is
    a writable directory, or it is missing and the nearest directory above it is writable.

    @raise DataDirError: with a sentence for the operator.
    """
    if path.exists():
        if not path.is_dir():
            raise DataDirError(
                f"the data directory {path} exists and is not a directory; "
                "choose another --data-dir"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise DataDirError(
                f"cannot write to the data directory {path.resolve()}: give the "
                "user running pushsvc write access, or choose another --data-dir"
            )
        return
    top = _topMissing(path)
    assert top is not None
    parent = top.parent
    if not parent.is_dir():
        raise DataDirError(
            f"cannot create the data directory {path.resolve()}: {parent} is not "
            "a directory; choose another --data-dir"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataDirError(
            f"cannot create the data directory {path.resolve()}: {parent} is not "
            "writable; create the directory for the user running pushsvc, or "
            "choose another --data-dir"
        )


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def _inUse(path: Path, holder: str) -> DataDirError:
    return DataDirError(
        f"the data directory {path.resolve()} is in use by another pushsvc process{holder}; "
        "stop that one, or give this one its own --data-dir"
    )


def checkUnlocked(path: Path) -> None:
    """
    Check, without creating anything, that no other process holds C{path}'s lock.

    @raise DataDirError: another process holds it.
    """
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return  # no lock file: nobody has used it, or we cannot tell yet; lockDataDir will
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _inUse(path, _holder(fd)) from None
    finally:
        os.close(fd)  # also releases the lock we may have taken


def lockDataDir(path: Path) -> tuple[int, Path | None]:
    """
    Create C{path} (mode 0700, with any missing parents) if it is missing and lock it for this
    process.

    @return: the descriptor that holds the lock (keep it open; L{unlockDataDir} releases it) and
        the outermost directory created now (None if C{path} was there): what to remove if the
        start goes no further.
    @raise DataDirError: it cannot be created or written, or another process holds the lock.
    """
    checkDataDir(path)
    created = _topMissing(path)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise DataDirError(
            f"cannot create the data directory {path.resolve()}: "
            f"{e.strerror}; choose another --data-dir"
        ) from None
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        removeCreated(created)
        raise DataDirError(
            f"cannot write to the data directory {path.resolve()}: "
            f"{e.strerror}; choose another --data-dir"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _holder(fd)
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise _inUse(path, holder) from None
        raise DataDirError(
            f"cannot lock the data directory {path.resolve()}: {e.strerror}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, created


def removeCreated(created: Path | None) -> None:
    """Remove what L{lockDataDir} created for a start that went no further (only our files are
    in it: it was made moment ago and locked since)."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)


def unlockDataDir(fd: int) -> None:
    """Release the lock taken by L{lockDataDir}."""
    os.close(fd)
