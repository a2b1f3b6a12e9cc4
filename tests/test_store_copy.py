"""``mail2sms store migrate`` and ``mail2sms store copy``, run as a user would (subprocesses).

An installation on SQLite, with jobs in every common state, balances, ledger, replies,
opt-outs, dedupe keys and an IMAP cursor, moves to PostgreSQL and carries on there.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import asyncpg

from bridge.model import JobState, Limits, NewJob, NewReply, Plan, Settlement
from bridge.store import SqliteStore, open_url
from bridge.store.pg_schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from pg import pg_url  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parent.parent
S = JobState


def mail2sms(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m bridge ARGS`` from the repo root."""
    return subprocess.run([sys.executable, "-m", "bridge", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def plan(key: str, *numbers: str, cost: int = 1, extra_keys=()) -> Plan:
    return Plan(key=key, login="a", message_id=f"<{key}@example.org>", reply_to="alice@example.org",
                summary="a@***|...", extra_keys=extra_keys,
                jobs=tuple(NewJob(number=n, text=f"hi {key}", sender="SHOP", parts=cost, cost=cost) for n in numbers))


async def an_installation(path: Path) -> SqliteStore:
    """A SQLite store as a bridge leaves it: queued, held, sent and failed jobs, and the rest."""
    store = await SqliteStore.open(path)
    await store.open_accounts({"a": 50, "b": 7}, 0)
    await store.commit(plan("sent", "+33612121501", cost=2, extra_keys=("imap:work:INBOX:9:1",)), 1)
    await store.commit(plan("failed", "+33612121502"), 1)
    [sent, failed] = await store.claim("host:1:x", 2, 10, 60)
    await store.start_call("host:1:x", [sent.id], "partner", "m2s-1-1", 3, 60)
    await store.settle_call("m2s-1-1", [Settlement(sent.id, S.SENT, provider_message_id="P1")], 4)
    await store.settle_claimed("host:1:x", [Settlement(failed.id, S.FAILED, "no route",
                                                       reply=NewReply("alice@example.org", 122, b"Status: 122"))], 5)
    await store.commit(plan("queued", "+33612121503", "+33612121504"), 6)
    await store.optout_add("+33612121599", "SHOP", "cli", 7)
    await store.set_mailbox_state("work:INBOX", 9, 1)
    await store.credit("b", 3, "manual", 8)
    return store


async def snapshot(store) -> dict:
    """Everything a user can see of a store through its API."""
    return {
        "balances": await store.balances(),
        "ledger": [await store.ledger(login) for login in ("a", "b")],
        "jobs": await store.jobs(limit=100),
        "counts": await store.count_jobs(),
        "replies": await store.replies(),
        "optouts": await store.optouts(),
        "mailbox": await store.mailbox_state("work:INBOX"),
        "leases": await store.lease_owners(),
    }


class TestCopy:
    async def test_sqlite_installation_moves_to_postgresql(self, tmp_path, pg_url):
        """Everything arrives as it was; dedupe keys still work; new ids follow the copied ones."""
        source = await an_installation(tmp_path / "bridge.db")
        before = await snapshot(source)
        await source.close()
        copied = mail2sms("store", "copy", "--from", f"sqlite://{tmp_path / 'bridge.db'}", "--to", pg_url)
        assert copied.returncode == 0, copied.stderr
        assert "4 jobs" in copied.stdout and "3 messages" in copied.stdout
        target = await open_url(pg_url)
        try:
            assert await snapshot(target) == before
            assert (await target.commit(plan("sent", "+33612121501"), 10)).outcome == "duplicate"
            assert (await target.commit(plan("other", extra_keys=("imap:work:INBOX:9:1",)), 10)).outcome == "duplicate"
            fresh = await target.commit(plan("new", "+33612121505"), 10)
            assert fresh.job_ids[0] > max(job.id for job in before["jobs"])
            # the caps count what was copied: the day has 4 live SMS (the failed one is out)
            # and 5 credits (2 for "sent", the failed one refunded), +33612121505 1 SMS
            for limits in (Limits(per_number_per_hour=1), Limits(sms_per_day=4), Limits(spend_per_day=5)):
                capped = await target.commit(replace(plan(f"cap{limits}", "+33612121505"), limits=limits), 10)
                assert capped.job_ids == () and [r.code for r in capped.refused] == [127], limits
            assert [job.number for job in await target.claim("new-host:2:y", 11, 10, 60)] == [
                "+33612121503", "+33612121504", "+33612121505"]
        finally:
            await target.close()

    async def test_a_store_in_use_is_not_overwritten(self, tmp_path, pg_url):
        """Copying into a store that already has data is refused (exit 1) and changes nothing."""
        await (await an_installation(tmp_path / "bridge.db")).close()
        target = await open_url(pg_url)
        await target.open_accounts({"z": 1}, 0)
        await target.close()
        copied = mail2sms("store", "copy", "--from", f"sqlite://{tmp_path / 'bridge.db'}", "--to", pg_url)
        assert copied.returncode == 1 and "not empty" in copied.stderr
        target = await open_url(pg_url)
        try:
            assert await target.balances() == {"z": 1}
        finally:
            await target.close()

    async def test_a_copy_never_gives_a_pruned_jobs_id_again(self, tmp_path, pg_url):
        """SQLite -> PostgreSQL -> SQLite, every job pruned before each copy: a new mail in
        each copy still gets a job id above every id given before (an id is the job's client
        reference at the providers)."""
        source = await SqliteStore.open(tmp_path / "first.db")
        await source.open_accounts({"a": 50}, 0)
        for key in ("one", "two", "three"):
            await source.commit(plan(key, "+33612121501"), 1)
        jobs = await source.claim("me", 2, 10, 60)
        await source.settle_claimed("me", [Settlement(j.id, S.FAILED, "x") for j in jobs], 3)
        assert (await source.prune(before=10))["jobs"] == 3
        await source.close()
        given = max(j.id for j in jobs)
        copied = mail2sms("store", "copy", "--from", f"sqlite://{tmp_path / 'first.db'}", "--to", pg_url)
        assert copied.returncode == 0, copied.stderr
        target = await open_url(pg_url)
        try:
            (new,) = (await target.commit(plan("four", "+33612121501"), 20)).job_ids
            assert new > given
            claimed = await target.claim("me", 21, 10, 60)
            await target.settle_claimed("me", [Settlement(j.id, S.FAILED, "x") for j in claimed], 22)
            assert (await target.prune(before=30))["jobs"] == 1
        finally:
            await target.close()
        copied = mail2sms("store", "copy", "--from", pg_url, "--to", f"sqlite://{tmp_path / 'back.db'}")
        assert copied.returncode == 0, copied.stderr
        back = await open_url(f"sqlite://{tmp_path / 'back.db'}")
        try:
            (newer,) = (await back.commit(plan("five", "+33612121501"), 40)).job_ids
            assert newer > new
        finally:
            await back.close()

    async def test_a_copy_into_sqlite_keeps_the_caps(self, tmp_path, pg_url):
        """PostgreSQL -> SQLite: the SMS a number had this hour and an account's SMS and
        credits of the day still count against the caps (SQLite counts by ranks and running
        totals, which the copy fills in)."""
        source = await open_url(pg_url)
        await source.open_accounts({"a": 50}, 0)
        for key in ("one", "two"):
            await source.commit(plan(key, "+33612121501"), 10)
        await source.close()
        copied = mail2sms("store", "copy", "--from", pg_url, "--to", f"sqlite://{tmp_path / 'back.db'}")
        assert copied.returncode == 0, copied.stderr
        target = await open_url(f"sqlite://{tmp_path / 'back.db'}")
        try:
            capped = await target.commit(replace(plan("three", "+33612121501"), limits=Limits(per_number_per_hour=2)), 20)
            assert capped.job_ids == () and [r.code for r in capped.refused] == [127]
            other = await target.commit(replace(plan("four", "+33612121502"), limits=Limits(per_number_per_hour=2)), 20)
            assert len(other.job_ids) == 1
            for limits in (Limits(sms_per_day=3), Limits(spend_per_day=3)):  # the day: 3 SMS, 3 credits
                capped = await target.commit(replace(plan(f"day{limits}", "+33612121503"), limits=limits), 20)
                assert capped.job_ids == () and [r.code for r in capped.refused] == [127]
        finally:
            await target.close()

    async def test_the_admin_verbs_work_on_the_copy(self, tmp_path, pg_url):
        """After the switch, `accounts list` and `queue list` read the PostgreSQL store the config names."""
        await (await an_installation(tmp_path / "bridge.db")).close()
        assert mail2sms("store", "copy", "--from", f"sqlite://{tmp_path / 'bridge.db'}", "--to", pg_url).returncode == 0
        config = tmp_path / "config.yaml"
        config.write_text(f"store: {pg_url}\nsmtp: {{recipients: [m@example.com]}}\n"
                          "providers: {outbox: {type: file, path: outbox.jsonl}}\n"
                          "accounts: {a: {api_key: k, credits: 999, route: [outbox]}}\n")
        accounts = mail2sms("--config", str(config), "accounts", "list")
        assert accounts.returncode == 0, accounts.stderr
        assert " 46 " in accounts.stdout and "999" not in accounts.stdout   # the copied balance, no new opening
        queued = mail2sms("--config", str(config), "queue", "list", "--state", "queued")
        assert queued.returncode == 0 and queued.stdout.count("+3361212150") == 2


class TestMigrate:
    async def test_migrate_creates_the_schema_and_exits(self, pg_url):
        """`store migrate --url` on an empty database creates the tables, at this bridge's version."""
        migrated = mail2sms("store", "migrate", "--url", pg_url)
        assert migrated.returncode == 0, migrated.stderr
        conn = await asyncpg.connect(pg_url)
        try:
            assert await conn.fetchval("SELECT value FROM meta WHERE key='schema'") == str(PG_SCHEMA_VERSION)
        finally:
            await conn.close()

    async def test_migrate_the_configured_store(self, tmp_path):
        """Without --url, `store migrate` opens the store the config names."""
        config = tmp_path / "config.yaml"
        config.write_text("store: sqlite://bridge.db\nsmtp: {recipients: [m@example.com]}\n"
                          "providers: {outbox: {type: file, path: outbox.jsonl}}\n")
        migrated = mail2sms("--config", str(config), "store", "migrate")
        assert migrated.returncode == 0, migrated.stderr
        assert (tmp_path / "bridge.db").exists()
