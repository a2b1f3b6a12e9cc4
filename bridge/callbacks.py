"""Provider webhooks: delivery reports and inbound SMS (``/dlr/...`` and ``/inbound/...``).

Every provider in ``http.callbacks`` gets two routes, ``/dlr/<provider>/<secret>`` and
``/inbound/<provider>/<secret>`` (GET or POST: the parser reads what its provider sends).
The provider's own module reads the request (``CallbackParser.parse_callback``); a provider
of type ``http`` is read through the mapping the operator declares (``http_report``).

What is answered, and why:

- a secret that does not match (compared in constant time), or a provider signature that
  is missing or wrong (Twilio's ``X-Twilio-Signature``): 403, a log line, no change;
- a request its parser cannot read: 400 (it will never become readable);
- a delivery report with an intermediate status (``ACCEPTD``, ``queued``, ``buffered``):
  200, logged, no change;
- a report about an id no job has: 200 and a log line, so the provider stops retrying;
- otherwise the job moves to ``delivered`` or ``undelivered`` through the store's
  compare-and-set: only from ``calling``, ``unknown`` or ``sent``. A duplicate, or a report
  arriving after another final one, changes nothing and is answered 200. A report that
  arrives before the call's answer was recorded (the job still ``calling``) is applied,
  and the dispatcher's later ``sent`` is refused by the same table. The account's
  ``dlr_mail`` decides whether the sender is mailed (128, 129), in the same transaction.
- an inbound SMS is matched to the SMS it answers (the one the provider names, else the
  newest one sent to that number through that provider within ``http.inbound_window``)
  and forwarded to the sender of that SMS's mail, in its thread (132). ``STOP``/``STOP
  SMS`` adds the number to the opt-out list (source ``sms``), ``START``/``REABO`` removes
  it (130, 131), even when no SMS can be matched. The provider's id of the inbound SMS
  is remembered, so a webhook delivered twice is applied once. A long SMS posted one part
  at a time is kept part by part (answered ``part N of M``) and handled once whole.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import structlog
from aiohttp import web

from bridge import rules, status_mail
from bridge.config import Config
from bridge.sections import CallbackConfig
from bridge.metrics import Metrics
from bridge.model import JobState
from bridge.numbers import normalise
from bridge.providers.base import Callback, CallbackForbidden, CallbackParser, CallbackRequest, CallbackUrls, Provider
from bridge.store import Store

log = structlog.get_logger("bridge.callbacks")


def callback_urls(config: Config, provider: str) -> CallbackUrls | None:
    """The URLs ``provider`` should call back, when ``http.public_url`` and its callbacks are set."""
    hooks = config.http.callbacks.get(provider)
    if hooks is None or not config.http.public_url:
        return None
    base = config.http.public_url.rstrip("/")
    return CallbackUrls(dlr=f"{base}/dlr/{provider}/{hooks.secret}", inbound=f"{base}/inbound/{provider}/{hooks.secret}")


def http_report(mapping: CallbackConfig, fields: Mapping[str, Any]) -> Callback:
    """The delivery report in ``fields`` as an ``http`` provider's mapping describes it (pure).

    Raises ``ValueError`` when the status or both ids are missing.
    """
    status = _text(_dig(fields, mapping.status))
    if not status:
        raise ValueError(f"no status in field {mapping.status!r}")
    message_id = _text(_dig(fields, mapping.message_id)) if mapping.message_id else None
    reference = _text(_dig(fields, mapping.reference)) if mapping.reference else None
    if not message_id and not reference:
        raise ValueError("neither a message id nor a reference")
    lowered = status.lower()
    state = "delivered" if lowered in mapping.delivered else ("undelivered" if lowered in mapping.undelivered else None)
    reason = _text(_dig(fields, mapping.reason)) if mapping.reason else None
    return Callback("delivery", message_id=message_id, reference=reference, state=state, status=status, reason=reason)


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


class Webhooks:
    """The ``/dlr/{provider}/{secret}`` and ``/inbound/{provider}/{secret}`` handlers of one bridge."""

    def __init__(self, config: Config, providers: Callable[[], Mapping[str, Provider]],
                 store: Callable[[], Store | None], metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.hooks = config.http.callbacks
        self.providers = providers
        self.store = store
        self.metrics = metrics
        self.clock = clock

    def routes(self) -> list[web.RouteDef]:
        """GET and POST on both paths."""
        return [method(f"/{path}/{{provider}}/{{secret}}", self.handle)
                for path in ("dlr", "inbound") for method in (web.get, web.post)]

    async def handle(self, request: web.Request) -> web.Response:
        """Authenticate, parse and apply one webhook (see the module docstring for answers)."""
        name = request.match_info["provider"]
        hooks = self.hooks.get(name)
        if hooks is None:
            raise web.HTTPNotFound()
        route = request.path.split("/", 2)[1]
        bound = log.bind(provider=name, route=route, peer=request.remote)
        count = self.metrics.report if route == "dlr" else self.metrics.inbound_sms
        if not hmac.compare_digest(request.match_info["secret"].encode(), hooks.secret.encode()):
            bound.warning("callback_forbidden", why="wrong secret")
            count(name, "forbidden")
            return web.json_response({"error": "forbidden"}, status=403)
        try:
            events = await self._parse(name, hooks, request)
        except CallbackForbidden as exc:
            bound.warning("callback_forbidden", why=str(exc)[:200])
            count(name, "forbidden")
            return web.json_response({"error": "forbidden"}, status=403)
        except ValueError as exc:
            bound.warning("callback_malformed", error=str(exc)[:200])
            count(name, "malformed")
            return web.json_response({"error": f"unreadable callback: {str(exc)[:200]}"}, status=400)
        if self.store() is None:
            raise web.HTTPServiceUnavailable()
        results = [await (self._delivery if e.kind == "delivery" else self._inbound)(name, e, bound)
                   for e in events]
        if not results:
            bound.info("callback_empty")
            return web.json_response({"result": "ignored"})
        return web.json_response({"result": results[0]} if len(results) == 1 else {"results": results})

    async def _parse(self, name: str, hooks: CallbackConfig, request: web.Request) -> list[Callback]:
        provider = self.providers().get(name)
        callback = await _request(request, self.config.http.public_url)
        if getattr(provider, "type", None) == "http" or provider is None:
            return [http_report(hooks, callback.fields)]
        if not isinstance(provider, CallbackParser):
            raise ValueError(f"provider {name} sends no webhooks the bridge reads")
        return provider.parse_callback(callback)

    # --- delivery reports --------------------------------------------------------------

    async def _delivery(self, provider: str, report: Callback, bound) -> str:
        store = self.store()
        bound = bound.bind(status=report.status, message_id=report.message_id, reference=report.reference)
        if report.state is None:
            bound.info("dlr_ignored")
            self.metrics.report(provider, "ignored")
            return "ignored"
        job = await store.find_job(provider, report.message_id, report.reference)
        if job is None:
            bound.info("dlr_unknown_message")
            self.metrics.report(provider, "unknown_message")
            return "unknown message"
        state = JobState(report.state)
        reason = None
        if state is JobState.UNDELIVERED:
            reason = f"{provider}: undelivered ({report.status}{': ' + report.reason if report.reason else ''})"
        detail = f"{state.value} ({provider}: {report.status}{', ' + report.reason if report.reason else ''})"
        mail = status_mail.for_report(job, state, reason, self.config)
        if not await store.report_delivery(job.id, state, reason, report.message_id, detail, mail, self.clock()):
            bound.info("dlr_not_applied", job_id=job.id, state=job.state.value)
            self.metrics.report(provider, "not_applied")
            return f"job already {job.state.value}"
        bound.info("dlr_applied", job_id=job.id, state=state.value, mailed=mail is not None)
        self.metrics.report(provider, state.value)
        return state.value

    # --- inbound SMS -------------------------------------------------------------------

    async def _inbound(self, provider: str, sms: Callback, bound) -> str:
        store = self.store()
        number = _e164(sms.number)
        if number is None:
            raise web.HTTPBadRequest(reason="an inbound SMS without a readable sender number")
        now = self.clock()
        text, message_id = sms.text or "", sms.message_id
        if sms.part is not None:
            ref, index, total = sms.part
            prefix = f"part:{provider}:{number}:{ref}"
            parts = await store.inbound_part(prefix, index, total, text, now)
            if parts is None:
                bound.info("inbound_part", number=number, part=index, total=total)
                self.metrics.inbound_sms(provider, "part")
                return f"part {index} of {total}"
            text, message_id = "".join(parts), f"{number}:concat:{ref}"
        action = rules.keyword(text)
        bound = bound.bind(number=number, message_id=message_id, keyword=action)
        job = await store.find_origin(provider, number, sms.in_reply_to, now - self.config.http.inbound_window)
        when = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        word = " ".join(text.split()).upper()[:20]
        mail = status_mail.for_inbound(job, number, text, action, word, when, self.config) if job else None
        detail = (f"{action.upper()} by SMS from {number}" if action else f"SMS reply from {number}: "
                  + " ".join(text.split())[:300])
        key = f"inbound:{provider}:{message_id}" if message_id else None
        optout = {"stop": "add", "start": "remove"}.get(action or "")
        if not await store.record_inbound(key, job.id if job else None, number, detail, optout, mail, now):
            bound.info("inbound_duplicate")
            self.metrics.inbound_sms(provider, "duplicate")
            return "duplicate"
        kind = action or "reply"
        if job is None:
            bound.info("inbound_unmatched", applied=optout)
            self.metrics.inbound_sms(provider, kind if action else "unmatched")
            return f"{kind} (no SMS of ours to answer)" if action else "no SMS of ours to answer"
        bound.info("inbound_received", job_id=job.id, mailed=mail is not None)
        self.metrics.inbound_sms(provider, kind)
        return kind


def _e164(number: str | None) -> str | None:
    """The phone that wrote, as E.164 when it is a mobile number (as jobs store them); other
    digit strings (a landline, a short code) as given; None when it is no number at all."""
    text = (number or "").strip()
    if not text:
        return None
    try:
        return normalise(text if text.startswith(("+", "0")) else f"+{text}")
    except ValueError:
        return text[:32] if text.lstrip("+").isdigit() else None


async def _request(request: web.Request, public_url: str | None) -> CallbackRequest:
    """The webhook as its parser reads it: query, then the body's fields over them."""
    fields: dict[str, Any] = dict(request.query)
    body = b""
    if request.content_type.startswith("multipart/"):
        # read as a form (the raw body is not kept: no provider signs a multipart post)
        fields.update(await _form(request))
    elif request.can_read_body:
        body = await request.read()
    if body and request.content_type == "application/json":
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ValueError("the body is not JSON") from None
        if not isinstance(parsed, dict):
            raise ValueError("the JSON body is not an object")
        fields.update(parsed)
    elif body:
        fields.update(await _form(request))
    url = f"{public_url.rstrip('/')}{request.path_qs}" if public_url else str(request.url)
    return CallbackRequest(method=request.method, url=url, headers=request.headers, query=dict(request.query),
                           body=body, content_type=request.content_type, fields=fields)


async def _form(request: web.Request) -> dict[str, str]:
    """The form fields of the body (none for a type that is not a form); ``ValueError`` if unreadable."""
    try:
        form = await request.post()
    except (ValueError, UnicodeDecodeError, AssertionError) as exc:
        raise ValueError(f"the form cannot be read ({type(exc).__name__})") from None
    return {k: v for k, v in form.items() if isinstance(v, str)}
