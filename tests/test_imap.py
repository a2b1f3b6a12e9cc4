"""The IMAP poller against a real Dovecot on loopback: bridge running, SMS to the file provider.

The module shares one private Dovecot (tests/dovecot.py); each test gets its own mail
account on it and its own bridge store. Mail is put in with APPEND, or written straight
into the Maildir for big backlogs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import pytest
from pg import pg_url  # noqa: F401 - fixture
from conftest import ACCOUNT_KEY, base_settings, compose, make_config, smtp_send, wait_until
from dovecot import MailUser, dovecot, dovecot_server, dovecot_tls, dovecot_tls_server  # noqa: F401 - fixtures
from dovecot import free_port, running_dovecot
from structlog.testing import capture_logs

from bridge.config import Config
from bridge.imap import MailboxPoller
from bridge.intake import Outcome

PROCESSED = "mail2sms.processed"   # Dovecot's Maildir++ separator is "."
FAILED = "mail2sms.failed"


def outbox(tmp_path: Path) -> list[dict]:
    path = tmp_path / "outbox.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def number(i: int) -> str:
    """A distinct French mobile number per message (per-number hourly caps stay out of the way)."""
    return f"06{10000000 + i:08d}"


def alert(i: int, to: int | None = None) -> bytes:
    """A valid request for one SMS (to ``number(to)``, default ``number(i)``), Message-ID ``<alert-i@example.org>``."""
    return compose(
        f"arthur45@{ACCOUNT_KEY}|{number(i if to is None else to)}", f"Alert {i}", message_id=f"<alert-{i}@example.org>"
    )


def _raw_alert(i: int, to: int) -> bytes:
    """``alert(i, to)`` without the email package (cheap enough to generate while measuring)."""
    return (
        f"From: alice@example.org\r\nTo: mail2sms@example.com\r\nSubject: arthur45@{ACCOUNT_KEY}|{number(to)}\r\n"
        f"Message-ID: <alert-{i}@example.org>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nAlert {i}\r\n"
    ).encode()


def imap_settings(account: MailUser, **overrides: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1", "port": account.port, "tls": "none", "user": account.user, "password": account.password,
        "timeout": 5, **overrides,
    }


def config_for(tmp_path: Path, relay_port: int, account: MailUser | None, credits: int = 1000,
               http: dict[str, Any] | None = None, **imap: Any) -> Config:
    settings = base_settings(
        tmp_path, relay_port,
        accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": credits, "route": ["outbox"]}},
        **({"http": http} if http else {}),
    )
    if account is not None:
        settings["imap"] = {"work": imap_settings(account, **imap)}
    return make_config(tmp_path, settings)


@pytest.fixture
async def run_bridge(start_bridge):
    """``start_bridge``, checking that the daemon started the IMAP pollers itself."""

    async def start(config: Config):
        bridge = await start_bridge(config)
        pollers = [t for t in bridge.supervisor.tasks if t.get_name().startswith("imap:")]
        assert len(pollers) == len(config.imap), "Bridge.start must start one poller per mailbox"
        return bridge

    return start


async def _equals(awaitable: Any, expected: Any) -> bool:
    return await awaitable == expected


async def in_folder(account: MailUser, folder: str) -> list[str]:
    return await asyncio.to_thread(account.message_ids, folder)


async def wait_folder(account: MailUser, folder: str, count: int, timeout: float = 10.0) -> list[str]:
    """The folder's Message-IDs once it holds ``count`` messages (checked every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while True:
        ids = await in_folder(account, folder)
        if len(ids) == count:
            return ids
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} messages in {folder}, found {len(ids)}")
        await asyncio.sleep(0.1)


