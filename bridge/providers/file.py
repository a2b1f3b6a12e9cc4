"""The ``file`` provider: appends one JSON line per recipient to a local file.

The embedded default (runs with no credentials) and a handy outbox for tests and dry runs::

    outbox:
      type: file
      path: outbox.jsonl     # parent directories are created
      fsync: false           # true: fsync after every batch (slower, survives power loss)

Each line: ``{"time", "provider", "id", "to", "sender", "text", "low_cost", "unicode",
"parts", "reference"}`` with non-ASCII text kept as is (UTF-8). Reconciliation reads the
file back: a line with the job's reference is ``sent``, none is ``not_found``.
"""

from __future__ import annotations

import errno
import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from bridge.errors import TransientError
from bridge.providers.base import Capabilities, ProviderBase, Receipt, Reconciled, Sms
from bridge.settings import BOOL, REQUIRED, TEXT, setting

_LINE = json.JSONEncoder(ensure_ascii=False)  # one encoder, not one per line (json.dumps with options)


@dataclass(frozen=True, kw_only=True)
class FileSettings:
    """``providers.<name>`` with ``type: file``."""

    path: str = setting(REQUIRED, "file the SMS are appended to (relative: to the config's folder)", TEXT)
    fsync: bool = setting(False, "fsync after every write (slower, survives a power loss)", BOOL)


class FileProvider(ProviderBase):
    """Appends SMS to a JSON-lines file instead of sending them."""

    type = "file"
    Settings = FileSettings
    # a local file: no provider to protect, no batch limit worth the name
    CAPABILITIES = Capabilities(max_numbers=500, default_rate=100_000.0)

    def __init__(self, name: str, settings: FileSettings, client: Any) -> None:
        super().__init__(name, settings, client)
        self.path = Path(settings.path).expanduser()
        self.fsync = settings.fsync
        self._file: BinaryIO | None = None

    async def send(self, sms: Sms) -> Receipt:
        """Append one line per number in a single ``write()``; ``TransientError`` on OSError.

        The write is synchronous on purpose: a few hundred bytes to a local file cost less
        than a hop to a thread, and doing it in one call on an ``O_APPEND`` descriptor keeps
        lines from concurrent sends (or processes) from interleaving.
        """
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        ids = {number: f"file-{sms.reference or uuid.uuid4().hex}" for number in sms.to}
        lines = "".join(
            _LINE.encode(self._record(sms, number, ids[number], now)) + "\n"
            for number in sms.to
        )
        try:
            self._append(lines.encode("utf-8"))
        except OSError as exc:
            await self.aclose()  # reopen next time: the disk may have been freed or remounted
            raise TransientError(
                f"cannot append to {self.path}: {exc.strerror or type(exc).__name__}",
                provider=self.name,
                code=exc.errno,
            ) from None
        return Receipt(message_ids=ids)

    async def reconcile(self, sms: Sms, since: float, message_id: str | None) -> Reconciled | None:
        """A line with ``sms.reference`` and the number: sent; none: not found."""
        if not sms.reference:
            return None
        try:
            with open(self.path, encoding="utf-8") as lines:
                for line in lines:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if record.get("reference") == sms.reference and record.get("to") in sms.to:
                        return "sent", record.get("id")
        except FileNotFoundError:
            return "not_found", None
        except OSError:
            return None
        return "not_found", None

    async def check(self) -> str:
        """The file can be opened for appending (its folder is created if needed)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab"):
                pass
        except OSError as exc:
            raise TransientError(f"cannot append to {self.path}: {exc.strerror}", provider=self.name) from None
        return f"appends to {self.path}"

    async def aclose(self) -> None:
        """Close the file if it is open; the next ``send`` reopens it."""
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError:
                pass  # nothing buffered (unbuffered file), nothing to lose

    def _record(self, sms: Sms, number: str, message_id: str, now: str) -> dict[str, Any]:
        return {
            "time": now,
            "provider": self.name,
            "id": message_id,
            "to": number,
            "sender": sms.sender,
            "text": sms.text,
            "low_cost": sms.low_cost,
            "unicode": sms.unicode,
            "parts": sms.parts,
            "reference": sms.reference,
        }

    def _append(self, data: bytes) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Unbuffered: each write() is one system call, nothing waits in a Python buffer.
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open
        view = memoryview(data)
        while view:  # a regular file only writes short when the disk is nearly full
            written = self._file.write(view)
            if not written:
                raise OSError(errno.EIO, "nothing written")
            view = view[written:]
        if self.fsync:
            os.fsync(self._file.fileno())
