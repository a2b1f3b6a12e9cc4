"""Transaction bodies for the job life cycle (run on the writer thread).

Every state change goes through ``sql.transition`` (a compare-and-set on the states the
table allows). Claimed jobs are matched by their lease owner, jobs whose call started by
the client reference recorded before the call, so a late answer still settles a job the
sweep already marked ``unknown``, and never one that was claimed again since.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from bridge import rules
from bridge.model import CALL_OUTCOME_SOURCES, Job, JobState as S, Settlement
from bridge.store.protocol import CallPlan
from bridge.store.sql import JOB_SELECT, charges, job_of, marks, move, queue_reply, transition



def claim(conn, owner: str, now: float, limit: int, lease_until: float, only: Sequence[int],
          plan: CallPlan | None = None) -> list[Job]:
    """Take up to ``limit`` due queued jobs under a lease (``queued -> claimed``) and record
    the calls ``plan`` names for them (``claimed -> calling``), in the same transaction.

    A job the plan calls makes both moves in one compare-and-set on ``queued`` (``transition``
    with ``via``): the ``claimed`` it passes through would never be committed, and a second
    ``UPDATE`` of the same rows only rewrote their index entries again. The plan sees the jobs
    as read, with the opt-outs recorded since intake (``Job.suppressed``), which the same
    statement reads.
    """
    among = f" AND j.id IN ({marks(only)})" if only else ""
    rows = conn.execute(
        f"{_CLAIM_SELECT} WHERE j.state='queued' AND j.next_attempt_at<=?{among} "
        "ORDER BY j.next_attempt_at, j.id LIMIT ?",
        (now, *only, limit),
    ).fetchall()
    if not rows:
        return []
    jobs = [_suppressed(job_of(row), row[_OPTOUTS]) for row in rows]
    calls = plan(jobs) if plan else []
    planned = {i for ids, _, _ in calls for i in ids}
    taken = transition(conn, [j.id for j in jobs if j.id not in planned], S.CLAIMED, S.QUEUED, now,
                       sets=", lease_owner=?, lease_until=?", set_args=(owner, lease_until))
    called = _record_calls(conn, calls, owner, now, lease_until)
    taken |= called.keys()
    # attempts as claimed, as for any claimed job (the row counts the call)
    return [j.calling(*called[j.id]) if j.id in called else j for j in jobs if j.id in taken]


#: A claim reads each job with the senders its number opted out of since ("" for a global
#: STOP), joined by ``_SEPARATOR``, as column ``_OPTOUTS`` (after an empty subject): one
#: statement, not a second one for the opt-outs of the numbers claimed.
_SEPARATOR = "\x1f"
_CLAIM_SELECT = JOB_SELECT.replace(
    " FROM jobs", ", NULL, (SELECT group_concat(o.sender, char(31)) FROM optouts o WHERE o.number=j.number) FROM jobs", 1)
_OPTOUTS = 24


def _suppressed(job: Job, senders: str | None) -> Job:
    """``job`` with the opt-out that now holds it back, if any (``senders`` as claimed)."""
    if senders is None:
        return job
    reason = rules.optout_reason(frozenset((job.number, s) for s in senders.split(_SEPARATOR)), job.number, job.sender)
    return dataclasses.replace(job, suppressed=reason) if reason else job


def _record_calls(conn, calls: list[tuple[list[int], str, str]], owner: str, now: float,
                 lease_until: float) -> dict[int, tuple[str, str]]:
    """Record planned calls of queued jobs (``queued -> claimed -> calling``, leased to
    ``owner``), all in one compare-and-set: (provider, reference) by job id recorded."""
    each = {i: (name, ref) for ids, name, ref in calls for i in ids}
    got = transition(conn, each, S.CALLING, S.QUEUED, now, sets=", lease_owner=?" + _CALL_SETS,
                     set_args=(owner, now, lease_until), via=S.CLAIMED, each=each, each_sets=_EACH_CALL)
    return {i: each[i] for i in got}


#: What recording a call writes (time, lease end; with ``transition``'s ``each``, the
#: provider and reference of each job's call).
_CALL_SETS = ", called_at=?, attempts=attempts+1, lease_until=?"
_EACH_CALL = ("provider={}", "client_ref={}")


def start_call(conn, owner: str, ids: Sequence[int], provider: str, ref: str, now: float,
               lease_until: float) -> list[int]:
    """Record the call before it is made (``claimed -> calling``); the ids still ours."""
    taken = transition(conn, ids, S.CALLING, S.CLAIMED, now, " AND lease_owner=?", (owner,),
                       ", provider=?, client_ref=?" + _CALL_SETS, (provider, ref, now, lease_until))
    return sorted(taken)


def settle_call(conn, ref: str, items: Sequence[Settlement], now: float, lease_until: float) -> list[int]:
    """Write the outcome of the call ``ref`` for each of its jobs; return the ids refused."""
    by_state: dict[S, list[Settlement]] = {}
    for item in items:
        by_state.setdefault(item.state, []).append(item)
    return [job_id for state, group in by_state.items()
            for job_id in _settle(conn, group, CALL_OUTCOME_SOURCES[state], now, lease_until,
                                  " AND client_ref=?", (ref,))]


def plain_sent(items: Sequence[Settlement]) -> bool:
    """Whether every outcome of a call is a plain ``sent`` (no error): what ``settle_sent``
    writes. Nothing else goes with those: no refund, no status mail, no history line."""
    return all(item.state is S.SENT and item.error is None for item in items)


#: What a plain ``sent`` writes of each job's own: the time, the provider's message id.
_EACH_SENT = ("updated_at={}", "provider_message_id=COALESCE({}, provider_message_id)")


def settle_sent(conn, calls: Sequence[tuple[str, Sequence[Settlement], float]]) -> list[list[int]]:
    """The plain ``sent`` outcomes (``plain_sent``) of several calls, each ``(reference,
    outcomes, now)``, in one compare-and-set: each job matched by its own call's reference,
    as ``settle_call`` matches it. Returns the ids refused, call by call.

    A job named by two of the calls (a late answer beside a new call) is settled by the
    first; the later call is then written alone, after it, as ``settle_call`` would.
    """
    rows = [(item.job_id, (now, item.provider_message_id, ref)) for ref, items, now in calls for item in items]
    each = dict(rows)
    later: list[int] = []
    if len(each) < len(rows):  # a job named twice: the first call that names it takes it
        each, later = {}, []
        for index, (ref, items, now) in enumerate(calls):
            if any(item.job_id in each for item in items):
                later.append(index)
            else:
                each.update((item.job_id, (now, item.provider_message_id, ref)) for item in items)
    matched = transition(conn, each, S.SENT, CALL_OUTCOME_SOURCES[S.SENT], calls[0][2],
                         sets=", last_error=NULL, lease_owner=NULL, lease_until=NULL",
                         each=each, each_sets=_EACH_SENT, each_where=("client_ref={}",))
    refused = [[item.job_id for item in items if item.job_id not in matched] for _, items, _ in calls]
    for index in later:
        ref, items, now = calls[index]
        refused[index] = settle_call(conn, ref, items, now, now)
    return refused


def settle_claimed(conn, owner: str, items: Sequence[Settlement], now: float) -> list[int]:
    """Outcomes decided before any call: ``claimed -> queued | failed``; the ids refused."""
    refused: list[int] = []
    for state in dict.fromkeys(i.state for i in items):
        group = [i for i in items if i.state is state]
        refused += _settle(conn, group, S.CLAIMED, now, None, " AND lease_owner=?", (owner,))
    return refused


def _settle(conn, group: Sequence[Settlement], sources, now: float, lease_until: float | None,
            where: str, where_args: Sequence) -> list[int]:
    """Move ``group`` (one target state) from ``sources`` with the columns that go with that
    state; refund and status mail for ``failed``. Returns the ids refused.

    Jobs whose columns take the same values (one job; a bulk call's, which share the call's
    message id) are one ``UPDATE``; otherwise one ``UPDATE`` for the states and one
    ``executemany`` for each job's columns (a bulk call settles hundreds of jobs).
    """
    state = group[0].state
    sets, args = _columns(group[0], now, lease_until)
    ids = [i.job_id for i in group]
    values = [_columns(i, now, lease_until)[1] for i in group]
    if all(v == args for v in values):
        matched = transition(conn, ids, state, sources, now, where, where_args, sets, args)
    else:
        matched = transition(conn, ids, state, sources, now, where, where_args)
        conn.executemany(f"UPDATE jobs SET {sets[2:]} WHERE id=?",
                         [(*v, i) for i, v in zip(ids, values) if i in matched])
    if state is S.FAILED:
        charged = charges(conn, matched)
        for item in group:
            if item.job_id in matched:
                login, cost = charged[item.job_id]
                move(conn, login, cost, "refund", item.job_id, now)
                if item.reply is not None:
                    queue_reply(conn, item.reply, now)
    return [i.job_id for i in group if i.job_id not in matched]


def _columns(item: Settlement, now: float, lease_until: float | None) -> tuple[str, tuple]:
    """The assignments (``", column=?"``) and values that go with ``item``'s new state."""
    state = item.state
    if state is S.CLAIMED:
        return ", last_error=?, lease_until=?", (item.error, lease_until)
    if state is S.QUEUED:
        return (", last_error=?, next_attempt_at=?, lease_owner=NULL, lease_until=NULL",
                (item.error, item.retry_at if item.retry_at is not None else now))
    if state is S.FAILED:
        return ", last_error=?, lease_owner=NULL, lease_until=NULL", (item.error,)
    # sent, delivered, undelivered, unknown: the provider's id when it gave one
    return (", provider_message_id=COALESCE(?, provider_message_id), last_error=?, lease_owner=NULL, "
            "lease_until=NULL", (item.provider_message_id, item.error))


