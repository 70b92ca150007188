"""
Private files: the data directory is 0700, the database and every key or secret file 0600.

New ones are created with those modes whatever the umask. Existing ones that are looser (group or
others may read them) are tightened: the functions return one sentence per change, for the caller
to log, because the data directory holds the app secret, the session key and the chat's messages,
and a looser mode is a leak, not a preference. Pure file-system code: no logging, no reactor, so
the SQLite store can call it from its thread.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def _tighten(path: Path, mode: int) -> list[str]:
    """Take group and other bits off C{path} if it has any; one sentence if it changed."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return []
    if not current & 0o077:
        return []
    try:
        os.chmod(path, mode)
    except OSError as e:
        return [f"{path} has mode {current:04o} and cannot be made {mode:04o}: {e.strerror}"]
    return [f"{path} had mode {current:04o}; made it {mode:04o}"]


def privateDirectory(path: Path) -> list[str]:
    """
    Create C{path} (and missing parents) with mode 0700, or tighten it to 0700 if it exists and
    group or others have any access. Returns what was changed, as sentences to log.

    @raise OSError: the directory cannot be created.
    """
    if not path.is_dir():
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask; 0700 only ever loses bits to it.
        os.chmod(path, DIR_MODE)
        return []
    return _tighten(path, DIR_MODE)


def privateFile(path: Path) -> list[str]:
    """
    Tighten an existing file to 0600 if group or others have any access (nothing happens when
    it does not exist). Returns what was changed, as sentences to log.
    """
    return _tighten(path, FILE_MODE)


def createPrivateFile(path: Path) -> list[str]:
    """
    Make sure C{path} exists with mode 0600: create it empty (never truncating one that is
    there) or tighten the existing one. Returns what was changed, as sentences to log.

    @raise OSError: the file cannot be created.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    os.close(fd)
    return privateFile(path)


def writePrivateFile(path: Path, text: str) -> None:
    """Write C{text} to C{path}, which is created (or left) with mode 0600 only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), FILE_MODE)
        f.write(text)
