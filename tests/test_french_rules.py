"""French rules end to end: quiet hours, STOP, opt-outs, allowed countries, anti-pumping."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import ACCOUNT_KEY, Recorder, base_settings, compose, make_config, smtp_send

from bridge.intake import Envelope

PARIS = ZoneInfo("Europe/Paris")
REPO = Path(__file__).resolve().parent.parent


def paris(*args: int) -> float:
    return datetime(*args, tzinfo=PARIS).timestamp()


def settings_for(tmp_path, **account) -> dict:
    return base_settings(
        tmp_path,
        accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 1000, "route": ["outbox"], **account}},
    )


async def send_mail(intake, subject_tail: str, text: str = "Promo -20% ce week-end", sender="a@example.org"):
    raw = compose(f"arthur45@{ACCOUNT_KEY}|{subject_tail}", text)
    return await intake.submit(raw, Envelope(sender))


@pytest.fixture
async def rules(tmp_path, world):
    """A dispatcher with a recording provider on a fake clock, for one account's settings."""
    clock, store, make, open_accounts = world

    async def build(**account):
        settings = settings_for(tmp_path, **account)
        await open_accounts(settings)
        recorder = Recorder("outbox", clock)
        dispatcher, intake = make(settings, {"outbox": recorder})
        return clock, store, dispatcher, intake, recorder

    return build


class TestQuietHours:
    async def test_sunday_marketing_waits_for_monday_8(self, rules):
        """A marketing mail on Sunday is held and goes out when the clock reaches Monday 08:00."""
        clock, store, dispatcher, intake, recorder = await rules(category="marketing")
        clock.now = paris(2026, 11, 22, 15, 0)  # a Sunday
        outcome = await send_mail(intake, "0612121515")
        assert outcome.accepted
        await dispatcher.run_once()
        assert recorder.calls == []
        job = (await store.jobs())[0]
        assert job.next_attempt_at == paris(2026, 11, 23, 8, 0)
        clock.now = paris(2026, 11, 23, 7, 59, 59)
        assert await dispatcher.run_once() == 0
        clock.now = paris(2026, 11, 23, 8, 0)
        await dispatcher.run_once()
        assert len(recorder.calls) == 1
        assert recorder.calls[0][1].text.endswith("\nSTOP au 36180")  # appended for France

    async def test_saturday_1959_with_three_parts_still_goes(self, rules):
        """Submitted Saturday 19:59:30, a 3-part marketing SMS goes out at once (send time rule)."""
        clock, store, dispatcher, intake, recorder = await rules(category="marketing")
        clock.now = paris(2026, 11, 21, 19, 59, 30)
        assert (await send_mail(intake, "0612121515", "y" * 400 + " STOP au 36180")).accepted
        await dispatcher.run_once()
        assert len(recorder.calls) == 1 and recorder.calls[0][1].parts == 3

    async def test_holiday_monday_waits_until_tuesday(self, rules):
        """Saturday evening before Whit Monday: held until Tuesday 08:00."""
        clock, store, dispatcher, intake, recorder = await rules(category="marketing")
        clock.now = paris(2026, 5, 23, 20, 30)
        await send_mail(intake, "0612121515")
        assert (await store.jobs())[0].next_attempt_at == paris(2026, 5, 26, 8, 0)

    async def test_transactional_is_never_held(self, rules):
        """Transactional traffic (the default) goes out on Sunday night."""
        clock, store, dispatcher, intake, recorder = await rules()
        clock.now = paris(2026, 11, 22, 23, 30)
        await send_mail(intake, "0612121515", "Serveur db1 en panne")
        await dispatcher.run_once()
        assert len(recorder.calls) == 1

    async def test_type_option_overrides_the_account(self, rules):
        """type=marketing in the subject makes a transactional account's SMS marketing."""
        clock, store, dispatcher, intake, recorder = await rules()
        clock.now = paris(2026, 11, 22, 12, 0)
        await send_mail(intake, "0612121515|type=marketing")
        job = (await store.jobs())[0]
        assert job.category == "marketing" and job.next_attempt_at == paris(2026, 11, 23, 8, 0)

    async def test_custom_windows_per_account(self, rules):
        """An account with Saturday 10:00-18:00 holds a Saturday 18:30 SMS until Monday."""
        clock, store, dispatcher, intake, recorder = await rules(
            category="marketing", quiet_hours={"windows": ["mon-fri 08:00-20:00", "sat 10:00-18:00"]}
        )
        clock.now = paris(2026, 11, 21, 18, 30)
        await send_mail(intake, "0612121515")
        assert (await store.jobs())[0].next_attempt_at == paris(2026, 11, 23, 8, 0)

    async def test_retry_landing_in_quiet_hours_is_held(self, rules):
        """A queued marketing job found due at night goes back until the morning."""
        clock, store, dispatcher, intake, recorder = await rules(category="marketing")
        clock.now = paris(2026, 11, 23, 19, 59)
        await send_mail(intake, "0612121515")
        clock.now = paris(2026, 11, 23, 21, 0)  # the dispatcher was busy until after 20:00
        await dispatcher.run_once()
        assert recorder.calls == []
        job = (await store.jobs())[0]
        assert job.state.value == "queued" and job.next_attempt_at == paris(2026, 11, 24, 8, 0)


