"""``mail2sms queue show JOB``: the life of one SMS, from the mail to the status mails.

``format_history`` is pure (the store's ``job_history`` in, text out); ``show`` reads the
store and prints. Times are UTC, as in ``queue list``. The store keeps one row per job,
not one per provider call: what is shown of the calls is the number of attempts and the
last one (provider, client reference, when it started, the provider's message id, the
last error). Every call that did not end in a plain ``sent`` (next provider, retry,
unknown, refused), delivery reports and SMS replies are stored as events and shown in the
timeline.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from bridge.model import Job

EXIT_OK, EXIT_RUNTIME = 0, 1


async def show(store, job_id: int) -> int:
    """Print the history of ``job_id``; exit code 1 when there is no such job."""
    history = await store.job_history(job_id)
    if history is None:
        print(f"job {job_id} does not exist")
        return EXIT_RUNTIME
    print(format_history(history))
    return EXIT_OK


def format_history(history: dict[str, Any]) -> str:
    """The job's summary, then its timeline (see ``Store.job_history`` for the keys)."""
    job: Job = history["job"]
    mail = history["mail"]
    lines = [f"Job {job.id}: {job.state.value}", *_job_lines(job, history)]
    lines += ["", "Mail", *_mail_lines(mail, history["siblings"])]
    lines += ["", "Timeline (UTC)"]
    lines += [f"  {_when(when)}  {what}" for when, what in sorted(_events(job, history), key=lambda e: e[0])]
    replies = history["replies"]
    lines += ["", "Status mails for this mail"]
    if not replies:
        lines.append("  none" if mail["message_id"] and mail["reply_to"] else
                     "  none can be linked (the mail had no Message-ID or no reply address)")
    for reply in replies:
        lines.append(f"  #{reply['id']} status {reply['code']} to {reply['to_addr']}: {_reply_state(reply)}")
    return "\n".join(lines)


def _job_lines(job: Job, history: dict[str, Any]) -> list[str]:
    text = f"{job.parts} part{'s' if job.parts > 1 else ''}, {'UCS-2' if job.unicode else 'GSM-7'}, " \
           f"{job.category}, {'low-cost' if job.low_cost else 'premium'} route, {job.cost} credit" \
           f"{'s' if job.cost != 1 else ''}"
    return [
        _field("number", job.number),
        _field("account", job.login),
        _field("sender", job.sender or "(provider default)"),
        _field("format", text),
        _field("text", _one_line(job.text)),
        _field("attempts", str(job.attempts)),
        _field("provider", job.provider or "-"),
        _field("reference", job.client_ref or "-"),
        _field("message id", job.provider_message_id or "-"),
        _field("last error", job.last_error or "-"),
    ]


def _mail_lines(mail: dict[str, Any], siblings: list[int]) -> list[str]:
    return [
        _field("Message-ID", f"<{mail['message_id'].strip('<>')}>" if mail["message_id"] else "(none)"),
        _field("reply to", mail["reply_to"] or "(no status mails: unsafe to answer)"),
        _field("subject", mail["summary"] or "(empty)"),
        _field("received", _when(mail["received_at"])),
        _field("outcome", mail["outcome"]),
        _field("other jobs", ", ".join(map(str, siblings)) if siblings else "none"),
    ]


def _events(job: Job, history: dict[str, Any]) -> list[tuple[float, str]]:
    """(time, what) for everything the store dated."""
    mail = history["mail"]
    events = [(mail["received_at"], f"mail received ({mail['outcome']})"),
              (job.created_at, f"job created for {job.number}")]
    for row in history["ledger"]:
        amount = row["amount"]
        events.append((row["created_at"], f"{row['reason']}: {'+' if amount > 0 else ''}{amount} "
                                          f"credit{'s' if abs(amount) != 1 else ''}"))
    if job.called_at is not None:
        events.append((job.called_at, f"call #{job.attempts} to {job.provider} started "
                                      f"(reference {job.client_ref or '-'})"))
    if job.state.value == "queued" and job.next_attempt_at > job.created_at:
        events.append((job.next_attempt_at, "due (next attempt)"))
    events.append((history["updated_at"], f"now {job.state.value}" +
                   (f": {job.last_error}" if job.last_error else "")))
    for reply in history["replies"]:
        events.append((reply["created_at"], f"status {reply['code']} mail queued to {reply['to_addr']}"))
    for event in history.get("events", ()):
        events.append((event["at"], _EVENT_LABELS.get(event["kind"], "") + event["detail"]))
    return events


#: How each kind of stored event reads in the timeline.
_EVENT_LABELS = {"report": "delivery report: ", "inbound": "", "call": ""}


def _reply_state(reply: dict[str, Any]) -> str:
    attempts = reply["attempts"]
    text = f"{reply['state']} after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else reply["state"]
    if reply["last_error"] and reply["state"] != "sent":
        text += f" (last error: {reply['last_error']})"
    return text


def _one_line(text: str, limit: int = 160) -> str:
    flat = " | ".join(text.splitlines())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def _field(name: str, value: str) -> str:
    return f"  {name:<12} {value}"


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