class TestDelivery:
    async def test_each_mail_is_one_sms_and_moves_to_processed(self, tmp_path, sink, dovecot, run_bridge):
        """Valid mails become exactly one SMS each and end in the processed folder."""
        _, relay_port = sink
        for i in range(3):
            dovecot.append(alert(i))
        await run_bridge(config_for(tmp_path, relay_port, dovecot))
        ids = await wait_folder(dovecot, PROCESSED, 3)
        assert sorted(ids) == [f"<alert-{i}@example.org>" for i in range(3)]
        await wait_until(lambda: len(outbox(tmp_path)) == 3, what="3 SMS")
        dovecot.append(alert(3))                                   # arrives while idling
        await wait_until(lambda: len(outbox(tmp_path)) == 4, what="SMS for the mail sent later")
        await wait_folder(dovecot, PROCESSED, 4)
        await asyncio.sleep(0.5)                                   # nothing more comes
        assert sorted(line["to"] for line in outbox(tmp_path)) == [f"+336{10000000 + i:08d}" for i in range(4)]
        assert await in_folder(dovecot, "INBOX") == []
        assert await in_folder(dovecot, FAILED) == []

    async def test_refused_mail_gets_a_status_and_goes_to_failed(self, tmp_path, sink, dovecot, run_bridge):
        """A refused request is answered with a numbered status and lands in the failed folder."""
        handler, relay_port = sink
        dovecot.append(compose("arthur45@wrong-key|0612121515", "Hi", message_id="<bad@example.org>"))
        await run_bridge(config_for(tmp_path, relay_port, dovecot))
        [reply] = await handler.wait_for(1)
        assert "Status: 102" in reply.get_content()
        assert reply["To"] == "alice@example.org"
        assert reply["In-Reply-To"] == "<bad@example.org>"
        assert await wait_folder(dovecot, FAILED, 1) == ["<bad@example.org>"]
        assert await in_folder(dovecot, "INBOX") == [] and await in_folder(dovecot, PROCESSED) == []
        assert outbox(tmp_path) == []

    async def test_folders_are_created_with_the_servers_separator(self, tmp_path, sink, dovecot, run_bridge):
        """``mail2sms/processed`` becomes ``mail2sms.processed`` on a server whose separator is ``.``."""
        _, relay_port = sink
        await run_bridge(config_for(tmp_path, relay_port, dovecot, processed="done/sms", failed="done/bad"))
        await wait_until(lambda: {"done.sms", "done.bad"} <= set(dovecot.folders()), what="folders")


    @pytest.mark.parametrize("missing", [("MOVE",), ("MOVE", "UIDPLUS")], ids=["no-move", "no-move-no-uidplus"])
    async def test_servers_without_move(self, missing, tmp_path, sink, dovecot, start_bridge):
        """Without MOVE the poller copies, flags \\Deleted and expunges (UID EXPUNGE with UIDPLUS)."""
        _, relay_port = sink
        imap = config_for(tmp_path, relay_port, dovecot).imap["work"]
        bridge = await start_bridge(config_for(tmp_path, relay_port, None))     # poller run by hand

        class Poller(MailboxPoller):
            async def _login(self) -> None:
                await super()._login()
                self._imap.protocol.capabilities -= set(missing)

        dovecot.append_many([alert(1), compose("arthur45@wrong-key|0612121515", "Hi", message_id="<bad@x>")])
        task = asyncio.create_task(Poller("work", imap, bridge.intake, bridge.store).run(bridge.stopping))
        assert await wait_folder(dovecot, PROCESSED, 1) == ["<alert-1@example.org>"]
        assert await wait_folder(dovecot, FAILED, 1) == ["<bad@x>"]
        assert await in_folder(dovecot, "INBOX") == []
        await bridge.stop()
        await asyncio.wait_for(task, 5)


class TestIdle:
    async def test_mail_appended_while_idling_is_sent_on_the_push(self, tmp_path, sink, dovecot, start_bridge):
        """Mail APPENDed during IDLE is sent on the server's push, again and again: no poll or renewal needed."""
        _, relay_port = sink
        # Neither a poll (1 h) nor an IDLE renewal (28 min) comes within the test's waits:
        # only the server's push can bring these mails in.
        imap = config_for(tmp_path, relay_port, dovecot, poll_interval=3600, idle_renew=1680).imap["work"]
        bridge = await start_bridge(config_for(tmp_path, relay_port, None))     # poller run by hand
        poller = MailboxPoller("work", imap, bridge.intake, bridge.store)

        def idling() -> bool:
            return poller._imap is not None and poller._imap.has_pending_idle()

        with capture_logs() as logs:
            task = asyncio.create_task(poller.run(bridge.stopping))
            for i in range(3):
                await wait_until(idling, what="the poller in IDLE")
                dovecot.append(alert(i))
                await wait_until(lambda: len(outbox(tmp_path)) == i + 1, what=f"SMS {i} pushed by IDLE")
            assert await wait_folder(dovecot, PROCESSED, 3) == [f"<alert-{i}@example.org>" for i in range(3)]
            await bridge.stop()
            await asyncio.wait_for(task, 5)
        assert [e["event"] for e in logs].count("imap_connected") == 1        # one session throughout
        assert not [e for e in logs if e["event"] in ("imap_error", "imap_store_failed")]


PUSH_SECRET = "push-0123456789abcdef"


