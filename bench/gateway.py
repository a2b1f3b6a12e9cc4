"""A fake bulk SMS gateway on loopback for the benches, in a process of its own.

It speaks enough of SMSPartner's ``POST /v1/send`` (JSON, ``phoneNumbers`` comma-separated,
up to 500 a call) for the bridge's ``smspartner`` provider to send to it, answers every call
``{"success": true, ...}`` and notes, per call, the wall time (``time.time()``) at which its
body had arrived, how many numbers it carried and the ``N`` of a ``bench message N`` text.

The bench process reads what it saw over the same port::

    GET /stats   -> {"calls": C, "sms": S, "last": T}   (T: time of the last call, or null)
    GET /log     -> [[T, N], ...]                        (calls whose text had a mail index)

Run: ``python bench/gateway.py PORT`` (uvloop when installed; SIGTERM stops it).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time

_TEXT = re.compile(rb"bench message (\d+)")
_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)")


class Gateway:
    """Counts calls and numbers; answers every send with a success."""

    def __init__(self) -> None:
        self.calls = 0
        self.sms = 0
        self.last: float | None = None
        self.log: list[tuple[float, int]] = []
        self.writers: set[asyncio.StreamWriter] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One HTTP/1.1 keep-alive connection."""
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                found = _LENGTH.search(head)
                body = await reader.readexactly(int(found.group(1))) if found else b""
                writer.write(self.answer(head.split(b" ", 2)[1], body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    def answer(self, path: bytes, body: bytes) -> bytes:
        """The whole HTTP response to one request."""
        if path.startswith(b"/stats"):
            return _response({"calls": self.calls, "sms": self.sms, "last": self.last})
        if path.startswith(b"/log"):
            return _response(self.log)
        now = time.time()  # the call has fully arrived: for the bench the SMS is out
        numbers = json.loads(body).get("phoneNumbers", "") if body else ""
        self.calls += 1
        self.sms += numbers.count(",") + 1 if numbers else 0
        self.last = now
        found = _TEXT.search(body)
        if found:
            self.log.append((now, int(found.group(1))))
        return _response({"success": True, "code": 200, "message_id": self.calls, "cost": 0})


def _response(data: object) -> bytes:
    payload = json.dumps(data).encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(payload), payload))


async def main(port: int) -> None:
    gateway, stop = Gateway(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(gateway.serve, "127.0.0.1", port, backlog=512)
    await stop.wait()
    server.close()
    for writer in list(gateway.writers):
        writer.close()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        uvloop = None
    (uvloop.run if uvloop else asyncio.run)(main(int(sys.argv[1])))