def sweep(conn, now: float, dead_owners: Sequence[str]) -> tuple[list[int], list[int]]:
    """Expired leases: ``claimed -> queued`` (never called), ``calling -> unknown``.

    A lease expires at ``lease_until``, or at once when its owner is known to be dead.
    Returns (requeued ids, unknown ids).
    """
    dead = f" OR lease_owner IN ({marks(dead_owners)})" if dead_owners else ""
    expired = f"(lease_until<?{dead})"
    args = (now, *dead_owners)
    claimed = [r[0] for r in conn.execute(f"SELECT id FROM jobs WHERE state='claimed' AND {expired}", args)]
    calling = conn.execute(f"SELECT id, provider FROM jobs WHERE state='calling' AND {expired}", args).fetchall()
    requeued = transition(conn, claimed, S.QUEUED, S.CLAIMED, now)
    if requeued:
        conn.execute(f"UPDATE jobs SET lease_owner=NULL, lease_until=NULL WHERE id IN ({marks(list(requeued))})",
                     tuple(requeued))
    lost = transition(conn, [r["id"] for r in calling], S.UNKNOWN, S.CALLING, now)
    for row in calling:
        if row["id"] in lost:
            conn.execute(
                "UPDATE jobs SET lease_owner=NULL, lease_until=NULL, last_error=? WHERE id=?",
                (f"the bridge stopped during the call to {row['provider']}: it may have been sent; "
                 "to be reconciled", row["id"]),
            )
    return sorted(requeued), sorted(lost)