@pytest.fixture(scope="module")
def push_server():
    """A private Dovecot that pushes each delivered mail to ``/imap/work/<secret>`` on the
    port it names (the test's bridge listens there)."""
    port = free_port()
    with running_dovecot(push_urls=[f"http://127.0.0.1:{port}/imap/work/{PUSH_SECRET}"]) as server:
        server.push_port = port
        yield server


@pytest.fixture
def pushing(push_server) -> MailUser:
    """A fresh account on ``push_server``, its pushes turned on."""
    account = push_server.add_user()
    account.enable_push()
    return account


def push_config(tmp_path: Path, relay_port: int, account: MailUser, port: int | None = None, **imap: Any) -> Config:
    """``config_for`` with the mailbox's ``push_secret`` and the HTTP listener Dovecot calls
    (on ``port``, default the push server's ``push_port``)."""
    listen = f"127.0.0.1:{port or account.server.push_port}"
    return config_for(tmp_path, relay_port, account, http={"listen": listen}, push_secret=PUSH_SECRET, **imap)


class TestPush:
    async def test_a_delivery_push_brings_mail_a_poll_would_find_in_an_hour(self, tmp_path, sink, pushing,
                                                                            run_bridge):
        """Polling once an hour (no IDLE), each mail Dovecot delivers is sent on its push alone."""
        _, relay_port = sink
        bridge = await run_bridge(push_config(tmp_path, relay_port, pushing, idle=False, poll_interval=3600))
        poller = bridge.pollers["work"]
        await wait_until(lambda: poller.active, what="the poller connected")
        with capture_logs() as logs:
            for i in range(3):
                await asyncio.to_thread(pushing.deliver_lda, alert(i))
                await wait_until(lambda: len(outbox(tmp_path)) == i + 1, what=f"SMS {i} brought by its push")
            assert await wait_folder(pushing, PROCESSED, 3) == [f"<alert-{i}@example.org>" for i in range(3)]
        assert [line["to"] for line in outbox(tmp_path)] == [f"+336{10000000 + i:08d}" for i in range(3)]
        assert bridge.metrics.imap_pushes.labels("work", "woken")._value.get() == 3
        assert not [e for e in logs if e["event"] in ("imap_connected", "imap_error")]   # one session

    async def test_a_push_during_idle_ends_it_and_the_session_goes_on(self, tmp_path, sink, pushing, run_bridge):
        """With IDLE, a push (even with nothing new) makes the poller look and IDLE again on
        the same connection; later mail still comes in."""
        _, relay_port = sink
        bridge = await run_bridge(push_config(tmp_path, relay_port, pushing, idle_renew=1680))
        poller = bridge.pollers["work"]

        def idling() -> bool:
            return poller._imap is not None and poller._imap.has_pending_idle()

        url = f"http://127.0.0.1:{bridge.web.port}/imap/work/{PUSH_SECRET}"
        await wait_until(idling, what="the poller in IDLE")
        with capture_logs() as logs:
            async with httpx.AsyncClient(timeout=10) as client:
                for _ in range(3):
                    await wait_until(idling, what="the poller in IDLE")
                    answer = await client.put(url, json={"event": "messageNew"})
                    assert answer.status_code == 200 and answer.json() == {"result": "woken"}
                    await wait_until(lambda: not poller._doorbell.is_set(), what="the push answered by a search")
            await asyncio.to_thread(pushing.deliver_lda, alert(7))
            await wait_until(lambda: len(outbox(tmp_path)) == 1, what="the SMS of a mail delivered later")
        assert not [e for e in logs if e["event"] in ("imap_connected", "imap_error")]

    async def test_pushes_during_a_search_count_once(self, tmp_path, sink, pushing, run_bridge):
        """Five pushes while the poller is about to search make that one search, not five."""
        _, relay_port = sink
        bridge = await run_bridge(push_config(tmp_path, relay_port, pushing, idle_renew=1680))
        poller = bridge.pollers["work"]

        def idling() -> bool:
            return poller._imap is not None and poller._imap.has_pending_idle()

        await wait_until(idling, what="the poller in IDLE")
        searches, held = [], asyncio.Event()

        async def hold() -> None:
            searches.append(1)
            await held.wait()

        poller.before_search = hold
        url = f"http://127.0.0.1:{bridge.web.port}/imap/work/{PUSH_SECRET}"
        async with httpx.AsyncClient(timeout=10) as client:
            await client.post(url)
            await wait_until(lambda: searches, what="the search the first push started")
            for _ in range(4):
                assert (await client.post(url)).json() == {"result": "woken"}
        held.set()
        await wait_until(idling, what="the poller back in IDLE")
        await asyncio.sleep(0.3)
        assert len(searches) == 1 and idling()

    async def test_push_answers(self, tmp_path, sink, start_bridge):
        """A wrong secret is 403 and counted; a mailbox without push is 404; GET is 405; a
        mailbox this bridge is not polling now (its server down) is ``standby``."""
        _, relay_port = sink
        down = {"host": "127.0.0.1", "port": free_port(), "tls": "none", "user": "u", "password": "p"}
        settings = base_settings(tmp_path, relay_port, http={"listen": "127.0.0.1:0"},
                                 imap={"work": {**down, "push_secret": PUSH_SECRET}, "other": down})
        bridge = await start_bridge(make_config(tmp_path, settings))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.web.port}", timeout=10) as client:
            before = (await client.get("/metrics")).text  # the pushable mailbox's series, at 0
            for result in ("woken", "standby", "forbidden"):
                assert f'mail2sms_imap_pushes_total{{mailbox="work",result="{result}"}} 0.0' in before
            assert 'mailbox="other"' not in before
            with capture_logs() as logs:
                wrong = await client.post(f"/imap/work/{PUSH_SECRET[:-1]}x")
            assert wrong.status_code == 403 and wrong.json() == {"error": "forbidden"}
            assert [e["event"] for e in logs if e["event"].startswith("imap_push")] == ["imap_push_forbidden"]
            assert PUSH_SECRET not in str(logs)
            assert (await client.post(f"/imap/other/{PUSH_SECRET}")).status_code == 404
            assert (await client.post(f"/imap/nowhere/{PUSH_SECRET}")).status_code == 404
            assert (await client.get(f"/imap/work/{PUSH_SECRET}")).status_code == 405
            standby = await client.post(f"/imap/work/{PUSH_SECRET}", content=b"anything")
            assert standby.status_code == 200 and standby.json() == {"result": "standby"}
        counted = {r: bridge.metrics.imap_pushes.labels("work", r)._value.get() for r in ("forbidden", "standby")}
        assert counted == {"forbidden": 1, "standby": 1}


