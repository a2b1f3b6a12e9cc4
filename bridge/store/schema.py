"""The SQLite schema and its versioned migrations (run at open, in one transaction).

Version 3 splits the old ``sending`` state into ``claimed`` and ``calling`` with leases
(jobs found ``sending`` may have gone out, so they become ``unknown``), records the client
reference sent to the provider, hides API keys left in ``messages.summary``, and counts
replies per mailbox (``+tag`` folded) and per domain for the backscatter caps. Version 4
indexes the provider's message id and the client reference, which delivery reports look
jobs up by. Version 5 adds ``events``: what happened to a job after its call (delivery
reports, SMS replies, opt-outs by SMS), and the keys that drop a webhook delivered twice.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bridge.errors import StoreError
from bridge.text import redact_subject

SCHEMA_VERSION = 9

_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    key TEXT UNIQUE,
    message_id TEXT,
    login TEXT,
    reply_to TEXT,
    summary TEXT NOT NULL,
    outcome TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    message INTEGER NOT NULL REFERENCES messages(id),
    login TEXT NOT NULL,
    number TEXT NOT NULL,
    text TEXT NOT NULL,
    sender TEXT,
    parts INTEGER NOT NULL,
    cost INTEGER NOT NULL,
    unicode INTEGER NOT NULL,
    low_cost INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    provider TEXT,
    provider_message_id TEXT,
    last_error TEXT
);
CREATE INDEX jobs_due ON jobs(state, next_attempt_at);
CREATE TABLE ledger (
    id INTEGER PRIMARY KEY,
    login TEXT NOT NULL,
    amount INTEGER NOT NULL,
    reason TEXT NOT NULL,
    job INTEGER,
    created_at REAL NOT NULL
);
CREATE INDEX ledger_login ON ledger(login);
CREATE TABLE balances (login TEXT PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE replies (
    id INTEGER PRIMARY KEY,
    to_addr TEXT NOT NULL,
    code INTEGER NOT NULL,
    message BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    last_error TEXT
);
CREATE INDEX replies_due ON replies(state, next_attempt_at);
CREATE INDEX replies_to ON replies(to_addr, created_at)
"""

_V2 = """
CREATE TABLE message_keys (key TEXT PRIMARY KEY, message INTEGER NOT NULL REFERENCES messages(id));
INSERT INTO message_keys (key, message) SELECT key, id FROM messages WHERE key IS NOT NULL;
CREATE TABLE mailboxes (name TEXT PRIMARY KEY, uidvalidity INTEGER NOT NULL, last_uid INTEGER NOT NULL);
CREATE TABLE optouts (
    number TEXT NOT NULL,
    sender TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (number, sender)
);
ALTER TABLE jobs ADD COLUMN category TEXT NOT NULL DEFAULT 'transactional';
CREATE INDEX jobs_number_created ON jobs(number, created_at);
CREATE INDEX jobs_login_created ON jobs(login, created_at)
"""

_V3 = """
ALTER TABLE jobs ADD COLUMN client_ref TEXT;
ALTER TABLE jobs ADD COLUMN called_at REAL;
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_until REAL;
UPDATE jobs SET state='unknown', last_error=COALESCE(last_error, 'interrupted while sending (before version 3); not re-sent') WHERE state='sending';
UPDATE messages SET summary=redact_subject(summary);
ALTER TABLE replies ADD COLUMN cap_mailbox TEXT;
ALTER TABLE replies ADD COLUMN cap_domain TEXT;
UPDATE replies SET cap_mailbox=to_addr;
CREATE INDEX replies_mailbox ON replies(cap_mailbox, created_at);
CREATE INDEX replies_domain ON replies(cap_domain, created_at);
CREATE INDEX replies_created ON replies(created_at);
CREATE INDEX jobs_message ON jobs(message);
CREATE INDEX jobs_leased ON jobs(state, lease_until)
"""

_V4 = """
CREATE INDEX jobs_provider_message ON jobs(provider_message_id) WHERE provider_message_id IS NOT NULL;
CREATE INDEX jobs_client_ref ON jobs(client_ref) WHERE client_ref IS NOT NULL
"""

