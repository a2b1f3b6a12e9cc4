"""Tests for bridge.mime: raw bytes to the message the stdlib would make, with less work."""

from __future__ import annotations

import email
import email.message

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.mail import parse_mail
from bridge.mime import _POLICY, _single_part


class TestHeaderIndex:
    """parse_mail reads headers through an index; it must answer as the stdlib's scan does,
    also after the message is changed."""

    RAW = (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: one\r\nsubject: two\r\n"
           b"Content-Type: text/plain; charset=utf-8; format=flowed\r\n\r\nbody\r\n")

    def test_lookups_match_the_stdlib_after_changes(self) -> None:
        ours = email.message_from_bytes(self.RAW, policy=_POLICY)
        plain = email.message_from_bytes(self.RAW, policy=_POLICY, _class=email.message.Message)
        assert type(ours) is not email.message.Message

        def same() -> None:
            for name in ("subject", "SUBJECT", "from", "content-type", "x-missing", "new", "to"):
                assert ours.get(name, "-") == email.message.Message.get(plain, name, "-")
                assert (name in ours) == (name in plain)
            assert ours.get_content_charset() == plain.get_content_charset()
            assert ours.get_param("format") == plain.get_param("format")
            assert ours.get_params() == plain.get_params()
            assert ours.get_params(header="content-disposition") == plain.get_params(header="content-disposition")
            assert ours.get_filename() == plain.get_filename()
            assert ours.get_content_type() == plain.get_content_type()
            assert ours.get_content_maintype() == plain.get_content_maintype()

        ours.get_params(unquote=False).append(("x", "y"))  # a caller's copy: the next read is unchanged

        same()
        for message in (ours, plain):
            message.replace_header("Subject", "three")
            message["New"] = "added"
            message.set_param("charset", "iso-8859-1")
            del message["To"]
            message.add_header("To", "c@example.com")
            message.add_header("Content-Disposition", "inline", filename="a.txt")
        same()
        assert ours.get("subject") == "three" and ours.get_content_charset() == "iso-8859-1"
        for message in (ours, plain):
            message.set_type("text/html")
        same()
        for message in (ours, plain):
            del message["Content-Type"]
            message.set_default_type("message/rfc822")
        same()
        assert ours.get_content_type() == "message/rfc822"


class TestParameters:
    """Header parameters are split by the bridge when nothing in them needs the stdlib's
    parser (quotes, escapes, RFC 2231): the answers must be the stdlib's all the same."""

    @settings(max_examples=800)
    @given(st.text(alphabet=' \t;=abcCHARSET-/8"\\*%\r\n\u00e9', max_size=40))
    def test_same_parameters_as_the_stdlib(self, value: str) -> None:
        ours = email.message_from_bytes(b"Subject: x\r\n\r\nbody", policy=_POLICY)
        plain = email.message_from_bytes(b"Subject: x\r\n\r\nbody", policy=_POLICY, _class=email.message.Message)
        for message in (ours, plain):
            message._headers.append(("Content-Type", value))
            message._headers.append(("Content-Disposition", value.upper()))
        for header in ("content-type", "content-disposition"):
            assert ours.get_params(header=header) == plain.get_params(header=header)
            assert ours.get_params(header=header, unquote=False) == plain.get_params(header=header, unquote=False)
        assert ours.get_content_charset() == plain.get_content_charset()
        assert ours.get_filename() == plain.get_filename()


_GOOD = ["Subject", "From", "To", "Content-Type", "Content-Transfer-Encoding", "X-A", "MIME-Version"]
_NAMES = st.sampled_from(_GOOD * 4 + ["From ", "", " ", "\tX", "Bad Name", "\u00dc"])
_VALUES = st.sampled_from([" x", "\tx", " a b", " text/plain; charset=utf-8", " TEXT/HTML", " \u00e9", " =?utf-8?q?a?="] * 4
                          + ["", " multipart/mixed; boundary=b", " message/rfc822", " a\x0cb", " a\rb", " a\x1cb",
                             ": x"])
_ENDS = st.sampled_from(["\r\n", "\n"] * 6 + ["\r"])


@st.composite
def _raw_mails(draw) -> bytes:
    """Mostly well-formed one-part mails, with now and then what the shortcut must refuse."""
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        lines.append(draw(_NAMES) + ":" * (draw(st.integers(0, 9)) > 0) + draw(_VALUES) + draw(_ENDS))
        if draw(st.integers(0, 3)) == 0:
            lines.append(draw(st.sampled_from([" folded", "\tfolded", " "])) + draw(_ENDS))
    head = "".join(lines)
    blank = draw(st.sampled_from(["\r\n", "\n"] * 4 + ["\r", ""]))
    body = draw(st.sampled_from(["", "body\r\n", "a\n\nb\r\n", "--b\r\nX: y\r\n\r\npart\r\n--b--\r\n", "\r\n"]))
    return (head + blank + body).encode("utf-8") + draw(st.sampled_from([b"", b"\xe9t\xe9\r\n", b"\x85"]))


class TestOnePartFastPath:
    """The one-part shortcut must build exactly the message the stdlib's parser builds."""

    @settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
    @given(_raw_mails())
    def test_same_message_as_the_stdlib(self, raw: bytes) -> None:
        fast = _single_part(raw)
        full = email.message_from_bytes(raw, policy=_POLICY)
        if fast is None:
            return
        assert fast._headers == full._headers
        assert fast.get_payload() == full.get_payload()
        assert not full.is_multipart() and full.get_unixfrom() is None and full.defects == []

    @pytest.mark.parametrize("raw", [
        b"Subject: hi\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n",
        b"Subject: hi\n folded\nFrom: a@b.c\n\nbody\n",
        b"Subject: caf\xc3\xa9\r\n\r\n",
    ])
    def test_the_usual_mails_take_it(self, raw: bytes) -> None:
        assert _single_part(raw) is not None
        assert parse_mail(raw).subject.startswith("hi") or parse_mail(raw).subject == "café"

    @pytest.mark.parametrize("raw", [
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
        b"From someone Mon Jan 1\r\nSubject: x\r\n\r\nbody",
        b"Subject: x\r\nnot a header\r\n\r\nbody",
        b"Subject: x\r\n",
        b"\r\nbody",
    ])
    def test_the_others_take_the_stdlib_way(self, raw: bytes) -> None:
        assert _single_part(raw) is None
