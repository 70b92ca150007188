"""
Checks made before C{twistd} turns into a daemon.

twistd forks before it starts the service; its waiting parent can only report a failure as its
own two lines ("An error has occurred: ... Please look at log file"). So in daemon mode
L{pushsvc.tap.makeService} asks here first about what usually goes wrong -- a taken port, a data
directory that cannot be written or that another process has locked, a PostgreSQL database that
does not exist -- and the parent stops with pushsvc's one line. Nothing is created or kept: the
service does the real thing after the fork and still reports a failure the checks could not
foresee (a port taken in between: then twistd's two lines, status 1 and no pidfile).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.endpoints import serverFromString

from pushsvc.datadir import DataDirError, checkDataDir, checkUnlocked
from pushsvc.store import storeFromURL


def _portProblem(reactor: Any, description: str) -> str | None:
    """Bind (and close) a socket as the TCP or TLS endpoint C{description} would."""
    endpoint = serverFromString(reactor, description)
    port = getattr(endpoint, "_port", None)
    interface = getattr(endpoint, "_interface", None)
    if not isinstance(port, int) or port == 0 or not isinstance(interface, str):
        return None  # a UNIX socket, systemd's, or any free port: nothing to foresee
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted binds
        try:
            probe.bind((interface, port))
        except OSError as e:
            return (
                f"cannot listen on {description}: {e.strerror}; stop what uses it, or "
                "choose another --listen"
            )
    return None


def preflight(
    reactor: Any, listen: tuple[str, ...], dataDir: Any, storeURL: str | None = None
) -> str | None:
    """The first problem found, as one line for the operator, or None."""
    try:
        checkDataDir(dataDir)
        checkUnlocked(dataDir)
    except DataDirError as e:
        return str(e)
    for description in listen:
        problem = _portProblem(reactor, description)
        if problem is not None:
            return problem
    # e.g. a missing PostgreSQL database (one quick connection; building the store opens nothing)
    check = getattr(storeFromURL(storeURL, dataDir, reactor), "startupProblem", None)
    return check() if check is not None else None
