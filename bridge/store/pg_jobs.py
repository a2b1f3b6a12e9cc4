"""The job life cycle on PostgreSQL: claims, calls, settlements, the sweep, operator commands.

Every state change goes through ``pg_sql.transition`` (a compare-and-set on the states the
table allows), as ``sql_jobs`` does for SQLite. Claims pick due jobs with ``FOR UPDATE SKIP
LOCKED``: two instances claiming at once each take different jobs and neither waits for
the other. Claimed jobs are matched by their lease owner, jobs whose call started by the
client reference recorded before the call. The sweep is one ``UPDATE`` per state, safe to
run on every instance at once: a row another sweep already moved no longer matches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import asyncpg

from bridge import rules

from bridge.model import CALL_OUTCOME_SOURCES, IllegalTransition, Job, JobState as S, Settlement, check_transition
from bridge.store.pg_sql import Params, log, move, queue_reply, transition
from bridge.store.protocol import CallPlan, Handoff
from bridge.store.sql import JOB_COLUMNS, job_of


_FREE = ", lease_owner=NULL, lease_until=NULL"
#: The columns that go with each new state, from the settlement table ``u``.
_SETS = {
    S.SENT: ", provider_message_id=COALESCE(u.pmid, j.provider_message_id), last_error=u.error" + _FREE,
    S.DELIVERED: ", provider_message_id=COALESCE(u.pmid, j.provider_message_id), last_error=u.error" + _FREE,
    S.UNDELIVERED: ", provider_message_id=COALESCE(u.pmid, j.provider_message_id), last_error=u.error" + _FREE,
    S.UNKNOWN: ", provider_message_id=COALESCE(u.pmid, j.provider_message_id), last_error=u.error" + _FREE,
    S.CLAIMED: ", last_error=u.error, lease_until={lease_until}",
    S.QUEUED: ", last_error=u.error, next_attempt_at=COALESCE(u.retry_at, {now})" + _FREE,
    S.FAILED: ", last_error=u.error" + _FREE,
}


async def claim(conn: asyncpg.Connection, owner: str, now: float, limit: int, lease_until: float,
                only: Sequence[int], plan: CallPlan | None = None) -> list[Job]:
    """``_claim``, then the calls ``plan`` names recorded in the same transaction
    (``claimed -> calling``); those jobs come back ``calling``."""
    jobs = await _claim(conn, owner, now, limit, lease_until, only)
    if not (plan and jobs):
        return jobs
    called: dict[int, tuple[str, str]] = {}
    for ids, name, ref in plan(jobs):
        started = await start_call(conn, owner, ids, name, ref, now, lease_until)
        called.update((i, (name, ref)) for i in started)
    # attempts as claimed, as for any claimed job (start_call counted this one in the row)
    return [j.calling(*called[j.id]) if j.id in called else j for j in jobs]


async def _claim(conn: asyncpg.Connection, owner: str, now: float, limit: int, lease_until: float,
                 only: Sequence[int]) -> list[Job]:
    """Take up to ``limit`` due queued jobs under a lease (``queued -> claimed``): one statement,
    which also reads the opt-outs recorded since intake (``Job.suppressed``).

    ``SKIP LOCKED``: jobs another instance is claiming at this moment are passed over, not
    waited for; the ``UPDATE`` re-checks the state (the CAS) on the rows it locked.
    """
    sources = check_transition(S.QUEUED, S.CLAIMED)
    p = Params()
    among = f" AND id = ANY({p(list(only))}::bigint[])" if only else ""
    rows = await conn.fetch(
        f"WITH picked AS (SELECT id FROM jobs WHERE state = 'queued' AND next_attempt_at <= {p(now)}::float8{among} "
        f"ORDER BY next_attempt_at, id LIMIT {p(limit)} FOR UPDATE SKIP LOCKED), "
        f"taken AS (UPDATE jobs j SET state = {p(S.CLAIMED.value)}, updated_at = {p(now)}::float8, "
        f"lease_owner = {p(owner)}, lease_until = {p(lease_until)}::float8 FROM picked "
        f"WHERE j.id = picked.id AND j.state = ANY({p(sorted(x.value for x in sources))}::text[]) RETURNING j.*) "
        f"SELECT {JOB_COLUMNS.format(j='t')}, NULL AS mail_summary, "
        "ARRAY(SELECT o.sender FROM optouts o WHERE o.number = t.number) AS optout_senders "
        "FROM taken t JOIN messages m ON m.id = t.message ORDER BY t.next_attempt_at, t.id", *p.args)
    # Opt-outs since intake come with the claim (same statement), not one more round trip per call.
    return [dataclasses.replace(job_of(r), suppressed=rules.optout_reason(
        frozenset((r["number"], s) for s in r["optout_senders"]), r["number"], r["sender"])) for r in rows]


async def start_call(conn: asyncpg.Connection, owner: str, ids: Sequence[int], provider: str, ref: str,
                     now: float, lease_until: float) -> list[int]:
    """Record the call before it is made (``claimed -> calling``); the ids still ours."""
    p = Params()
    taken = await transition(conn, ids, S.CALLING, S.CLAIMED, now, {"lease_owner": owner},
                             _call_sets(p, provider, ref, now, lease_until), p)
    return sorted(taken)


def _call_sets(p: Params, provider: str, ref: str, now: float, lease_until: float) -> str:
    """What recording a call writes (provider, reference, time, lease end)."""
    return (f", provider={p(provider)}, client_ref={p(ref)}, called_at={p(now)}::float8, "
            f"attempts=attempts+1, lease_until={p(lease_until)}::float8")


async def hand_off(conn: asyncpg.Connection, jobs: list[Job], handoff: Handoff, now: float) -> tuple[Job, ...]:
    """Record the calls ``handoff`` plans for ``jobs``, just written by an intake commit, in
    its transaction (``queued -> claimed -> calling``, one statement a call); the jobs
    called, as ``calling``."""
    called: dict[int, tuple[str, str]] = {}
    for ids, name, ref in handoff.plan(jobs):
        p = Params()
        sets = f", lease_owner={p(handoff.owner)}" + _call_sets(p, name, ref, now, now + handoff.lease)
        got = await transition(conn, ids, S.CALLING, S.QUEUED, now, None, sets, p, via=S.CLAIMED)
        called.update((i, (name, ref)) for i in got)
    return tuple(j.calling(*called[j.id]) for j in jobs if j.id in called)


async def settle_call(conn: asyncpg.Connection, ref: str, items: Sequence[Settlement], now: float,
                      lease_until: float) -> list[int]:
    """Write the outcome of the call ``ref`` for each of its jobs; return the ids refused."""
    return await _settle(conn, items, now, lease_until, lambda state: CALL_OUTCOME_SOURCES[state], "client_ref", ref)


async def settle_claimed(conn: asyncpg.Connection, owner: str, items: Sequence[Settlement], now: float) -> list[int]:
    """Outcomes decided before any call: ``claimed -> queued | failed``; the ids refused."""
    return await _settle(conn, items, now, None, lambda state: S.CLAIMED, "lease_owner", owner)


def one_statement(items: Sequence[Settlement]) -> bool:
    """Whether settling ``items`` is one ``UPDATE`` (one target state, no refund to write)."""
    return len({i.state for i in items}) <= 1 and all(i.state is not S.FAILED for i in items)


async def _settle(conn, items, now, lease_until, sources_of, column: str, value: str) -> list[int]:
    """One ``UPDATE ... FROM unnest(...)`` per target state; refunds and replies for ``failed``."""
    refused: list[int] = []
    for state in dict.fromkeys(i.state for i in items):
        group = [i for i in items if i.state is state]
        matched = await _settle_group(conn, group, state, sources_of(state), now, lease_until, column, value)
        refused += [i.job_id for i in group if i.job_id not in matched]
        if state is S.FAILED:
            for item in group:
                if item.job_id in matched:
                    row = matched[item.job_id]
                    await move(conn, row["login"], row["cost"], "refund", item.job_id, now)
                    if item.reply is not None:
                        await queue_reply(conn, item.reply, now)
    return refused


async def _settle_group(conn, group: Sequence[Settlement], state: S, sources, now: float,
                        lease_until: float | None, column: str, value: str) -> dict[int, asyncpg.Record]:
    """The CAS for one target state, with each job's own columns, in one statement."""
    try:
        sources = check_transition(sources, state)
    except IllegalTransition as exc:
        log.error("illegal_transition", error=str(exc), job_ids=[i.job_id for i in group][:20])
        raise
    p = Params()
    table = (f"unnest({p([i.job_id for i in group])}::bigint[], {p([i.error for i in group])}::text[], "
             f"{p([i.provider_message_id for i in group])}::text[], "
             f"{p([None if i.retry_at is None else float(i.retry_at) for i in group])}::float8[]) "
             "AS u(id, error, pmid, retry_at)")
    sets = _SETS[state]
    if "{lease_until}" in sets:  # a placeholder only where used: an unused one has no type
        sets = sets.replace("{lease_until}", f"{p(lease_until)}::float8")
    if "{now}" in sets:
        sets = sets.replace("{now}", f"{p(now)}::float8")
    rows = await conn.fetch(
        f"UPDATE jobs j SET state={p(state.value)}, updated_at={p(now)}::float8{sets} FROM {table} "
        f"WHERE j.id = u.id AND j.state = ANY({p(sorted(s.value for s in sources))}::text[]) "
        f"AND j.{column} = {p(value)} RETURNING j.id, j.login, j.cost", *p.args)
    return {row["id"]: row for row in rows}


