"""Delivery reports (DLR) of the generic ``http`` provider: ``/dlr/<provider>/<secret>``.

The operator describes the gateway's callback in ``http.dlr.<provider>`` (which field holds
the status, the message id, our reference, the reason, and which status values mean
delivered or undelivered). A report is read from the query string and from a JSON or form
body (the body wins; JSON fields may be dotted paths, ``data.status``).

What is answered, and why:

- a secret that does not match (compared in constant time): 403, a log line, no change;
- a report without a status or without any id: 400 (it will never become readable);
- a status in neither list (``ACCEPTD``, ``ENROUTE``...): 200, logged, no change;
- an id no job has: 200 and a log line, so the gateway stops retrying;
- otherwise the job moves to ``delivered`` or ``undelivered`` through the store's
  compare-and-set (``settle_call`` on the job's client reference). The state table only
  allows that from ``calling``, ``unknown`` or ``sent``: a duplicate, or a report that
  arrives after another final one, changes nothing and is answered 200. A report that
  arrives before the call's answer was recorded (the job still ``calling``) is applied,
  and the dispatcher's later ``sent`` is then refused by the same table.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from bridge.config import DlrMapping
from bridge.metrics import Metrics
from bridge.model import JobState, Settlement
from bridge.store import Store

log = structlog.get_logger("bridge.dlr")


@dataclass(frozen=True)
class Report:
    """One delivery report as read from a callback."""

    state: JobState | None                    # None: an intermediate status, nothing to do
    status: str
    message_id: str | None
    reference: str | None
    reason: str | None


class Malformed(ValueError):
    """A callback that can never be read with this mapping."""


def read_report(mapping: DlrMapping, fields: Mapping[str, Any]) -> Report:
    """The report in ``fields`` (query, form or JSON) as ``mapping`` describes it (pure)."""
    status = _text(_dig(fields, mapping.status))
    if not status:
        raise Malformed(f"no status in field {mapping.status!r}")
    message_id = _text(_dig(fields, mapping.message_id)) if mapping.message_id else None
    reference = _text(_dig(fields, mapping.reference)) if mapping.reference else None
    if not message_id and not reference:
        raise Malformed("neither a message id nor a reference")
    lowered = status.lower()
    state = JobState.DELIVERED if lowered in mapping.delivered else (
        JobState.UNDELIVERED if lowered in mapping.undelivered else None)
    reason = _text(_dig(fields, mapping.reason)) if mapping.reason else None
    return Report(state, status, message_id, reference, reason)


def _dig(fields: Mapping[str, Any], path: str) -> Any:
    if path in fields:
        return fields[path]
    value: Any = fields
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = " ".join(str(value).split())[:200]
    return text or None


class DlrRoute:
    """The ``/dlr/{provider}/{secret}`` handler of one bridge."""

    def __init__(self, mappings: Mapping[str, DlrMapping], store: Callable[[], Store | None],
                 metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self.mappings = mappings
        self.store = store
        self.metrics = metrics
        self.clock = clock

    async def handle(self, request: web.Request) -> web.Response:
        """Authenticate, read and apply one report (see the module docstring for answers)."""
        provider = request.match_info["provider"]
        mapping = self.mappings.get(provider)
        if mapping is None:
            raise web.HTTPNotFound()
        bound = log.bind(provider=provider, peer=request.remote)
        if not hmac.compare_digest(request.match_info["secret"].encode(), mapping.secret.encode()):
            bound.warning("dlr_forbidden")
            self.metrics.report(provider, "forbidden")
            return web.json_response({"error": "forbidden"}, status=403)
        try:
            report = read_report(mapping, await _fields(request))
        except Malformed as exc:
            bound.warning("dlr_malformed", error=str(exc))
            self.metrics.report(provider, "malformed")
            return web.json_response({"error": f"unreadable report: {exc}"}, status=400)
        bound = bound.bind(status=report.status, message_id=report.message_id, reference=report.reference)
        if report.state is None:
            bound.info("dlr_ignored")
            self.metrics.report(provider, "ignored")
            return web.json_response({"result": "ignored"})
        return web.json_response({"result": await self._apply(provider, report, bound)})

    async def _apply(self, provider: str, report: Report, bound) -> str:
        store = self.store()
        if store is None:
            raise web.HTTPServiceUnavailable()
        job = await store.find_job(provider, report.message_id, report.reference)
        if job is None:
            bound.info("dlr_unknown_message")
            self.metrics.report(provider, "unknown_message")
            return "unknown message"
        reason = None
        if report.state is JobState.UNDELIVERED:
            reason = f"{provider}: undelivered ({report.status}{': ' + report.reason if report.reason else ''})"
        refused = [job.id]
        if job.client_ref:
            item = Settlement(job.id, report.state, reason, provider_message_id=report.message_id)
            refused = await store.settle_call(job.client_ref, [item], self.clock())
        if refused:
            bound.info("dlr_not_applied", job_id=job.id, state=job.state.value)
            self.metrics.report(provider, "not_applied")
            return f"job already {job.state.value}"
        result = report.state.value
        bound.info("dlr_applied", job_id=job.id, state=result)
        self.metrics.report(provider, result)
        return result


async def _fields(request: web.Request) -> dict[str, Any]:
    """Query string, then the body's fields (JSON object, or a form) over them."""
    fields: dict[str, Any] = dict(request.query)
    if request.method != "POST" or not request.can_read_body:
        return fields
    if request.content_type == "application/json":
        try:
            body = json.loads(await request.read() or b"null")
        except (ValueError, UnicodeDecodeError):
            raise Malformed("the body is not JSON") from None
        if not isinstance(body, dict):
            raise Malformed("the JSON body is not an object")
        fields.update(body)
    else:
        fields.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    return fields