class TestCrashes:
    async def test_crash_between_commit_and_move_sends_nothing_twice(self, tmp_path, sink, dovecot, start_bridge):
        """Killed after the commit but before the move: the restart sends nothing again and moves it."""
        _, relay_port = sink
        imap = config_for(tmp_path, relay_port, dovecot).imap["work"]
        plain = config_for(tmp_path, relay_port, None)              # pollers run by hand here
        dovecot.append(alert(1))
        bridge = await start_bridge(plain)
        poller = MailboxPoller("work", imap, bridge.intake, bridge.store)
        committed: list[Outcome] = []

        async def crash(uid: int, outcome: Outcome) -> None:
            committed.append(outcome)
            asyncio.current_task().cancel()                         # dies like a killed process
            await asyncio.sleep(0)

        poller.after_commit = crash
        task = asyncio.create_task(poller.run(bridge.stopping))
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        assert committed and committed[0].accepted
        await wait_until(lambda: len(outbox(tmp_path)) == 1, what="the SMS of the committed mail")
        assert await in_folder(dovecot, "INBOX") == ["<alert-1@example.org>"]   # never moved
        await bridge.stop()

        bridge = await start_bridge(plain)                          # restart on the same store
        dovecot.append(alert(1))      # and the same mail delivered again (new UID, same content)
        task = asyncio.create_task(MailboxPoller("work", imap, bridge.intake, bridge.store).run(bridge.stopping))
        assert await wait_folder(dovecot, PROCESSED, 2) == ["<alert-1@example.org>"] * 2
        assert await in_folder(dovecot, "INBOX") == []
        await asyncio.sleep(0.5)
        assert len(outbox(tmp_path)) == 1
        await bridge.stop()
        await asyncio.wait_for(task, 5)

    @pytest.mark.parametrize("waiting", ["idle", "polling"])
    async def test_mail_landing_just_before_the_last_search_is_not_left_waiting(
            self, waiting, tmp_path, sink, dovecot, start_bridge):
        """Dovecot searches the mailbox as it last reported it and tells of newer mail only
        after the SEARCH's result (``* SEARCH``, then ``* 1 EXISTS``), so a mail landing just
        before the last search of a catch-up is not in its result, and IDLE or NOOP will not
        report it again (nor ``* 1 RECENT``, when a mail client open on the mailbox took the
        flag): it must be picked up from that report, not at the next IDLE renewal (28 min
        here) or the next SELECT (a minute, polling)."""
        _, relay_port = sink
        how = {"idle_renew": 1680} if waiting == "idle" else {"idle": False, "poll_interval": 0.2}
        imap = config_for(tmp_path, relay_port, dovecot, **how).imap["work"]
        bridge = await start_bridge(config_for(tmp_path, relay_port, None))      # the poller runs by hand
        poller = MailboxPoller("work", imap, bridge.intake, bridge.store)
        landed: list[int] = []

        def land_and_read() -> None:
            dovecot.append(alert(2))
            with dovecot.client() as reader:      # a mail client open on the same mailbox: it
                reader.select("INBOX")            # takes \Recent, so no "* 1 RECENT" comes later

        async def first_committed(uid: int, outcome: Outcome) -> None:
            landed.append(0)

        async def land_a_mail() -> None:
            if landed == [0]:      # the search that ends the catch-up of the first mail
                landed.append(2)
                await asyncio.to_thread(land_and_read)

        poller.after_commit = first_committed
        poller.before_search = land_a_mail
        task = asyncio.create_task(poller.run(bridge.stopping))
        dovecot.append(alert(1))
        await wait_until(lambda: len(outbox(tmp_path)) == 2, timeout=10, what="both SMS")
        assert landed[:2] == [0, 2]
        await bridge.stop()
        await asyncio.wait_for(task, 5)

    async def test_dovecot_restart_is_survived(self, tmp_path, sink, dovecot, run_bridge):
        """After the server restarts, the poller reconnects and new mail arrives by IDLE within seconds."""
        _, relay_port = sink
        with capture_logs() as logs:
            await run_bridge(config_for(tmp_path, relay_port, dovecot))
            dovecot.append(alert(1))
            await wait_until(lambda: len(outbox(tmp_path)) == 1, what="first SMS")
            await asyncio.to_thread(dovecot.stop)         # idling clients get "* BYE"
            await asyncio.sleep(1)                        # reconnections are refused meanwhile
            await asyncio.to_thread(dovecot.start)        # same port
            await wait_until(
                lambda: sum(e["event"] == "imap_connected" for e in logs) == 2, timeout=10, what="reconnection"
            )
            await asyncio.sleep(0.3)                      # idling again
            started = time.monotonic()
            dovecot.append(alert(2))
            await wait_until(lambda: len(outbox(tmp_path)) == 2, timeout=5, what="SMS after the restart")
        assert time.monotonic() - started < 3                  # pushed by IDLE (renewal is 9 min)
        assert any(e["event"] == "imap_error" for e in logs)
        assert sorted(await in_folder(dovecot, PROCESSED)) == ["<alert-1@example.org>", "<alert-2@example.org>"]

    @pytest.mark.parametrize("waiting", ["idle", "polling"])
    async def test_uidvalidity_change_resends_nothing(self, waiting, tmp_path, sink, dovecot, run_bridge):
        """A recreated mailbox (new UIDVALIDITY, UIDs from 1 again): old mails not re-sent, new
        ones are; whether the bridge IDLEs or polls (NOOP) when the mailbox is recreated."""
        _, relay_port = sink
        dovecot.create("alerts")
        old = [alert(i) for i in range(3)]
        dovecot.append_many(old, "alerts")
        how = {"idle_renew": 1} if waiting == "idle" else {"idle": False, "poll_interval": 0.1}
        bridge = await run_bridge(config_for(tmp_path, relay_port, dovecot, mailbox="alerts", **how))
        await wait_until(lambda: len(outbox(tmp_path)) == 3, what="3 SMS")
        before = dovecot.uidvalidity("alerts")
        await wait_until(
            lambda: _equals(bridge.store.mailbox_state("work:alerts"), (before, 3)), what="UID 3 remembered"
        )

        dovecot.delete("alerts")     # not always told to an IDLE session: seen at the next renewal
        dovecot.create("alerts")
        assert dovecot.uidvalidity("alerts") != before
        dovecot.append_many([alert(10), *old], "alerts")   # the new mail gets UID 1
        await wait_folder(dovecot, PROCESSED, 7, timeout=15)
        await asyncio.sleep(0.5)
        sent = sorted(line["to"] for line in outbox(tmp_path))
        assert sent == sorted([f"+336{10000000 + i:08d}" for i in (0, 1, 2, 10)])
        assert await in_folder(dovecot, "alerts") == []