class TestStop:
    async def test_reject_mode_gives_124(self, rules):
        """With stop: reject, a marketing text without the mention is refused (124)."""
        clock, store, dispatcher, intake, recorder = await rules(category="marketing", stop="reject")
        clock.now = paris(2026, 11, 23, 10, 0)
        outcome = await send_mail(intake, "0612121515")
        assert outcome.status == 124 and not outcome.accepted
        assert [r["code"] for r in await store.replies()] == [124]

    async def test_append_counts_in_the_parts(self, rules):
        """The appended mention can push a 160-character text to two parts."""
        clock, store, dispatcher, intake, recorder = await rules(category="marketing")
        clock.now = paris(2026, 11, 23, 10, 0)
        await send_mail(intake, "0612121515", "x" * 150)
        job = (await store.jobs())[0]
        assert job.parts == 2 and job.text == "x" * 150 + "\nSTOP au 36180"

    async def test_foreign_numbers_need_no_mention(self, rules):
        """The STOP mention is a French rule: a Belgian number gets the text unchanged."""
        clock, store, dispatcher, intake, recorder = await rules(category="marketing", allowed_countries=["BE"])
        clock.now = paris(2026, 11, 23, 10, 0)
        await send_mail(intake, "+32470123456", "Promo")
        assert (await store.jobs())[0].text == "Promo"


class TestOptOut:
    async def test_opted_out_number_is_not_sent_nor_charged(self, rules):
        """A globally opted-out number gets nothing and costs nothing; the others go."""
        clock, store, dispatcher, intake, recorder = await rules()
        await store.optout_add("+33612121515", None, "cli", clock.now)
        outcome = await send_mail(intake, "0612121515;0614141515", "Hi")
        assert outcome.accepted and outcome.status == 125
        assert (await store.balances())["arthur45"] == 999
        [reply] = await store.replies()
        assert reply["code"] == 125
        await dispatcher.run_once()
        assert [sms.to for _, sms in recorder.calls] == [("+33614141515",)]

    async def test_per_sender_opt_out(self, rules):
        """An opt-out from sender SHOP still lets other senders through."""
        clock, store, dispatcher, intake, recorder = await rules()
        await store.optout_add("+33612121515", "SHOP", "cli", clock.now)
        refused = await send_mail(intake, "0612121515|from=SHOP", "Hi STOP au 36180")
        assert refused.status == 125 and not refused.accepted
        other = await send_mail(intake, "0612121515|from=OTHER", "Hello STOP au 36180")
        assert other.accepted

    async def test_opt_out_after_scheduling_fails_and_refunds(self, rules):
        """A number that opts out while its SMS waits is not sent, and the credit comes back."""
        clock, store, dispatcher, intake, recorder = await rules()
        clock.now = paris(2026, 11, 23, 10, 0)
        await send_mail(intake, "0612121515|date=2026-11-23 12:00:00", "Later")
        await store.optout_add("+33612121515", None, "sms", clock.now)
        clock.now = paris(2026, 11, 23, 12, 0)
        await dispatcher.run_once()
        job = (await store.jobs())[0]
        assert job.state.value == "failed" and recorder.calls == []
        assert (await store.balances())["arthur45"] == 1000


