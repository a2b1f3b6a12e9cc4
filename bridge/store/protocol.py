"""What the daemon needs from a store: the ``Store`` protocol every backend implements.

Two backends: SQLite (``bridge.store.sqlite``, one bridge) and PostgreSQL
(``bridge.store.postgres``, several bridges sharing one queue). Every job state change is
a compare-and-set inside the backend (see ``bridge.model`` for the table); nothing outside
a backend writes SQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, NamedTuple, Protocol

from bridge.model import Acceptance, Job, JobState, NewReply, Plan, Reply, Settlement

#: Given the jobs a claim took (opt-outs read), the calls to record at once:
#: (job ids, provider, client reference). Runs inside the claim's transaction (on
#: SQLite's writer thread), so it must be pure: it may not touch the event loop.
CallPlan = Callable[[list[Job]], list[tuple[list[int], str, str]]]


class Handoff(NamedTuple):
    """The dispatcher's offer to take a mail's due jobs straight from its intake commit.

    ``plan`` (a ``CallPlan``) is given the jobs the commit has just written, as a claim's
    plan is given the jobs it took; the calls it names are recorded in the same transaction
    (``queued -> claimed -> calling``, leased to ``owner`` for ``lease`` seconds, as a
    claim records them) and come back in ``Acceptance.calling``: the dispatcher calls them
    once the commit is on disk, with no claim in between.
    """

    owner: str
    lease: float
    plan: CallPlan


class MailboxLock:
    """Whether this instance may poll a mailbox: truthy while granted and not lost.

    ``lost`` is set when a granted lock goes away (PostgreSQL: the connection holding it
    broke, so another instance may take the mailbox over); the poller should stop then.
    """

    def __init__(self, held: bool) -> None:
        self.held = held
        self.lost = asyncio.Event()

    def __bool__(self) -> bool:
        return self.held and not self.lost.is_set()


class Store(Protocol):
    """The durable state of the bridge."""

    async def close(self) -> None:
        """Finish queued writes and release the connections."""

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the store answers."""

    # accounts and credit
    async def open_accounts(self, opening: Mapping[str, int], now: float) -> None:
        """Opening balances, applied once per account."""

    async def credit(self, login: str, amount: int, reason: str, now: float) -> int:
        """A manual credit movement; the new balance."""

    async def balances(self) -> dict[str, int]:
        """Every account's balance."""

    async def ledger(self, login: str) -> list[dict[str, Any]]:
        """Every credit movement of an account."""

    # intake
    async def commit(self, plan: Plan, now: float, handoff: Handoff | None = None) -> Acceptance:
        """Apply intake's plan in one transaction; with ``handoff``, record the calls it plans
        for the new due jobs in the same transaction (``Acceptance.calling``)."""

    # the job life cycle
    async def claim(self, owner: str, now: float, limit: int, lease: float, only: Sequence[int] = (),
                    plan: CallPlan | None = None) -> list[Job]:
        """queued -> claimed, under a lease; with ``plan``, the calls it names are recorded in
        the same transaction (claimed -> calling, as ``start_call``): those jobs come back
        ``calling`` with their provider and reference."""

    async def start_call(self, owner: str, ids: Sequence[int], provider: str, ref: str, now: float,
                         lease: float) -> list[int]:
        """claimed -> calling, recording provider and reference before the call."""

    async def settle_call(self, ref: str, items: Sequence[Settlement], now: float, lease: float = 0.0) -> list[int]:
        """The outcomes of one call, in one write; the ids refused by the CAS."""

    async def settle_claimed(self, owner: str, items: Sequence[Settlement], now: float) -> list[int]:
        """claimed -> queued | failed without a call; the ids refused by the CAS."""

    async def sweep(self, now: float, dead_owners: Sequence[str] = ()) -> tuple[list[int], list[int]]:
        """Expired leases: claimed -> queued, calling -> unknown."""

    async def lease_owners(self) -> list[str]:
        """Owners of the leases held now."""

    async def defer_logins(self, logins: Sequence[str], until: float, reason: str, now: float) -> int:
        """Push the due queued jobs of these accounts to ``until``."""

    async def next_due(self) -> float | None:
        """When the next queued job is due."""

    async def unknown_jobs(self, called_before: float, limit: int, after_id: int = 0) -> list[Job]:
        """Unknown jobs to reconcile."""

    async def sent_times(self, since: float) -> dict[str, list[float]]:
        """Call times per account since ``since``."""

    async def requeue(self, job_id: int, now: float) -> bool:
        """Operator: failed/unknown -> queued."""

    async def cancel(self, job_id: int, now: float) -> bool:
        """Operator: queued -> cancelled, refunded."""

    async def prune(self, before: float) -> dict[str, int]:
        """Operator: delete what finished before ``before`` (the ledger is kept)."""

    async def jobs(self, state: str | None = None, limit: int = 50) -> list[Job]:
        """Jobs, newest first."""

    async def job(self, job_id: int) -> Job | None:
        """One job."""

    async def count_jobs(self) -> dict[str, int]:
        """Jobs per state."""

    async def job_history(self, job_id: int) -> dict[str, Any] | None:
        """Read-only: one job and its mail, sibling jobs, ledger rows and status mails.

        Keys: ``job`` (``Job``), ``updated_at``, ``mail`` (id, message_id, login, reply_to,
        summary, outcome, received_at), ``siblings`` (ids of the same mail's other jobs),
        ``ledger`` (amount, reason, created_at), ``replies`` (id, to_addr, code, state,
        attempts, last_error, created_at: the status mails answering the mail's Message-ID),
        ``events`` (at, kind, detail: delivery reports and SMS replies, oldest first).
        """

    async def find_job(self, provider: str, message_id: str | None = None,
                       client_ref: str | None = None) -> Job | None:
        """Read-only: the newest job sent through ``provider`` with this provider message id,
        else with this client reference (delivery reports)."""

    # webhooks
    async def report_delivery(self, job_id: int, state: JobState, error: str | None,
                              provider_message_id: str | None, detail: str, reply: NewReply | None,
                              now: float) -> bool:
        """Move ``job_id`` to ``delivered``/``undelivered`` (CAS), note it, queue ``reply``: one
        transaction. False (and nothing written) when the job is in no state a report moves."""

    async def record_inbound(self, key: str | None, job_id: int | None, number: str, detail: str,
                             optout: Literal["add", "remove"] | None, reply: NewReply | None, now: float) -> bool:
        """Note an inbound SMS, apply STOP (``add``, source ``sms``) or START (``remove``), queue
        ``reply``: one transaction. False (nothing written) when ``key`` was recorded before."""

    async def inbound_part(self, prefix: str, index: int, total: int, text: str, now: float) -> list[str] | None:
        """Keep part ``index`` of ``total`` of a long inbound SMS; every part's text, in order,
        once all are kept (else None). A part posted twice is kept once."""

    async def find_origin(self, provider: str, number: str, in_reply_to: str | None, since: float) -> Job | None:
        """Read-only: the SMS an inbound one answers (by the provider's id, else the newest
        one to ``number`` through ``provider`` created since ``since``)."""

    # replies
    async def queue_reply(self, reply: NewReply, now: float) -> int | None:
        """Queue a status mail (None past the address's hourly cap)."""

    async def claim_replies(self, now: float, limit: int) -> list[Reply]:
        """Due replies."""

    async def retry_reply(self, reply_id: int, now: float) -> bool:
        """Operator: a failed status mail back to the queue."""

    async def finish_reply(self, reply_id: int, state: str, error: str | None, when: float, now: float) -> None:
        """A reply's outcome."""

    async def count_replies(self, state: str) -> int:
        """Read-only: how many replies are in ``state``."""

    async def replies(self, state: str | None = None) -> list[dict[str, Any]]:
        """Replies, oldest first."""

    # IMAP mailboxes and opt-outs
    async def mailbox_state(self, name: str) -> tuple[int, int] | None:
        """(UIDVALIDITY, last UID) of a mailbox."""

    async def set_mailbox_state(self, name: str, uidvalidity: int, last_uid: int) -> None:
        """Advance a mailbox cursor."""

    async def optout_add(self, number: str, sender: str | None, source: str, now: float) -> bool:
        """Suppress a number."""

    async def optout_remove(self, number: str, sender: str | None) -> bool:
        """Lift a suppression."""

    async def optouts(self) -> list[dict[str, Any]]:
        """Every suppression."""

    # several instances
    async def listen(self, on_wake: Callable[[], None], stop: asyncio.Event) -> None:
        """Call ``on_wake`` whenever any instance commits jobs, until ``stop`` is set."""

    def mailbox_lock(self, name: str) -> AbstractAsyncContextManager[MailboxLock]:
        """Hold the right to poll mailbox ``name`` for the duration of the block (if granted)."""