class TestFailures:
    async def test_bad_password_is_retried_and_the_daemon_keeps_running(self, tmp_path, sink, dovecot, run_bridge):
        """A refused login is logged and retried with backoff; SMTP keeps answering meanwhile."""
        _, relay_port = sink
        with capture_logs() as logs:
            bridge = await run_bridge(config_for(tmp_path, relay_port, dovecot, password="wrong-Pa55word"))
            await wait_until(
                lambda: sum(e["event"] == "imap_error" for e in logs) >= 2, timeout=8, what="two login attempts"
            )
            errors = [e for e in logs if e["event"] == "imap_error"]
            assert "login refused" in errors[0]["error"]
            assert all("wrong-Pa55word" not in str(e) for e in logs)       # the password is never logged
            code, _ = await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515", "Still here"))
            assert code == 250
            await wait_until(lambda: len(outbox(tmp_path)) == 1, what="SMS by SMTP")
            started = time.monotonic()
            await bridge.stop()
            assert time.monotonic() - started < 3

    async def test_stop_is_prompt_while_idling(self, tmp_path, sink, dovecot, run_bridge):
        """Stopping the bridge ends an IDLE-ing poller within a second or two."""
        _, relay_port = sink
        with capture_logs() as logs:
            bridge = await run_bridge(config_for(tmp_path, relay_port, dovecot))
            await wait_until(lambda: any(e["event"] == "imap_connected" for e in logs), what="connected")
            await asyncio.sleep(0.3)
            started = time.monotonic()
            await bridge.stop()
        assert time.monotonic() - started < 2
        assert any(e["event"] == "imap_stopped" for e in logs)

    async def test_stop_ends_the_wait_between_polls(self, tmp_path, sink, dovecot, run_bridge):
        """Polling once an hour, stopping the bridge ends the poller's wait: it says it
        stopped, rather than being cancelled when the grace period is over."""
        _, relay_port = sink
        with capture_logs() as logs:
            bridge = await run_bridge(config_for(tmp_path, relay_port, dovecot, idle=False, poll_interval=3600))
            await wait_until(lambda: any(e["event"] == "imap_connected" for e in logs), what="connected")
            await asyncio.sleep(0.3)
            await bridge.stop()
        assert any(e["event"] == "imap_stopped" for e in logs)

    async def test_polls_without_idle(self, tmp_path, sink, dovecot, run_bridge):
        """With ``idle: false`` new mail is found by polling every ``poll_interval``."""
        _, relay_port = sink
        await run_bridge(config_for(tmp_path, relay_port, dovecot, idle=False, poll_interval=0.3))
        await asyncio.sleep(0.5)
        dovecot.append(alert(1))
        await wait_until(lambda: len(outbox(tmp_path)) == 1, timeout=5, what="SMS found by polling")