class TestAntiPumping:
    async def test_country_not_allowed(self, rules):
        """France only by default: a US number is refused with 126, the French one is sent."""
        clock, store, dispatcher, intake, recorder = await rules()
        outcome = await send_mail(intake, "+14155550123;0612121515", "Hi")
        assert outcome.accepted and outcome.status == 126
        assert [j.number for j in await store.jobs()] == ["+33612121515"]

    async def test_overseas_france_counts_as_france(self, rules):
        """Réunion numbers are allowed by the default FR allowlist."""
        clock, store, dispatcher, intake, recorder = await rules()
        assert (await send_mail(intake, "0692123456", "Hi")).status == 100

    async def test_per_number_hourly_cap(self, rules):
        """The fourth SMS within an hour to one number is refused with 127."""
        clock, store, dispatcher, intake, recorder = await rules(max_per_number_per_hour=3)
        for i in range(3):
            assert (await send_mail(intake, "0612121515", f"alert {i}")).accepted
        outcome = await send_mail(intake, "0612121515", "alert 4")
        assert outcome.status == 127 and not outcome.accepted
        clock.now += 3601
        assert (await send_mail(intake, "0612121515", "alert 5")).accepted

    async def test_daily_spend_cap(self, rules):
        """Past max_spend_per_day credits, further SMS are refused (127) and not debited."""
        clock, store, dispatcher, intake, recorder = await rules(max_spend_per_day=3)
        assert (await send_mail(intake, "0612121515;0614141515", "Hi")).accepted
        outcome = await send_mail(intake, "0615151515;0616161616", "Hi")
        assert outcome.status == 127
        assert len(await store.jobs()) == 3
        assert (await store.balances())["arthur45"] == 997


def test_optout_cli(tmp_path):
    """`mail2sms optout add|list|import|remove` manage the suppression list."""
    config = tmp_path / "config.yaml"
    config.write_text((REPO / "config.yaml").read_text())
    (tmp_path / "stops.csv").write_text("0612121515\n+33 6 14 14 15 15,SHOP\nnot-a-number\n")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "bridge", "--config", str(config), "optout", *args],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
            timeout=60,
        )

    assert "opted out" in run("add", "06 99 99 99 99").stdout
    imported = run("import", str(tmp_path / "stops.csv"))
    assert imported.returncode == 1 and "1 refused" in imported.stdout and ":3:" in imported.stdout
    listing = run("list").stdout
    assert "+33699999999" in listing and "+33614141515" in listing and "shop" in listing
    assert "removed" in run("remove", "0699999999").stdout
    assert "+33699999999" not in run("list").stdout


async def test_opted_out_mail_over_smtp_gets_status_125(tmp_path, sink, start_bridge):
    """End to end: the sender of a mail to an opted-out number receives status 125."""
    handler, relay_port = sink
    bridge = await start_bridge(make_config(tmp_path, base_settings(tmp_path, relay_port)))
    await bridge.store.optout_add("+33612121515", None, "cli", 0)
    code, text = await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515", "Hi"))
    assert code == 250 and "Status 125" in text
    [reply] = await handler.wait_for(1)
    assert "Status: 125" in reply.get_content()
    assert (await bridge.store.balances())["arthur45"] == 100
