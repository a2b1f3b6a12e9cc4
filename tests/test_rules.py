"""Business rules (pure): opt-outs, caps, refusal order, countries, quiet hours, the state table."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from bridge import rules
from bridge.calendar_rules import QuietHours
from bridge.model import TRANSITIONS, Counts, IllegalTransition, JobState, Limits, NewJob, Refusal, check_transition

A, B = "+33612121515", "+33612121516"


def job(number: str, cost: int = 1, send_at=None) -> NewJob:
    return NewJob(number, "hi", None, 1, cost, send_at=send_at)


class TestOptOuts:
    @pytest.mark.parametrize(
        ("optouts", "sender", "expected"),
        [
            (set(), "SHOP", None),
            ({(A, "")}, "SHOP", "opted out (STOP)"),
            ({(A, "shop")}, "SHOP", "opted out of sender SHOP"),
            ({(A, "shop")}, "OTHER", None),
            ({(A, "shop")}, None, None),
        ],
    )
    def test_optout_reason(self, optouts, sender, expected):
        """A global STOP blocks every sender; a sender STOP only that sender."""
        assert rules.optout_reason(frozenset(optouts), A, sender) == expected


class TestScreen:
    def test_opt_out_then_caps(self):
        """Opted-out numbers get 125; past the hourly cap per number, 127."""
        counts = Counts(optouts=frozenset({(B, "")}), per_number_hour={A: 1})
        kept, refused = rules.screen([job(A), job(A), job(B)], None, Limits(per_number_per_hour=2), counts)
        assert kept == [job(A)]
        assert [(r.number, r.code) for r in refused] == [(A, 127), (B, 125)]

    def test_daily_caps_count_this_mail(self):
        """The SMS-per-day and spend-per-day caps include the jobs kept before in the mail."""
        kept, refused = rules.screen([job(A), job(B)], None, Limits(sms_per_day=3), Counts(sms_today=2))
        assert len(kept) == 1 and refused[0].code == 127
        kept, refused = rules.screen([job(A, 3), job(B, 3)], None, Limits(spend_per_day=5), Counts(spent_today=0))
        assert len(kept) == 1 and "credits per day" in refused[0].reason


class TestStatus:
    def test_refusal_order(self):
        """Country (126) is told before opt-out (125), caps (127) and invalid numbers (113)."""
        refused = [Refusal("x", 113, "bad"), Refusal(A, 125, "STOP"), Refusal(B, 126, "country")]
        assert rules.status_of(refused, [])[0] == 126

    def test_scheduled_is_101(self):
        """No refusal: 100, or 101 when the jobs have a date."""
        assert rules.status_of([], [job(A)]) == (100, "")
        assert rules.status_of([], [job(A, send_at=5.0)]) == (101, "")


class TestCountries:
    @pytest.mark.parametrize(("allowed", "number", "ok"), [
        (("FR",), "+33612121515", True),
        (("FR",), "+262692123456", True),    # La Réunion is France
        (("FR",), "+32470123456", False),
        (("*",), "+32470123456", True),
    ])
    def test_allowed_country(self, allowed, number, ok):
        """FR covers overseas France; * allows everything."""
        assert rules.allowed_country(allowed, number) is ok


def test_quiet_release_only_for_marketing():
    """A marketing SMS on a Sunday waits for Monday 08:00; a transactional one does not."""
    sunday = datetime(2026, 12, 6, 12, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    quiet = QuietHours()
    assert rules.quiet_release(quiet, "transactional", sunday) is None
    release = datetime.fromtimestamp(rules.quiet_release(quiet, "marketing", sunday), ZoneInfo("Europe/Paris"))
    assert (release.weekday(), release.hour) == (0, 8)


class TestStateTable:
    def test_nothing_that_may_be_out_returns_to_the_queue_except_by_an_operator(self):
        """calling and sent never go to queued; unknown does only by the operator's retry."""
        assert JobState.QUEUED not in TRANSITIONS[JobState.SENT]
        assert JobState.QUEUED in TRANSITIONS[JobState.CALLING]  # only after a definite non-delivery
        assert all(JobState.QUEUED not in TRANSITIONS[s] for s in (JobState.DELIVERED, JobState.UNDELIVERED))

    def test_illegal_transition_raises(self):
        """A change not in the table raises instead of being applied."""
        with pytest.raises(IllegalTransition, match="sent -> queued"):
            check_transition(JobState.SENT, JobState.QUEUED)
        assert check_transition(frozenset({JobState.CALLING, JobState.UNKNOWN}), JobState.SENT)


@pytest.mark.parametrize("text, expected", [
    ("STOP", "stop"), ("stop", "stop"), ("  Stop  ", "stop"), ("STOP SMS", "stop"), ("stop   sms", "stop"),
    ("Stop.", "stop"), ("STOP!", "stop"), ("ＳＴＯＰ", "stop"),
    ("START", "start"), ("start", "start"), ("REABO", "start"), ("réabo", "start"), ("RÉABO ", "start"),
    ("please stop", None), ("STOPPED", None), ("stop calling me", None), ("ACK", None), ("", None), (None, None),
    ("S T O P", None),
])
def test_keyword(text, expected):
    """Only a reply that is one of the words (any case, accents, spaces) changes the opt-outs."""
    assert rules.keyword(text) == expected