class TestTls:
    @pytest.mark.parametrize("mode", ["implicit", "starttls"])
    async def test_tls_modes(self, mode, tmp_path, sink, dovecot_tls, run_bridge):
        """Implicit TLS (IMAPS) and STARTTLS both work (self-signed: ``tls_verify: false``)."""
        _, relay_port = sink
        port = dovecot_tls.tls_port if mode == "implicit" else dovecot_tls.port
        dovecot_tls.append(alert(1))
        await run_bridge(config_for(tmp_path, relay_port, dovecot_tls, tls=mode, port=port, tls_verify=False))
        await wait_until(lambda: len(outbox(tmp_path)) == 1, what="SMS over TLS")

    async def test_unverified_certificate_is_refused(self, tmp_path, sink, dovecot_tls, run_bridge):
        """With ``tls_verify`` on (the default) a self-signed certificate is refused."""
        _, relay_port = sink
        dovecot_tls.append(alert(1))
        with capture_logs() as logs:
            await run_bridge(config_for(tmp_path, relay_port, dovecot_tls, tls="implicit", port=dovecot_tls.tls_port))
            await wait_until(lambda: any(e["event"] == "imap_error" for e in logs), what="TLS error")
        assert "CERTIFICATE_VERIFY_FAILED" in [e for e in logs if e["event"] == "imap_error"][0]["error"]
        assert outbox(tmp_path) == []


