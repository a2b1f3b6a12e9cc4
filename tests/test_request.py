"""Tests for bridge.request: from a parsed subject and a body to a checked SMS request."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from bridge.encoding import is_gsm7
from bridge.errors import StatusError
from bridge.request import RequestPolicy, build_request
from bridge.subject import parse_subject

NOW = datetime(2026, 1, 15, 12, 0, 0, tzinfo=timezone.utc)
POLICY = RequestPolicy()
FR = "0612121515"
US = "+14155552671"


def build(subject: str, body: str = "Hello", policy: RequestPolicy = POLICY):
    return build_request(parse_subject(subject), body, policy, NOW)


def status_of(subject: str, body: str = "Hello", policy: RequestPolicy = POLICY) -> int:
    with pytest.raises(StatusError) as caught:
        build(subject, body, policy)
    return caught.value.code


class TestChecksAndOrder:
    """Each failure has its status; when several apply, the first in order wins."""

    @pytest.mark.parametrize(
        ("subject", "body", "policy", "code"),
        [
            pytest.param(f"a@k|{FR}|from=1BAD", "Hello", POLICY, 123, id="bad-sender"),
            pytest.param(f"a@k|{FR}|date=soon", "Hello", POLICY, 115, id="bad-date"),
            pytest.param("a@k|0145454545", "Hello", POLICY, 114, id="no-valid-number"),
            pytest.param("a@k|", "Hello", POLICY, 114, id="empty-numbers-field"),
            pytest.param(
                f"a@k|{FR};0612121516", "Hello", RequestPolicy(max_recipients=1), 120,
                id="too-many-numbers",
            ),
            pytest.param(f"a@k|{FR}", "", POLICY, 110, id="empty-body"),
            pytest.param(f"a@k|{FR}", " \n\t\n ", POLICY, 110, id="whitespace-body"),
            pytest.param(f"a@k|{FR}", "x" * 1225, POLICY, 111, id="too-long-gsm7"),
            pytest.param(f"a@k|{FR}", "ê" * 537, POLICY, 111, id="too-long-ucs2"),
            pytest.param(
                f"a@k|{FR}", "x" * 161, RequestPolicy(max_parts=1), 111,
                id="over-policy-parts",
            ),
            pytest.param(
                f"a@k|{FR}|from=1BAD|date=soon", "Hello", POLICY, 123,
                id="sender-before-date",
            ),
            pytest.param(
                "a@k|0145454545|date=soon", "Hello", POLICY, 115, id="date-before-numbers",
            ),
            pytest.param("a@k|0145454545", "", POLICY, 114, id="numbers-before-empty-text"),
            pytest.param(
                "a@k|0145454545", "x" * 2000, POLICY, 114, id="numbers-before-length",
            ),
        ],
    )
    def test_status(self, subject, body, policy, code):
        """The request is refused with the status of the first failing check."""
        assert status_of(subject, body, policy) == code

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param("x" * 1224, id="8-parts-gsm7"),
            pytest.param("ê" * 536, id="8-parts-ucs2"),
        ],
    )
    def test_longest_allowed(self, body):
        """The longest texts that fit in 8 parts go through."""
        assert build(f"a@k|{FR}", body).segmentation.count == 8

    def test_some_invalid_numbers_are_reported_not_refused(self):
        """With some valid numbers the request goes on and lists the refused ones (113)."""
        request = build(f"a@k|{FR};0145454545;abc")
        assert request.numbers == ("+33612121515",)
        assert [i.raw for i in request.invalid] == ["0145454545", "abc"]

    def test_all_valid_has_no_invalid(self):
        """Without refused numbers the invalid list is empty (no 113)."""
        assert build(f"a@k|{FR};{US}").invalid == ()


class TestContent:
    """What the request carries: numbers, text, route, schedule."""

    def test_numbers_are_e164_deduplicated(self):
        """Numbers go out in E.164, each once, in the order written."""
        assert build(f"a@k|{US};{FR};+33612121515").numbers == (US, "+33612121515")

    @pytest.mark.parametrize(
        ("body", "text"),
        [
            pytest.param("Hello", "Hello", id="plain"),
            pytest.param("\n\nHello\n\n", "Hello", id="blank-lines-trimmed"),
            pytest.param("Line 1\nLine 2\n", "Line 1\nLine 2", id="inner-newline-kept"),
        ],
    )
    def test_text(self, body, text):
        """Leading and trailing line breaks are dropped; the rest is sent as written."""
        assert build(f"a@k|{FR}", body).text == text

    @pytest.mark.parametrize(
        ("subject", "low_cost"),
        [
            pytest.param(f"a@k|{FR}", False, id="default-premium"),
            pytest.param(f"a@k|{FR}|lc=0", False, id="lc-0"),
            pytest.param(f"a@k|{FR}|lc=1", True, id="lc-1"),
        ],
    )
    def test_low_cost(self, subject, low_cost):
        """``lc=1`` asks for the low-cost route."""
        assert build(subject).low_cost is low_cost

    @pytest.mark.parametrize(
        ("subject", "send_at"),
        [
            pytest.param(f"a@k|{FR}", None, id="no-date"),
            pytest.param(f"a@k|{FR}|date=", None, id="empty-date"),
            pytest.param(f"a@k|{FR}|date=2025-01-01 00:00:00", None, id="past-date"),
            pytest.param(
                f"a@k|{FR}|date=2026-12-01 09:00:00",
                datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc), id="future-date",
            ),
        ],
    )
    def test_send_at(self, subject, send_at):
        """A future date schedules the SMS (UTC); none or a past one means now."""
        assert build(subject).send_at == send_at

    def test_send_at_uses_policy_time_zone(self):
        """The date is read in the policy's time zone."""
        policy = RequestPolicy(tz=ZoneInfo("America/New_York"))
        request = build(f"a@k|{FR}|date=2026-12-01 09:00:00", policy=policy)
        assert request.send_at == datetime(2026, 12, 1, 14, 0, tzinfo=timezone.utc)

    def test_send_at_respects_policy_max_ahead(self):
        """A date beyond the policy's ``max_ahead`` is status 115."""
        policy = RequestPolicy(max_ahead=timedelta(hours=1))
        assert status_of(f"a@k|{FR}|date=2026-01-15 16:00:00", policy=policy) == 115