_V5 = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    job INTEGER,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    key TEXT UNIQUE
);
CREATE INDEX events_job ON events(job) WHERE job IS NOT NULL;
CREATE INDEX events_at ON events(at)
"""

# The caps' counts (intake, inside the commit of every mail) read indexes alone, however
# many SMS a number or an account had in the window: the hourly count per number through
# (number, created_at, login), the daily count per account through (login, created_at),
# each less the few failed or cancelled jobs, which do not count, found through partial
# indexes (a job's state changes on its way to sent touch none of these); the day's spend
# through (login, created_at, reason, amount) instead of every ledger row of the account.
_V6 = """
DROP INDEX jobs_number_created;
CREATE INDEX jobs_number_created ON jobs(number, created_at, login);
CREATE INDEX jobs_number_dropped ON jobs(number, created_at) WHERE state IN ('failed', 'cancelled');
CREATE INDEX jobs_login_dropped ON jobs(login, created_at) WHERE state IN ('failed', 'cancelled');
DROP INDEX ledger_login;
CREATE INDEX ledger_login ON ledger(login, created_at, reason, amount)
"""

#: What schema 7 adds, filled in for rows already there (the upgrade, and ``store copy``
#: into SQLite): each job's rank among the jobs of its (number, account) and among those of
#: its account, in the order they were inserted; each debit or refund's running total of the
#: account's spend (debits less refunds).
RANK_FILLS = (
    "UPDATE jobs SET nseq=r.n, lseq=r.l FROM (SELECT id, "
    "ROW_NUMBER() OVER (PARTITION BY number, login ORDER BY id) AS n, "
    "ROW_NUMBER() OVER (PARTITION BY login ORDER BY id) AS l FROM jobs) AS r WHERE jobs.id=r.id",
    "UPDATE ledger SET spent=r.s FROM (SELECT id, SUM(-amount) OVER (PARTITION BY login ORDER BY id) AS s "
    "FROM ledger WHERE reason IN ('debit', 'refund')) AS r WHERE ledger.id=r.id",
)

# The caps' counts cost a few index seeks each, however many SMS or credits the window
# holds: a job carries its rank among the jobs of its (number, account) (``nseq``) and of
# its account (``lseq``), so a window's count is the newest job's rank less the rank of
# the window's first one, plus one (less its failed or cancelled jobs, through their
# partial indexes); a debit or refund carries the account's running spend (``spent``), so
# a window's spend is the newest total less the last one before the window. Schema 6 read
# one index entry per SMS of the window, inside the commit every SMTP session waits for:
# 5,000 SMS to one pager number in the hour cost each new mail to it 5,000 entries.
_V7 = "\n".join(statement + ";" for statement in (
    "ALTER TABLE jobs ADD COLUMN nseq INTEGER",
    "ALTER TABLE jobs ADD COLUMN lseq INTEGER",
    "ALTER TABLE ledger ADD COLUMN spent INTEGER",
    *RANK_FILLS,
    "CREATE INDEX jobs_number_seq ON jobs(number, login, nseq)",
    "DROP INDEX jobs_number_created",
    "CREATE INDEX jobs_number_created ON jobs(number, created_at, login, nseq)",
    "CREATE INDEX jobs_login_seq ON jobs(login, lseq)",
    "DROP INDEX jobs_login_created",
    "CREATE INDEX jobs_login_created ON jobs(login, created_at, lseq)",
    "CREATE INDEX ledger_spent_at ON ledger(login, created_at, id, spent) WHERE reason IN ('debit', 'refund')",
    "DROP INDEX ledger_login",
    "CREATE INDEX ledger_login ON ledger(login)",
))

# Every mail writes its content key twice, and each write went to a random place of a
# unique index: ``messages.key`` (schema 1) and ``message_keys`` (schema 2, every key of a
# mail, the one the duplicate check reads), a rowid table beside its key index. Each cost a
# B-tree page per mail in every commit's WAL. ``messages.key`` keeps its value, without an
# index (nothing looks a mail up by it: the check reads ``message_keys``), and
# ``message_keys`` becomes its key index alone (WITHOUT ROWID). SQLite cannot drop a
# UNIQUE constraint, so both tables are rebuilt (``migrate`` runs with foreign keys off).
_V8 = """
CREATE TABLE messages_v8 (
    id INTEGER PRIMARY KEY,
    key TEXT,
    message_id TEXT,
    login TEXT,
    reply_to TEXT,
    summary TEXT NOT NULL,
    outcome TEXT NOT NULL,
    received_at REAL NOT NULL
);
INSERT INTO messages_v8 (id, key, message_id, login, reply_to, summary, outcome, received_at)
    SELECT id, key, message_id, login, reply_to, summary, outcome, received_at FROM messages;
DROP TABLE messages;
ALTER TABLE messages_v8 RENAME TO messages;
CREATE TABLE message_keys_v8 (key TEXT PRIMARY KEY, message INTEGER NOT NULL REFERENCES messages(id)) WITHOUT ROWID;
INSERT INTO message_keys_v8 (key, message) SELECT key, message FROM message_keys ORDER BY key;
DROP TABLE message_keys;
ALTER TABLE message_keys_v8 RENAME TO message_keys
"""

#: version -> SQL that brings the previous version up to it.
# ``jobs_leased`` (state, lease_until) changed with every job's every state change (an entry
# in at intake, out and in again at the claim and at the settle: a fifth of the index
# writes in a job's life) for the sweep alone, which reads the jobs claimed or calling:
# those few are found as well by ``jobs_due``'s leading ``state``.
_V9 = "DROP INDEX jobs_leased"

MIGRATIONS: dict[int, str] = {1: _V1, 2: _V2, 3: _V3, 4: _V4, 5: _V5, 6: _V6, 7: _V7, 8: _V8, 9: _V9}


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, ``synchronous=FULL``."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")   # the promise: 250 only after fsync
    conn.execute("PRAGMA foreign_keys=ON")
    conn.create_function("redact_subject", 1, _redact, deterministic=True)
    return conn


def _redact(value: str | None) -> str | None:
    return None if value is None else redact_subject(value)


def migrate(conn: sqlite3.Connection, migrations: dict[int, str] = MIGRATIONS) -> int:
    """Bring the store up to the newest version; return the version it was at.

    Foreign keys are off while it runs: a migration may rebuild a table others refer to,
    which SQLite allows only so (a rebuild copies every row with its id, so every reference
    still finds its row). It all commits or none of it does.
    """
    target_version = max(migrations)
    conn.execute("PRAGMA foreign_keys=OFF")  # outside the transaction, where it takes effect
    try:
        return _migrate(conn, migrations, target_version)
    finally:
        conn.execute("PRAGMA foreign_keys=ON")


def _migrate(conn: sqlite3.Connection, migrations: dict[int, str], target_version: int) -> int:
    conn.execute("BEGIN IMMEDIATE")
    try:
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        version = 0
        if has_meta:
            version = int(conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0])
        if version > target_version:
            raise StoreError(f"store schema {version} is newer than this bridge ({target_version})")
        for target in range(version + 1, target_version + 1):
            for statement in migrations[target].split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(target),))
        conn.execute("COMMIT")
        return version
    except BaseException:
        conn.execute("ROLLBACK")
        raise