async def test_backlog_memory_does_not_grow_with_its_size(tmp_path, sink, dovecot, run_bridge):
    """Draining 2,000 queued mails takes about the memory of draining 200 (one body at a time).

    The mails go to 100 numbers in turn, so the number-parsing caches (bounded LRU caches
    elsewhere in the bridge) are filled by a warm-up round and do not count as growth.
    """
    _, relay_port = sink
    bridge = await run_bridge(config_for(tmp_path, relay_port, dovecot, credits=10_000, batch=50))
    await asyncio.sleep(0.5)                                     # connected and idling
    peaks: dict[int, int] = {}
    done = 0
    tracemalloc.start()
    try:
        for size in (100, 200, 2000):                            # 100: warm-up, not measured
            await asyncio.sleep(0.3)
            gc.collect()
            baseline = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            started = time.monotonic()
            # a generator of plain bytes, written straight into Maildir/new: the test itself
            # holds no backlog and allocates next to nothing while the bridge drains it
            dovecot.deliver(_raw_alert(done + i, to=(done + i) % 100) for i in range(size))
            done += size                                         # UIDs 1..done, in delivery order
            # Only a guard against a hang: under tracemalloc, on a shared 2-core machine with
            # other work on it, 2,000 mails took longer than 60 s (about 25 mails/s).
            while ((await bridge.store.mailbox_state("work:INBOX")) or (0, 0))[1] < done:
                assert time.monotonic() - started < 300, f"backlog of {size} not drained in 300 s"
                await asyncio.sleep(0.2)
            peaks[size] = tracemalloc.get_traced_memory()[1] - baseline
            print(f"backlog {size}: drained in {time.monotonic() - started:.1f} s, peak +{peaks[size] / 1024:.0f} KiB")
    finally:
        tracemalloc.stop()
    assert dovecot.count("INBOX") == 0 and dovecot.count(PROCESSED) == done
    # 10x the mail may not cost anywhere near 10x the memory. Measured: ~370 KiB for 200,
    # ~800 KiB for 2,000 and still ~810 KiB for 5,000 (a plateau: garbage awaiting the
    # cyclic GC, not anything held per message).
    assert peaks[2000] < 3 * peaks[200], peaks


class TestConfig:
    def test_defaults(self, tmp_path):
        """Only host, user and password are needed; the rest has documented defaults."""
        settings = base_settings(tmp_path, imap={"work": {"host": "imap.example.com", "user": "u", "password": "p"}})
        work = make_config(tmp_path, settings).imap["work"]
        assert (work.port, work.tls, work.tls_verify, work.mailbox) == (993, "implicit", True, "INBOX")
        assert (work.processed, work.failed) == ("mail2sms/processed", "mail2sms/failed")
        assert (work.poll_interval, work.idle, work.idle_renew, work.batch, work.timeout) == (60, True, 540, 50, 30)
        assert "password" not in repr(work)                                  # never printed

    def test_port_follows_tls(self, tmp_path):
        """Without implicit TLS the default port is 143."""
        for tls in ("starttls", "none"):
            settings = base_settings(tmp_path, imap={"w": {"host": "h", "user": "u", "password": "p", "tls": tls}})
            assert make_config(tmp_path, settings).imap["w"].port == 143

    @pytest.mark.parametrize(
        ("extra", "path"),
        [
            ({"idle_renew": "29m"}, "imap.work.idle_renew"),
            ({"tls": "ssl"}, "imap.work.tls"),
            ({"port": 70000}, "imap.work.port"),
            ({"batch": 0}, "imap.work.batch"),
            ({"colour": "red"}, "imap.work.colour"),
            ({"failed": "mail2sms/processed"}, "imap.work"),
            ({"host": None}, "imap.work.host"),
            ({"push_secret": "short"}, "imap.work.push_secret"),
            ({"push_secret": "a/b?c=0123456789abcdef"}, "imap.work.push_secret"),
            ({"push_secret": "0123456789abcdef"}, "imap.work.push_secret"),   # no http.listen
        ],
    )
    def test_bad_values_name_their_key(self, tmp_path, extra, path):
        """Each bad value is reported under its key path."""
        from bridge.errors import ConfigErrors

        work = {"host": "h", "user": "u", "password": "p", **extra}
        work = {k: v for k, v in work.items() if v is not None}
        with pytest.raises(ConfigErrors) as caught:
            make_config(tmp_path, base_settings(tmp_path, imap={"work": work}))
        assert path in [e.path for e in caught.value.errors], caught.value