class TestSenderAndStop:
    """A custom sender towards France needs ``STOP au 36xxx``; elsewhere it is kept."""

    @pytest.mark.parametrize(
        ("body", "fr_sender", "us_sender", "warned"),
        [
            pytest.param("Promo -20%", None, "SHOP", True, id="no-stop-dropped-for-france"),
            pytest.param("Promo -20% STOP au 36180", "SHOP", "SHOP", False, id="stop-kept"),
            pytest.param("Promo -20%\nSTOP au 36180\n", "SHOP", "SHOP", False,
                         id="stop-on-last-line"),
            pytest.param("Promo STOP au 36180 now", None, "SHOP", True, id="stop-not-at-end"),
        ],
    )
    def test_sender_per_number(self, body, fr_sender, us_sender, warned):
        """``sender_for`` drops the sender for French numbers without STOP, with a warning."""
        request = build(f"a@k|{FR};{US}|from=SHOP", body)
        assert request.sender == "SHOP"
        assert request.sender_for("+33612121515") == fr_sender
        assert request.sender_for(US) == us_sender
        assert bool(request.warnings) is warned
        if warned:
            assert "SHOP" in request.warnings[0]
            assert "STOP au 36xxx" in request.warnings[0]

    def test_overseas_french_numbers_need_stop_too(self):
        """Overseas French numbers follow the French rule."""
        request = build("a@k|0692123456|from=SHOP", "Promo")
        assert request.sender_for("+262692123456") is None
        assert request.warnings

    def test_foreign_only_no_warning(self):
        """Without French numbers the sender is kept and nothing is said."""
        request = build(f"a@k|{US}|from=SHOP", "Promo")
        assert request.sender_for(US) == "SHOP"
        assert request.warnings == ()

    def test_no_sender_no_warning(self):
        """Without ``from=`` there is nothing to drop."""
        request = build(f"a@k|{FR}", "Promo")
        assert request.sender is None
        assert request.sender_for("+33612121515") is None
        assert request.warnings == ()


class TestTransliterate:
    """The account's transliterate policy turns near-GSM-7 text into GSM-7."""

    @pytest.mark.parametrize(
        ("transliterate", "encoding", "text"),
        [
            pytest.param(False, "UCS-2", "Réunion à 14h – côté", id="off"),
            pytest.param(True, "GSM-7", "Réunion à 14h - coté", id="on"),
        ],
    )
    def test_transliterate(self, transliterate, encoding, text):
        """With the policy on, the dash and ``ô`` are replaced and the SMS is GSM-7."""
        request = build(
            f"a@k|{FR}", "Réunion à 14h – côté", RequestPolicy(transliterate=transliterate)
        )
        assert request.text == text
        assert request.segmentation.encoding == encoding
        assert is_gsm7(request.text) is (encoding == "GSM-7")

    def test_transliteration_can_make_a_text_fit(self):
        """A UCS-2 text too long for 8 parts can fit once transliterated."""
        body = "ê" * 600
        assert status_of(f"a@k|{FR}", body) == 111
        request = build(f"a@k|{FR}", body, RequestPolicy(transliterate=True))
        assert request.segmentation.encoding == "GSM-7"
        assert request.segmentation.count == 4


class TestDroppedSenderIsNeverSilent:
    def test_dropped_sender_is_logged_and_warned(self):
        """A from= dropped towards France is logged (sender_dropped) and listed in warnings."""
        from structlog.testing import capture_logs

        with capture_logs() as logs:
            request = build("arthur45@key|0612121515|from=SHOP", "Hello")
        assert request.sender_for("+33612121515") is None
        assert any("custom sender 'SHOP' not used" in w for w in request.warnings)
        assert [e["sender"] for e in logs if e["event"] == "sender_dropped"] == ["SHOP"]

    def test_kept_sender_is_quiet(self):
        """With the STOP mention the sender is used and nothing is logged."""
        from structlog.testing import capture_logs

        with capture_logs() as logs:
            request = build("arthur45@key|0612121515|from=SHOP", "Promo STOP au 36180")
        assert request.sender_for("+33612121515") == "SHOP" and request.warnings == ()
        assert not [e for e in logs if e["event"] == "sender_dropped"]