def requeue(conn, job_id: int, now: float) -> bool:
    """Operator: send a ``failed`` or ``unknown`` job again (re-debiting a refund)."""
    row = conn.execute("SELECT state, login, cost FROM jobs WHERE id=?", (job_id,)).fetchone()
    if row is None or row["state"] not in (S.FAILED.value, S.UNKNOWN.value):
        return False
    if not transition(conn, [job_id], S.QUEUED, S(row["state"]), now):
        return False
    if row["state"] == S.FAILED.value:
        move(conn, row["login"], -row["cost"], "debit", job_id, now)
    conn.execute("UPDATE jobs SET next_attempt_at=?, client_ref=NULL WHERE id=?", (now, job_id))
    return True


def cancel(conn, job_id: int, now: float) -> bool:
    """Operator: a ``queued`` job is not sent after all; its credit is refunded."""
    if not transition(conn, [job_id], S.CANCELLED, S.QUEUED, now):
        return False
    conn.execute("UPDATE jobs SET last_error='cancelled by the operator' WHERE id=?", (job_id,))
    login, cost = charges(conn, [job_id])[job_id]
    move(conn, login, cost, "refund", job_id, now)
    return True


def defer_logins(conn, logins: Sequence[str], until: float, reason: str, now: float) -> int:
    """Push every due queued job of these accounts to ``until`` (not a state change)."""
    if not logins:
        return 0
    return conn.execute(
        f"UPDATE jobs SET next_attempt_at=?, last_error=?, updated_at=? WHERE state='queued' "
        f"AND next_attempt_at<? AND login IN ({marks(logins)})",
        (until, reason, now, until, *logins),
    ).rowcount


_FINISHED = ("sent", "delivered", "undelivered", "failed", "cancelled")


def prune(conn, before: float) -> dict[str, int]:
    """Delete what finished before ``before``: jobs, replies, and mails left without jobs.

    The ledger is kept whole (balances are its sum), and the highest job id is remembered so
    that no id is given again. A mail's dedupe keys go with it, so a
    copy delivered again after this point would be taken as new.
    """
    done = ",".join("?" * len(_FINISHED))
    top = conn.execute("SELECT MAX(id) FROM jobs").fetchone()[0]
    if top is not None:  # no id is given again, even once every job is gone (``sql_intake.NEXT_JOB_ID``)
        conn.execute("INSERT INTO meta VALUES ('job_id_floor', ?) ON CONFLICT(key) DO UPDATE "
                     "SET value=MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))", (top,))
    jobs = conn.execute(f"DELETE FROM jobs WHERE state IN ({done}) AND updated_at<?", (*_FINISHED, before)).rowcount
    replies = conn.execute("DELETE FROM replies WHERE state IN ('sent', 'failed') AND created_at<?", (before,)).rowcount
    old = "SELECT id FROM messages m WHERE received_at<? AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.message=m.id)"
    conn.execute(f"DELETE FROM message_keys WHERE message IN ({old})", (before,))
    messages = conn.execute(f"DELETE FROM messages WHERE id IN ({old})", (before,)).rowcount
    return {"jobs": jobs, "replies": replies, "messages": messages}