class TestHelpers:
    def test_folder_names_are_quoted_modified_utf7(self):
        """Folder names go out quoted, non-ASCII in modified UTF-7 (RFC 3501 5.1.3)."""
        from bridge.imap import _mailbox_arg

        assert _mailbox_arg("mail2sms/processed") == '"mail2sms/processed"'
        assert _mailbox_arg("Envoyés") == '"Envoy&AOk-s"'
        assert _mailbox_arg("R&D") == '"R&-D"'
        assert _mailbox_arg('a"b') == '"a\\"b"'

    def test_body_literal_is_found_by_uid(self):
        """The body literal is the one next to ``UID n``, before or after it."""
        from bridge.imap import _literal_for

        lines = [b"2 FETCH (FLAGS (\\Seen))", b"3 FETCH (BODY[] {3}", bytearray(b"abc"), b" UID 9)", b"done"]
        assert _literal_for(lines, 9) == b"abc"
        assert _literal_for([b"1 FETCH (UID 4 BODY[] {1}", bytearray(b"x"), b")", b"done"], 4) == b"x"
        assert _literal_for([b"Fetch completed"], 4) is None

    def test_return_path_is_the_envelope_sender(self):
        """``Return-Path`` from the header block only; ``<>`` gives "" (null sender), absence None."""
        from bridge.imap import _return_path

        assert _return_path(b"Return-Path: <zabbix@example.org>\r\nSubject: x\r\n\r\nbody") == "zabbix@example.org"
        assert _return_path(b"Return-Path: <>\r\n\r\n") == ""  # a bounce: no reply
        assert _return_path(b"Subject: x\r\n\r\nReturn-Path: <late@example.org>\r\n") is None


class TestTwoBridgesOnePostgres:
    async def test_one_bridge_polls_the_mailbox_the_other_takes_over(self, tmp_path, sink, dovecot, pg_url,
                                                                    run_bridge):
        """Two bridges on one PostgreSQL and one mailbox: one polls, the other stands by; each
        mail is sent once; when the polling one stops, the other takes the mailbox over."""
        _, relay_port = sink
        config = config_for(tmp_path, relay_port, dovecot)
        config = dataclasses.replace(config, store=pg_url)
        with capture_logs() as logs:
            first = await run_bridge(config)
            await wait_until(lambda: any(e["event"] == "imap_connected" for e in logs), what="a poller")
            second = await run_bridge(config)
            await wait_until(lambda: any(e["event"] == "imap_standby" for e in logs), what="a standby")
            for i in range(3):
                dovecot.append(alert(i))
            await wait_until(lambda: len(outbox(tmp_path)) == 3, what="3 SMS")
            assert [e["event"] for e in logs].count("imap_connected") == 1
            await first.stop()
            dovecot.append(alert(3))
            await wait_until(lambda: len(outbox(tmp_path)) == 4, timeout=20, what="the takeover's SMS")
        assert sorted(line["text"] for line in outbox(tmp_path)) == sorted({line["text"] for line in outbox(tmp_path)})
        assert await wait_folder(dovecot, PROCESSED, 4) == [f"<alert-{i}@example.org>" for i in range(4)]
        await second.stop()

    async def test_a_push_to_each_bridge_wakes_the_one_polling(self, tmp_path, sink, pg_url, run_bridge):
        """Dovecot pushes to both bridges (a driver each, as the README says): the one that
        holds the mailbox brings each mail in at once (it polls once an hour), the other
        answers ``standby``; each SMS is sent once."""
        _, relay_port = sink
        ports = [free_port(), free_port()]
        with running_dovecot(push_urls=[f"http://127.0.0.1:{p}/imap/work/{PUSH_SECRET}" for p in ports]) as server:
            account = server.add_user()
            account.enable_push()
            bridges = []
            for port in ports:
                config = push_config(tmp_path, relay_port, account, port, idle=False, poll_interval=3600)
                bridges.append(await run_bridge(dataclasses.replace(config, store=pg_url)))
            await wait_until(lambda: any(b.pollers["work"].active for b in bridges), what="a bridge polling")
            for i in range(3):
                await asyncio.to_thread(account.deliver_lda, alert(i))
                await wait_until(lambda: len(outbox(tmp_path)) == i + 1, what=f"SMS {i} brought by a push")
            await asyncio.sleep(0.3)
            counts = sorted(
                ({r: b.metrics.imap_pushes.labels("work", r)._value.get() for r in ("woken", "standby")}
                 for b in bridges), key=lambda c: c["woken"])
            for bridge in bridges:
                await bridge.stop()
        assert counts == [{"woken": 0, "standby": 3}, {"woken": 3, "standby": 0}]
        assert sorted(line["to"] for line in outbox(tmp_path)) == [f"+336{10000000 + i:08d}" for i in range(3)]
