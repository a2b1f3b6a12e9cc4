"""systemd's sd_notify protocol: one datagram to ``$NOTIFY_SOCKET`` (no dependency).

Does nothing when the daemon is not run by systemd with ``Type=notify``.
"""

from __future__ import annotations

import os
import socket


def sd_notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``); return True if a socket was there to receive it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True