async def sweep(conn: asyncpg.Connection, now: float, dead_owners: Sequence[str]) -> tuple[list[int], list[int]]:
    """Expired leases: ``claimed -> queued`` (never called), ``calling -> unknown``.

    A lease expires at ``lease_until``, or at once when its owner is known to be dead.
    Returns (requeued ids, unknown ids).
    """
    p = Params()
    expired = f" AND (lease_until < {p(now)}::float8 OR lease_owner = ANY({p(list(dead_owners))}::text[]))"
    requeued = await _sweep_one(conn, S.QUEUED, S.CLAIMED, now, expired, _FREE, p)
    p = Params()
    expired = f" AND (lease_until < {p(now)}::float8 OR lease_owner = ANY({p(list(dead_owners))}::text[]))"
    note = (f"{_FREE}, last_error='the bridge stopped during the call to ' || COALESCE(provider, '?') "
            "|| ': it may have been sent; to be reconciled'")
    lost = await _sweep_one(conn, S.UNKNOWN, S.CALLING, now, expired, note, p)
    return requeued, lost


async def _sweep_one(conn, target: S, source: S, now: float, expired: str, sets: str, p: Params) -> list[int]:
    """Move every job of ``source`` whose lease expired to ``target``; their ids."""
    check_transition(source, target)
    rows = await conn.fetch(
        f"UPDATE jobs SET state={p(target.value)}, updated_at={p(now)}::float8{sets} "
        f"WHERE state={p(source.value)}{expired} RETURNING id", *p.args)
    return sorted(r["id"] for r in rows)


