"""The PostgreSQL schema and its versioned migrations.

The same concepts as the SQLite schema (``schema.py``, version 3): messages and their
idempotency keys, jobs with leases and client references, the ledger and its running
balances, replies, IMAP cursors, opt-outs. PostgreSQL has its own version numbers (its
version 2 is SQLite's version 4, its version 4 SQLite's version 7).

Several bridges may start at once against one database: ``migrate`` runs in one
transaction under ``pg_advisory_xact_lock``, so exactly one of them applies a version and
the others find it applied when the lock is theirs.
"""

from __future__ import annotations

import asyncpg

from bridge.errors import StoreError

SCHEMA_VERSION = 4

_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE messages (
    id BIGSERIAL PRIMARY KEY,
    key TEXT UNIQUE,
    message_id TEXT,
    login TEXT,
    reply_to TEXT,
    summary TEXT NOT NULL,
    outcome TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL
);
-- Deferred: the keys are inserted first (that is the dedupe, across instances), the
-- message they point to a moment later in the same transaction.
CREATE TABLE message_keys (
    key TEXT PRIMARY KEY,
    message BIGINT NOT NULL REFERENCES messages(id) DEFERRABLE INITIALLY DEFERRED
);
CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    message BIGINT NOT NULL REFERENCES messages(id),
    login TEXT NOT NULL,
    number TEXT NOT NULL,
    text TEXT NOT NULL,
    sender TEXT,
    parts INTEGER NOT NULL,
    cost INTEGER NOT NULL,
    unicode BOOLEAN NOT NULL,
    low_cost BOOLEAN NOT NULL,
    category TEXT NOT NULL DEFAULT 'transactional',
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    provider TEXT,
    provider_message_id TEXT,
    last_error TEXT,
    client_ref TEXT,
    called_at DOUBLE PRECISION,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION
);
CREATE INDEX jobs_due ON jobs (next_attempt_at, id) WHERE state = 'queued';
CREATE INDEX jobs_leased ON jobs (lease_until) WHERE state IN ('claimed', 'calling');
CREATE INDEX jobs_unknown ON jobs (id) WHERE state = 'unknown';
CREATE INDEX jobs_state ON jobs (state, id);
CREATE INDEX jobs_message ON jobs (message);
CREATE INDEX jobs_number_created ON jobs (number, created_at);
CREATE INDEX jobs_login_created ON jobs (login, created_at);
CREATE INDEX jobs_called ON jobs (called_at);
CREATE INDEX jobs_client_ref ON jobs (client_ref);
CREATE TABLE ledger (
    id BIGSERIAL PRIMARY KEY,
    login TEXT NOT NULL,
    amount INTEGER NOT NULL,
    reason TEXT NOT NULL,
    job BIGINT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX ledger_login ON ledger (login, created_at);
CREATE TABLE balances (login TEXT PRIMARY KEY, balance BIGINT NOT NULL);
CREATE TABLE replies (
    id BIGSERIAL PRIMARY KEY,
    to_addr TEXT NOT NULL,
    code INTEGER NOT NULL,
    message BYTEA NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    last_error TEXT
);
CREATE INDEX replies_due ON replies (next_attempt_at) WHERE state = 'queued';
CREATE INDEX replies_to ON replies (to_addr, created_at);
CREATE TABLE mailboxes (name TEXT PRIMARY KEY, uidvalidity BIGINT NOT NULL, last_uid BIGINT NOT NULL);
CREATE TABLE optouts (
    number TEXT NOT NULL,
    sender TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (number, sender)
)
"""

# Replies counted per mailbox (+tag folded) and per domain for the backscatter caps; the
# provider's message id indexed for delivery reports (as SQLite's versions 3 and 4).
_V2 = """
ALTER TABLE replies ADD COLUMN cap_mailbox TEXT, ADD COLUMN cap_domain TEXT;
UPDATE replies SET cap_mailbox = to_addr;
CREATE INDEX replies_mailbox ON replies (cap_mailbox, created_at);
CREATE INDEX replies_domain ON replies (cap_domain, created_at);
CREATE INDEX replies_created ON replies (created_at);
CREATE INDEX jobs_provider_message ON jobs (provider_message_id) WHERE provider_message_id IS NOT NULL
"""

# What happened to a job after its call, and the keys of webhooks already read (SQLite's v5).
_V3 = """
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    job BIGINT,
    at DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    key TEXT UNIQUE
);
CREATE INDEX events_job ON events (job) WHERE job IS NOT NULL;
CREATE INDEX events_at ON events (at)
"""

#: What version 4 adds, filled in for rows already there (the upgrade, and ``store copy``
#: into PostgreSQL): each job's rank among the jobs of its (number, account) and among those
#: of its account, in the order they were inserted; each debit or refund's running total of
#: the account's spend (debits less refunds).
RANK_FILLS = (
    "UPDATE jobs SET nseq = r.n, lseq = r.l FROM (SELECT id, "
    "row_number() OVER (PARTITION BY number, login ORDER BY id) AS n, "
    "row_number() OVER (PARTITION BY login ORDER BY id) AS l FROM jobs) AS r WHERE jobs.id = r.id",
    "UPDATE ledger SET spent = r.s FROM (SELECT id, SUM(-amount) OVER (PARTITION BY login ORDER BY id) AS s "
    "FROM ledger WHERE reason IN ('debit', 'refund')) AS r WHERE ledger.id = r.id",
)

# The caps count by rank and running total, as on SQLite (its schema 7): a few index seeks
# per count, however many SMS or credits the window holds. The ranks and totals are
# written under the account's balances row lock (``pg_intake``, ``pg_sql.move``), so
# instances never hand out one rank twice. Failed and cancelled jobs, which the counts
# take off, get partial indexes of their own.
_V4 = ";\n".join((
    "ALTER TABLE jobs ADD COLUMN nseq BIGINT, ADD COLUMN lseq BIGINT",
    "ALTER TABLE ledger ADD COLUMN spent BIGINT",
    *RANK_FILLS,
    "CREATE INDEX jobs_number_seq ON jobs (number, login, nseq)",
    "CREATE INDEX jobs_number_window ON jobs (number, login, created_at, nseq)",
    "CREATE INDEX jobs_number_dropped ON jobs (number, login, created_at) WHERE state IN ('failed', 'cancelled')",
    "CREATE INDEX jobs_login_seq ON jobs (login, lseq)",
    "DROP INDEX jobs_login_created",
    "CREATE INDEX jobs_login_created ON jobs (login, created_at, lseq)",
    "CREATE INDEX jobs_login_dropped ON jobs (login, created_at) WHERE state IN ('failed', 'cancelled')",
    "CREATE INDEX ledger_spent ON ledger (login, id) INCLUDE (spent) WHERE reason IN ('debit', 'refund')",
    "CREATE INDEX ledger_spent_at ON ledger (login, created_at, id) INCLUDE (spent) "
    "WHERE reason IN ('debit', 'refund')",
))

#: version -> SQL that brings the previous version up to it.
MIGRATIONS: dict[int, str] = {1: _V1, 2: _V2, 3: _V3, 4: _V4}

#: The advisory lock every migrating bridge takes (one per schema: see ``lock_key``).
MIGRATE_LOCK = "mail2sms:migrate"


async def migrate(conn: asyncpg.Connection, migrations: dict[int, str] = MIGRATIONS) -> int:
    """Bring the current schema up to the newest version; return the version it was at."""
    target_version = max(migrations)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1 || current_schema(), 0))",
                           MIGRATE_LOCK)
        has_meta = await conn.fetchval("SELECT to_regclass('meta') IS NOT NULL")
        version = int(await conn.fetchval("SELECT value FROM meta WHERE key='schema'") or 0) if has_meta else 0
        if version > target_version:
            raise StoreError(f"store schema {version} is newer than this bridge ({target_version})")
        for target in range(version + 1, target_version + 1):
            await conn.execute(migrations[target])
            await conn.execute(
                "INSERT INTO meta VALUES ('schema', $1) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                str(target),
            )
        return version
