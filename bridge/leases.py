"""Who holds a lease on a job: ``host:pid:token``, so a restarted bridge frees at once the
leases its dead predecessor on the same host held, instead of waiting for them to expire."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable


def new_owner() -> str:
    """A lease owner name for this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def dead_owners(owners: Iterable[str], me: str) -> list[str]:
    """The owners on this host whose process is gone (other hosts wait for expiry).

    ``me`` is never dead; another owner with this process's pid is an earlier life of it
    (a container restarts its daemon as pid 1 again).
    """
    host = socket.gethostname()
    dead = []
    for owner in owners:
        parts = owner.rsplit(":", 2)
        if owner == me or len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        # Same pid, other token: an earlier life of this process (pid 1 in a container).
        if pid == os.getpid() or not _alive(pid):
            dead.append(owner)
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