async def requeue(conn: asyncpg.Connection, job_id: int, now: float, channel: str) -> bool:
    """Operator: send a ``failed`` or ``unknown`` job again (re-debiting a refund)."""
    state = await conn.fetchval("SELECT state FROM jobs WHERE id=$1 FOR UPDATE", job_id)
    if state not in (S.FAILED.value, S.UNKNOWN.value):
        return False
    p = Params()
    sets = f", next_attempt_at={p(now)}::float8, client_ref=NULL"
    taken = await transition(conn, [job_id], S.QUEUED, S(state), now, sets=sets, p=p)
    if not taken:
        return False
    if state == S.FAILED.value:
        await move(conn, taken[job_id]["login"], -taken[job_id]["cost"], "debit", job_id, now)
    await conn.execute("SELECT pg_notify($1, '')", channel)
    return True


async def cancel(conn: asyncpg.Connection, job_id: int, now: float) -> bool:
    """Operator: a ``queued`` job is not sent after all; its credit is refunded."""
    taken = await transition(conn, [job_id], S.CANCELLED, S.QUEUED, now, sets=", last_error='cancelled by the operator'")
    if not taken:
        return False
    await move(conn, taken[job_id]["login"], taken[job_id]["cost"], "refund", job_id, now)
    return True


async def defer_logins(conn: asyncpg.Connection, logins: Sequence[str], until: float, reason: str,
                       now: float) -> int:
    """Push every due queued job of these accounts to ``until`` (not a state change)."""
    if not logins:
        return 0
    status = await conn.execute(
        "UPDATE jobs SET next_attempt_at=$1, last_error=$2, updated_at=$3 WHERE state='queued' "
        "AND next_attempt_at<$1 AND login = ANY($4::text[])", float(until), reason, float(now), list(logins))
    return int(status.split()[-1])


_FINISHED = ["sent", "delivered", "undelivered", "failed", "cancelled"]


async def prune(conn: asyncpg.Connection, before: float) -> dict[str, int]:
    """Delete what finished before ``before``: jobs, replies, and mails left without jobs.

    The ledger is kept whole (balances are its sum). A mail's dedupe keys go with it, so a
    copy delivered again after this point would be taken as new (as ``sql_jobs.prune``).
    """
    jobs = await conn.fetchval("WITH d AS (DELETE FROM jobs WHERE state = ANY($1::text[]) AND updated_at < $2 "
                               "RETURNING 1) SELECT COUNT(*) FROM d", _FINISHED, float(before))
    replies = await conn.fetchval("WITH d AS (DELETE FROM replies WHERE state IN ('sent', 'failed') "
                                  "AND created_at < $1 RETURNING 1) SELECT COUNT(*) FROM d", float(before))
    old = "SELECT id FROM messages m WHERE received_at < $1 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.message = m.id)"
    await conn.execute(f"DELETE FROM message_keys WHERE message IN ({old})", float(before))
    messages = await conn.fetchval(f"WITH d AS (DELETE FROM messages WHERE id IN ({old}) RETURNING 1) "
                                   "SELECT COUNT(*) FROM d", float(before))
    return {"jobs": jobs, "replies": replies, "messages": messages}
