"""What a user would check after the storm: one SMS or one status per number, credits exact.

``verdict()`` compares what the clients sent, what the gateway received, what the relay got
and what the store says; it returns the counts to print and the list of broken promises.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from chaos_fakes import Behaviour, Call, FlakyGateway, StatusMail
from chaos_harness import OPENING, PRICE_PER_PART, SETTLE, Delivery, Kill, Mail, Snapshot

#: Statuses that report success, never a failure.
_SUCCESS = {100, 101}


@dataclass
class Verdict:
    counts: dict[str, object] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def report(self, limit: int = 40) -> str:
        shown = self.problems[:limit]
        more = len(self.problems) - len(shown)
        return "\n".join(f"- {p}" for p in shown) + (f"\n- ... and {more} more" if more > 0 else "")


def verdict(
    mails: list[Mail], delivery: Delivery, gateway: FlakyGateway, statuses: list[StatusMail],
    store: Snapshot, kills: list[Kill], *, unknown_allowed: bool,
) -> Verdict:
    """Every broken promise, with the counts of the run."""
    v = Verdict()
    sms = Counter((c.number, c.text) for c in gateway.received())
    jobs_by_pair: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    for job_id, number, text, state, _provider in store.jobs:
        jobs_by_pair[(number, text)].append((job_id, state))
    job_states = Counter(state for *_, state, _p in store.jobs)
    distinct, repeated = _distinct_statuses(statuses)
    by_parent: dict[str, list[StatusMail]] = defaultdict(list)
    for mail in distinct:
        by_parent[mail.in_reply_to.strip("<>")].append(mail)

    _check_intake(v, mails, delivery)
    expected = {(n, m.text) for m in mails if m.index in delivery.accepted for n in m.valid}
    for pair, count in sms.items():
        if count > 1:
            v.problem(f"SMS received {count} times: {pair}")
        if pair not in expected:
            v.problem(f"SMS nobody asked for (or for a refused mail): {pair}")
    for mail in mails:
        if mail.index in delivery.accepted:
            _check_mail(v, mail, sms, jobs_by_pair, by_parent.get(mail.bare_id, []), unknown_allowed)
    _check_jobs(v, store, expected, jobs_by_pair, sms)
    _check_ledger(v, store)
    unknown = [(i, n, t) for i, n, t, s, _p in store.jobs if s == "unknown"]
    if unknown_allowed:
        _check_unknown_bound(v, unknown, gateway, kills, store.unknown_errors)
    elif unknown:
        v.problems.insert(0, f"{len(unknown)} jobs left unknown, e.g. {unknown[:5]}")
    v.counts.update(
        mails=len(mails), accepted=len(delivery.accepted), smtp_attempts=delivery.attempts,
        resent=delivery.resent, sms_expected=len(expected), sms_received=sum(sms.values()),
        sms_duplicates=sum(c - 1 for c in sms.values() if c > 1), status_mails=len(distinct),
        status_mails_redelivered=repeated, status_codes=dict(Counter(m.code for m in distinct)),
        jobs=dict(job_states), unknown=len(unknown), kills=len(kills),
        in_flight_at_kills=[k.in_flight for k in kills],
        in_flight_at_kills_with_settle=[k.in_flight_settled for k in kills],
        gateway_answers=gateway.counts(), lookups=gateway.lookups,
    )
    return v


def _distinct_statuses(statuses: list[StatusMail]) -> tuple[list[StatusMail], int]:
    """Status mails once each: the same mail (same Message-ID) relayed again after a crash
    between the relay's 250 and the daemon's commit is one mail to its reader."""
    seen: dict[str, StatusMail] = {}
    for mail in statuses:
        seen.setdefault(mail.message_id or f"#{id(mail)}", mail)
    return list(seen.values()), len(statuses) - len(seen)


def _check_intake(v: Verdict, mails: list[Mail], delivery: Delivery) -> None:
    missing = [m.index for m in mails if m.index not in delivery.accepted]
    if missing:
        v.problem(f"{len(missing)} mails never got 250 to DATA, e.g. {missing[:10]}")
    for index, answer in list(delivery.refused.items())[:10]:
        v.problem(f"mail {index} refused with {answer}")


def _mentions(body: str, number: str) -> bool:
    return number in body or ("0" + number[3:]) in body


def _check_mail(v, mail, sms, jobs_by_pair, replies, unknown_allowed) -> None:
    own = [r for r in replies if r.code in mail.status]
    if mail.status and len(own) != 1:
        v.problem(f"mail {mail.index} ({mail.message_id}) wanted one status {sorted(mail.status)}, "
                  f"got {[r.code for r in replies]}")
    failures = [r for r in replies if r.code not in mail.status and r.code not in _SUCCESS]
    for number in mail.valid:
        received = sms[(number, mail.text)]
        explained = [r for r in failures if _mentions(r.body, number)]
        states = [s for _, s in jobs_by_pair.get((number, mail.text), [])]
        if received == 1 and not explained:
            continue
        if received == 0 and len(explained) == 1:
            continue
        if unknown_allowed and states == ["unknown"] and not explained:
            continue                             # bounded separately
        v.problem(f"mail {mail.index} number {number}: {received} SMS, failure statuses "
                  f"{[r.code for r in explained]}, job states {states}")
    stray = [r for r in failures if not any(_mentions(r.body, n) for n in mail.valid)]
    if stray:
        v.problem(f"mail {mail.index}: unexplained status mails {[r.code for r in stray]}")


def _check_jobs(v, store: Snapshot, expected, jobs_by_pair, sms) -> None:
    for pair, jobs in jobs_by_pair.items():
        if len(jobs) > 1:
            v.problem(f"{len(jobs)} jobs for one number of one mail: {pair} {jobs}")
        if pair not in expected:
            v.problem(f"job nobody asked for: {pair} {jobs}")
        for job_id, state in jobs:
            if state == "sent" and not sms[pair]:
                v.problem(f"job {job_id} is sent but the gateway never received {pair}")
            if state == "failed" and sms[pair]:
                v.problem(f"job {job_id} is failed (refunded) but the gateway received {pair}")
    for pair in expected - set(jobs_by_pair):
        v.problem(f"accepted but no job in the store: {pair}")


def _check_ledger(v: Verdict, store: Snapshot) -> None:
    states = {job_id: state for job_id, _n, _t, state, _p in store.jobs}
    for login, balance in store.balances.items():
        rows = [r for r in store.ledger if r[0] == login]
        per_job = sum(amount for _l, amount, _r, job in rows if job is not None)
        other = sum(amount for _l, amount, _r, job in rows if job is None)
        if other not in (0, OPENING) or balance != OPENING + per_job:
            v.problem(f"{login}: balance {balance} != opening {OPENING} + job movements {per_job} "
                      f"(other ledger rows: {other})")
        debits = -sum(a for _l, a, _r, job in rows if job is not None and a < 0)
        refunds = sum(a for _l, a, _r, job in rows if job is not None and a > 0)
        owed = PRICE_PER_PART * sum(1 for s in states.values() if s != "failed")
        if debits - refunds != owed:
            v.problem(f"{login}: debits {debits} - refunds {refunds} != cost of jobs not failed {owed}")
    net: Counter = Counter()
    for _l, amount, _r, job in store.ledger:
        if job is not None:
            net[job] += amount
    for job_id, state in states.items():
        want = 0 if state == "failed" else -PRICE_PER_PART
        if net[job_id] != want:
            v.problem(f"job {job_id} ({state}): ledger net {net[job_id]}, expected {want}")


#: How the bridge words an ambiguous call it gave up waiting on (see providers/base.py).
_TIMED_OUT = ("no answer in time", "connection lost")
#: What the sweep writes on a job it found 'calling' under a dead owner's lease (leases here
#: outlast the run, so only a kill makes an owner dead): the store itself says the call was on
#: the wire at a kill. The kill-time snapshot and the gateway's clock can miss such a call on a
#: loaded machine (the gateway may read the request after the kill, and calls are matched to
#: jobs by number and text).
_SWEPT = "the bridge stopped during the call to "


def _check_unknown_bound(v: Verdict, unknown, gateway: FlakyGateway, kills: list[Kill],
                         errors: dict[int, str]) -> None:
    """Without a lookup, a job may stay unknown only if its last call was cut: by the
    client's own timeout, or by a kill (the gateway had read it and not answered, or had
    answered less than ``SETTLE`` s before the kill)."""
    last: dict[tuple[str, str], Call] = {}
    for call in gateway.calls:
        last[(call.number, call.text)] = call
    # The bridge's own timeouts: the gateway's silent calls, and answers read too late.
    late = sum(1 for i, *_ in unknown if errors.get(i, "").startswith(_TIMED_OUT))
    held = max(sum(1 for c in gateway.calls if c.behaviour is Behaviour.TIMEOUT), late)
    # The calls in flight at a kill, as the bridge recorded them before each call.
    bound = sum(max(len(k.calling), k.in_flight_settled) for k in kills) + held
    why: Counter = Counter()
    wrong = 0
    for job_id, number, text in unknown:
        reason, legit = _why_unknown(job_id, last.get((number, text)), kills)
        if not legit and errors.get(job_id, "").startswith(_TIMED_OUT):
            reason, legit = "the bridge timed out reading the answer (ambiguous)", True
        if not legit and errors.get(job_id, "").startswith(_SWEPT):
            reason, legit = "recorded as calling when its bridge was killed (the restart's sweep found it)", True
        why[reason] += 1
        if not legit:
            wrong += 1
            v.problem(f"job {job_id} ({number}) unknown: {reason} (last error: {errors.get(job_id) or '-'})")
    v.counts.update(unknown_bound=bound, unknown_why=dict(why))
    if wrong:
        v.problems.insert(0, f"{wrong} of {len(unknown)} unknown jobs were not cut by a kill or a timeout")
    if len(unknown) > bound:
        v.problems.insert(0, f"{len(unknown)} unknown jobs > {bound} (calls in flight at the kills + timeouts)")


def _why_unknown(job_id: int, call: Call | None, kills: list[Kill]) -> tuple[str, bool]:
    """Why a job may be unknown, judged from its last call and the next kill after it."""
    on_wire = any(job_id in k.calling for k in kills)
    if call is None:
        if on_wire:
            return "recorded as calling, killed before the request reached the gateway", True
        return "claimed but never called (the gateway never saw it)", False
    if on_wire and call.behaviour is not Behaviour.TIMEOUT:
        kill = next((k for k in kills if job_id in k.calling), None)
        if kill is not None and kill.at >= call.started:
            return "calling at a kill, its answer not yet recorded", True
    kill = next((k for k in kills if k.at >= call.started), None)
    if call.behaviour is Behaviour.TIMEOUT and (kill is None or (call.finished or kill.at) < kill.at):
        return "client timeout", True
    if kill is None:
        return f"last call answered {call.behaviour.value} after the last kill", False
    if call.finished is None or call.finished >= kill.at:
        return "call open at a kill", True
    if kill.at - call.finished <= SETTLE:
        return f"answered {call.behaviour.value} less than {SETTLE} s before a kill", True
    gap = f"{kill.at - call.finished:.2f} s"
    if call.behaviour.received:
        return f"answered {call.behaviour.value} {gap} before a kill, outcome never recorded", False
    return (f"answered {call.behaviour.value} {gap} before a kill, then never called again: the retry "
            "was not recorded in time, or the job was claimed again and not called"), False
