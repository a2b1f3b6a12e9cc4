"""Tests for bridge.mail: raw e-mail bytes in, ParsedMail out, never an exception."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.mail import MAX_BODY_CHARS, ParsedMail, clean_text, html_to_text, parse_mail

MAILS = Path(__file__).parent / "mails"


def eml(text: str | bytes) -> bytes:
    """A literal message with CRLF line ends, as it arrives over SMTP."""
    data = text.encode("ascii") if isinstance(text, str) else text
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


MAIL_1 = eml("""\
Return-Path: <root@host.example.org>
Received: by host.example.org (Postfix, from userid 0)
\tid 4Tq9Zx1k2Wz9sWd; Fri,  1 Mar 2024 10:15:00 +0100 (CET)
To: sms@bridge.example.com
Subject: login@apiKey|0612121515|from=SHOP
User-Agent: mail (GNU Mailutils 3.14)
Date: Fri,  1 Mar 2024 10:15:00 +0100 (CET)
Message-Id: <20240301091500.4Tq9Zx1k2Wz9sWd@host.example.org>
From: root <root@host.example.org>

Backup finished OK: 42 GB in 12 min.
""")

THUNDERBIRD_FLOWED = eml("""\
Message-ID: <5e1b2c3d-aaaa-bbbb-cccc-0123456789ab@example.fr>
Date: Mon, 4 Mar 2024 09:12:33 +0100
MIME-Version: 1.0
User-Agent: Mozilla Thunderbird
Content-Language: fr
To: sms@bridge.example.com
From: Jean Dupont <jean.dupont@Example.FR>
Subject: jdupont@KEY123|0612121515
Content-Type: text/plain; charset=UTF-8; format=flowed
Content-Transfer-Encoding: quoted-printable

Bonjour, la livraison de votre commande est pr=C3=A9vue demain entre 8h et=20
12h. Merci de votre confiance et =C3=A0 bient=C3=B4t sur notre site, l'=C3=
=A9quipe.
Ligne dure.

--=20
Jean Dupont
T=C3=A9l. 01 23 45 67 89
""")

APPLE_MAIL = eml("""\
From: Claire Petit <claire.petit@icloud.com>
Content-Type: multipart/alternative;
\tboundary="Apple-Mail=_4F2A8C1E-1B2C-4D5E-9F00-123456789ABC"
Mime-Version: 1.0 (Mac OS X Mail 16.0 \\(3774.500.171.1.1\\))
Subject: cpetit@APIKEY|0699887766
Message-Id: <8A1B2C3D-4E5F-6789-ABCD-EF0123456789@icloud.com>
Date: Wed, 6 Mar 2024 18:30:00 +0100
To: sms@bridge.example.com
X-Mailer: Apple Mail (2.3774.500.171.1.1)


--Apple-Mail=_4F2A8C1E-1B2C-4D5E-9F00-123456789ABC
Content-Transfer-Encoding: base64
Content-Type: text/plain;
\tcharset=utf-8

UmVuZGV6LXZvdXMgw6AgMTVoIGRldmFudCBs4oCZZW50csOpZS4KCkNsYWlyZQo=
--Apple-Mail=_4F2A8C1E-1B2C-4D5E-9F00-123456789ABC
Content-Transfer-Encoding: base64
Content-Type: text/html;
\tcharset=utf-8

PGh0bWw+PGhlYWQ+PG1ldGEgaHR0cC1lcXVpdj0iY29udGVudC10eXBlIiBjb250ZW50PSJ0ZXh0
L2h0bWw7IGNoYXJzZXQ9dXRmLTgiPjwvaGVhZD48Ym9keSBzdHlsZT0ib3ZlcmZsb3ctd3JhcDog
YnJlYWstd29yZDsiPjxkaXY+UmVuZGV6LXZvdXMgw6AgMTVoIGRldmFudCBs4oCZZW50csOpZS48
L2Rpdj48ZGl2Pjxicj48L2Rpdj48ZGl2PkNsYWlyZTwvZGl2PjwvYm9keT48L2h0bWw+
--Apple-Mail=_4F2A8C1E-1B2C-4D5E-9F00-123456789ABC--
""")

# The plain part holds "Rendez-vous à 15h devant l’entrée.\n\nClaire\n" (base64 above).
APPLE_HTML_ONLY = APPLE_MAIL.replace(b"text/plain;", b"image/png;")

MIXED_WITH_ATTACHMENTS = eml("""\
From: compta@example.com
To: sms@bridge.example.com
Subject: compta@KEY|0611111111
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="------------mixed123"

This is a multi-part message in MIME format.
--------------mixed123
Content-Type: text/plain; charset=UTF-8; name="notes.txt"
Content-Disposition: inline; filename="notes.txt"
Content-Transfer-Encoding: 7bit

An inline text file is still an attachment.
--------------mixed123
Content-Type: multipart/alternative; boundary="------------alt456"

--------------alt456
Content-Type: multipart/related; boundary="------------rel789"

--------------rel789
Content-Type: text/html; charset=UTF-8
Content-Transfer-Encoding: 7bit

<html><body><p>Facture <b>2024-03</b> envoy&eacute;e.</p><img src="cid:logo"></body></html>
--------------rel789
Content-Type: image/png; name="logo.png"
Content-Disposition: inline; filename="logo.png"
Content-ID: <logo>
Content-Transfer-Encoding: base64

iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==
--------------rel789--

--------------alt456--

--------------mixed123
Content-Type: application/pdf; name="facture.pdf"
Content-Disposition: attachment; filename="facture.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQKJcfsj6IKMSAwIG9iago8PC9UeXBlL0NhdGFsb2c+PgplbmRvYmoKdHJhaWxlcgo8PD4+CiUlRU9GCg==
--------------mixed123
Content-Type: text/plain; charset=UTF-8
Content-Disposition: attachment; filename="log.txt"

attached log, not the SMS
--------------mixed123--
""")

# Thunderbird: body first, then a PDF and a text file attached.
MIXED_BODY_FIRST = MIXED_WITH_ATTACHMENTS.replace(
    b'Content-Type: text/plain; charset=UTF-8; name="notes.txt"\r\n'
    b'Content-Disposition: inline; filename="notes.txt"',
    b"Content-Type: text/plain; charset=UTF-8",
)

FORWARDED = eml("""\
From: boss@example.com
Subject: boss@KEY|0611111111
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="fw"

--fw
Content-Type: message/rfc822

From: someone@example.net
Subject: old news
Content-Type: text/plain

The forwarded mail is not the SMS.
--fw--
""")

ZABBIX = eml("""\
From: Zabbix <zabbix@monitoring.example.com>
To: sms@bridge.example.com
Date: Thu, 07 Mar 2024 03:14:15 +0100
Subject: =?UTF-8?B?b3BzQEszWXwwNjExMjIzMzQ0fGZyb209WkFCQklYIOI=?=
 =?UTF-8?B?gJMgRGlzcXVlIHBsZWlu?=
Message-ID: <20240307031415.4242.zabbix@monitoring.example.com>
MIME-Version: 1.0
Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: base64

UHJvYmxlbSBzdGFydGVkIGF0IDAzOjE0OjE1IG9uIDIwMjQuMDMuMDcKUHJvYmxlbSBuYW1lOiBG
cmVlIGRpc2sgc3BhY2UgaXMgbGVzcyB0aGFuIDEwJSBvbiB2b2x1bWUgL3ZhcgpIb3N0OiBzcnYt
ZGItMDEKU2V2ZXJpdHk6IEhpZ2gKT3BlcmF0aW9uYWwgZGF0YTogOC4yICUKCk9yaWdpbmFsIHBy
b2JsZW0gSUQ6IDQyNDIK
""")

ZABBIX_BODY = (
    "Problem started at 03:14:15 on 2024.03.07\n"
    "Problem name: Free disk space is less than 10% on volume /var\n"
    "Host: srv-db-01\nSeverity: High\nOperational data: 8.2 %\n\nOriginal problem ID: 4242"
)


def single(content_type: str, body: bytes, cte: str = "8bit", extra: str = "") -> bytes:
    """A one-part message with the given Content-Type and raw body bytes."""
    head = (
        "From: a@example.com\nTo: sms@bridge.example.com\nSubject: a@K|0611111111\n"
        f"MIME-Version: 1.0\nContent-Type: {content_type}\nContent-Transfer-Encoding: {cte}\n{extra}\n"
    )
    return eml(head.encode("ascii") + body)


BODY_CASES = [
    pytest.param(MAIL_1, "Backup finished OK: 42 GB in 12 min.", "text/plain", id="mail1-7bit"),
    pytest.param(
        THUNDERBIRD_FLOWED,
        "Bonjour, la livraison de votre commande est prévue demain entre 8h et 12h. Merci de "
        "votre confiance et à bientôt sur notre site, l'équipe.\nLigne dure.",
        "text/plain",
        id="thunderbird-flowed-qp",
    ),
    pytest.param(
        (MAILS / "outlook_alternative.eml").read_bytes(),
        "Votre rendez-vous est confirmé pour jeudi à 10h.\n\nCordialement,\nSophie",
        "text/plain",
        id="outlook-alternative-plain-wins",
    ),
    pytest.param(
        (MAILS / "outlook_html_only.eml").read_bytes(),
        "Bonjour,\n\nLe colis n°4512 est arrivé au dépôt de Lyon. Merci de passer le récupérer "
        "avant 18h.\nPensez à votre pièce d’identité.\n\nCordialement,\nService client",
        "text/html",
        id="outlook-html-only",
    ),
    pytest.param(APPLE_MAIL, "Rendez-vous à 15h devant l’entrée.\n\nClaire", "text/plain", id="apple-base64"),
    pytest.param(APPLE_HTML_ONLY, "Rendez-vous à 15h devant l’entrée.\n\nClaire", "text/html", id="apple-html"),
    pytest.param(MIXED_WITH_ATTACHMENTS, "Facture 2024-03 envoyée.", "text/html", id="attachments-ignored"),
    pytest.param(
        MIXED_BODY_FIRST, "An inline text file is still an attachment.", "text/plain", id="mixed-body-first"
    ),
    pytest.param(FORWARDED, "", "none", id="rfc822-not-entered"),
    pytest.param(ZABBIX, ZABBIX_BODY, "text/plain", id="zabbix-base64"),
    pytest.param(
        (MAILS / "alertmanager_text_html.eml").read_bytes(),
        "[FIRING:1] DiskFull db1:9100 critical\nsummary: Disk /var is 95% full",
        "text/plain",
        id="alertmanager-plain-after-html",
    ),
    pytest.param(
        (MAILS / "alertmanager_html_only.eml").read_bytes(),
        "1 alert for alertname=DiskFull\nView in Alertmanager\n[1] Firing\nLabels\n"
        "alertname = DiskFull\ninstance = db1:9100\nseverity = critical\nAnnotations\n"
        "summary = Disk /var is 95% full\nSource\nSent by Alertmanager",
        "text/html",
        id="alertmanager-html-only",
    ),
    pytest.param(
        single("text/plain; charset=iso-8859-1", "Réunion à 14h\n".encode("latin-1")),
        "Réunion à 14h",
        "text/plain",
        id="iso-8859-1",
    ),
    pytest.param(
        single("text/plain; charset=iso-8859-15", "Prix : 12 € TTC, Œuvre\n".encode("iso-8859-15")),
        "Prix : 12 € TTC, Œuvre",
        "text/plain",
        id="iso-8859-15-euro",
    ),
    pytest.param(
        single('text/plain; charset="windows-1252"', "“Soldes” : -10 € l’article…".encode("cp1252")),
        "“Soldes” : -10 € l’article…",
        "text/plain",
        id="windows-1252",
    ),
    pytest.param(
        single("text/plain; charset=iso-8859-1", b"C\x92est 5 \x80, d\xe9j\xe0 pay\xe9"),
        "C’est 5 €, déjà payé",
        "text/plain",
        id="iso-8859-1-mislabelled-windows-1252",
    ),
    pytest.param(
        single("text/plain; charset=iso-8859-1", "Prix: 5 € – payé".encode("utf-8")),
        "Prix: 5 € – payé",
        "text/plain",
        id="iso-8859-1-mislabelled-utf-8",
    ),
    pytest.param(
        single("text/plain; charset=utf-8", "Réunion à 14h".encode("latin-1")),
        "Réunion à 14h",
        "text/plain",
        id="says-utf-8-is-latin-1",
    ),
    pytest.param(
        single("text/plain; charset=x-klingon", "Café".encode("utf-8")), "Café", "text/plain", id="unknown-charset"
    ),
    pytest.param(
        single("text/plain; charset=unicode_escape", b"Caf\\xe9 \\u20ac C:\\new"), "Caf\\xe9 \\u20ac C:\\new",
        "text/plain", id="python-codec-not-a-charset",
    ),
    pytest.param(
        single("text/plain; charset=punycode", b"Appel-moi"), "Appel-moi", "text/plain", id="punycode-not-a-charset"
    ),
    pytest.param(single("text/plain", "Café".encode("cp1252")), "Café", "text/plain", id="no-charset-cp1252"),
    pytest.param(single("text/plain", "Café".encode("utf-8")), "Café", "text/plain", id="no-charset-utf-8"),
    pytest.param(
        single("text/plain; charset=us-ascii", b"It\x92s \x80 5"), "It’s € 5", "text/plain", id="us-ascii-8bit"
    ),
    pytest.param(
        single("text/plain; charset=utf-8", b"caf\xc3\xa9 \xff\x81 ok"),
        "café \ufffd\ufffd ok",
        "text/plain",
        id="undecodable-bytes",
    ),
    pytest.param(
        single("text/plain; charset=utf-8", b"Hello\r\n\r\n-- \r\nJohn\r\n"),
        "Hello",
        "text/plain",
        id="sig-dash-dash-space",
    ),
    pytest.param(
        single("text/plain; charset=utf-8", b"Hello\r\n--\r\nJohn\r\n"), "Hello", "text/plain", id="sig-dash-dash"
    ),
    pytest.param(
        single("text/plain; charset=utf-8", b"\r\n\r\nHello\r\nworld  \r\n\r\n\r\n"),
        "Hello\nworld",
        "text/plain",
        id="outer-blank-lines",
    ),
    pytest.param(
        single("text/plain; charset=utf-8", b"> quoted\r\n\r\n\r\nreply -- not a sig\r\n---\r\n"),
        "> quoted\n\n\nreply -- not a sig\n---",
        "text/plain",
        id="quotes-and-inner-blank-lines-kept",
    ),
    pytest.param(single("text/plain; charset=utf-8", b""), "", "text/plain", id="empty-body"),
    pytest.param(eml("From: a@example.com\nSubject: x\n"), "", "text/plain", id="no-body-at-all"),
    pytest.param(
        single("application/pdf", b"%PDF-1.4", extra="Content-Disposition: attachment\n"), "", "none", id="pdf-only"
    ),
    pytest.param(
        eml("""\
Subject: a@K|0611111111
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary=b

--b
Content-Type: text/plain; charset=utf-8

--b
Content-Type: text/html; charset=utf-8

<p>Only in HTML</p>
--b--
"""),
        "Only in HTML",
        "text/html",
        id="empty-plain-gives-way-to-html",
    ),
    pytest.param(
        eml("Subject: x\nContent-Type: multipart/mixed; boundary=zz\n\n"
            "--zz\nContent-Type: text/plain\n\nno end boundary"),
        "no end boundary",
        "text/plain",
        id="broken-mime-no-close",
    ),
    pytest.param(
        eml("Subject: x\nContent-Type: multipart/mixed\n\nno boundary parameter at all"),
        "",
        "none",
        id="broken-mime-no-boundary",
    ),
]


@pytest.mark.parametrize(("raw", "body", "source"), BODY_CASES)
def test_body(raw: bytes, body: str, source: str) -> None:
    """The SMS text and where it came from."""
    mail = parse_mail(raw)
    assert (mail.body, mail.body_source) == (body, source)


FLOWED_CASES = [
    pytest.param("format=flowed", b"one \r\ntwo\r\nthree", "one two\nthree", id="soft-break"),
    pytest.param("format=flowed; delsp=yes", b"Bonj \r\nour\r\nx", "Bonjour\nx", id="delsp"),
    pytest.param("format=flowed", b"> one \r\n> two\r\n>> deep\r\nreply", "> one two\n>> deep\nreply", id="quoted"),
    pytest.param("format=flowed", b" From me\r\n >x", "From me\n>x", id="space-stuffed"),
    pytest.param("format=flowed", b"text \r\n-- \r\nsig", "text", id="signature-not-flowed"),
    pytest.param("format=fixed", b"one \r\ntwo", "one\ntwo", id="fixed"),
]


@pytest.mark.parametrize(("params", "raw_body", "body"), FLOWED_CASES)
def test_format_flowed(params: str, raw_body: bytes, body: str) -> None:
    """RFC 3676 format=flowed bodies are unwrapped."""
    assert parse_mail(single(f"text/plain; charset=utf-8; {params}", raw_body)).body == body


def test_huge_body_is_truncated() -> None:
    """A body over 1 MiB is cut to 1 MiB before cleaning."""
    mail = parse_mail(single("text/plain; charset=utf-8", b"a" * (3 * MAX_BODY_CHARS)))
    assert mail.body == "a" * MAX_BODY_CHARS


def test_huge_html_body_is_bounded() -> None:
    """Pathological HTML (unterminated tags) is converted in linear time."""
    mail = parse_mail(single("text/html; charset=utf-8", b"<a" * MAX_BODY_CHARS))
    assert mail.body.startswith("<a<a") and len(mail.body) == MAX_BODY_CHARS


SUBJECT_CASES = [
    pytest.param("login@apiKey|0612121515|from=SHOP", "login@apiKey|0612121515|from=SHOP", id="plain"),
    pytest.param("=?utf-8?q?R=C3=A9union_=C3=A0_14h?=", "Réunion à 14h", id="q-utf-8"),
    pytest.param("=?iso-8859-1?b?Uul1bmlvbg==?=", "Réunion", id="b-iso-8859-1"),
    pytest.param("=?UTF-8?Q?caf=C3=A9?= =?ISO-8859-1?Q?_cr=E8me?=", "café crème", id="several-charsets"),
    pytest.param("Re: =?utf-8?q?caf=C3=A9?= ok =?utf-8?q?th=C3=A9?=", "Re: café ok thé", id="words-and-text"),
    pytest.param("=?utf-8?q?a?=\r\n =?utf-8?q?b?=\r\n\t=?utf-8?q?c?=", "abc", id="folded-words-joined"),
    pytest.param("=?utf-8?b?w6k=?=\r\n =?utf-8?b?w6g=?=", "éè", id="folded-b-words"),
    pytest.param("=?utf-8?b?4oI=?= =?utf-8?b?rA==?=", "€", id="char-split-across-words"),
    pytest.param("login@key|\r\n 0612121515", "login@key| 0612121515", id="folded-text"),
    pytest.param("=?x-unknown?q?caf=C3=A9?=", "café", id="unknown-charset-utf-8"),
    pytest.param("=?x-unknown?q?caf=E9?=", "café", id="unknown-charset-latin"),
    pytest.param("=?utf-8*fr?q?caf=C3=A9?=", "café", id="rfc2231-language"),
    pytest.param("=?utf-8?b?!!!?= x", "=?utf-8?b?!!!?= x", id="bad-base64-kept"),
    pytest.param("=?utf-8?q?a=0D=0ABcc:_evil@example.com?=", "a Bcc: evil@example.com", id="encoded-crlf"),
    pytest.param("hello\tworld\x0bagain\x00!", "hello world again !", id="controls"),
    pytest.param("=?utf-8?q?a=E2=80=A8b=C2=85c?=", "a b c", id="unicode-line-breaks"),
    pytest.param("  spaced  out  ", "spaced  out", id="inner-spaces-kept"),
]


@pytest.mark.parametrize(("header", "subject"), SUBJECT_CASES)
def test_subject(header: str, subject: str) -> None:
    """Subjects are decoded and come out as one stripped line."""
    mail = parse_mail(eml(f"From: a@example.com\nSubject: {header}\n\nbody\n"))
    assert mail.subject == subject
    assert "\n" not in mail.subject and "\r" not in mail.subject


@pytest.mark.parametrize(
    ("raw_subject", "subject"),
    [
        pytest.param("Réunion".encode("utf-8"), "Réunion", id="raw-utf-8"),
        pytest.param("Réunion".encode("latin-1"), "Réunion", id="raw-latin-1"),
    ],
)
def test_subject_raw_8bit(raw_subject: bytes, subject: str) -> None:
    """Unencoded 8-bit subjects are decoded as utf-8, else windows-1252."""
    assert parse_mail(b"Subject: " + raw_subject + b"\r\n\r\nbody").subject == subject


def test_subject_crlf_injection_is_one_line() -> None:
    """A CR or LF smuggled into the subject cannot start a new header."""
    raw = b"Subject: a@K|06\rBcc: x@example.com\r\n\tmore\nX: y\r\n\r\nbody"
    subject = parse_mail(raw).subject
    assert "\r" not in subject and "\n" not in subject and subject.startswith("a@K|06")


HEADER_CASES = [
    pytest.param("Message-ID: <abc.123@mx.example.com>", "message_id", "abc.123@mx.example.com", id="message-id"),
    pytest.param("Message-ID:\r\n  <abc@x>  ", "message_id", "abc@x", id="message-id-folded"),
    pytest.param("Message-ID: bare-id@x", "message_id", "bare-id@x", id="message-id-no-brackets"),
    pytest.param("Message-ID: ", "message_id", None, id="message-id-empty"),
    pytest.param("X-Other: 1", "message_id", None, id="message-id-missing"),
    pytest.param("From: Jean <Jean.Dupont@Example.FR>", "sender", "Jean.Dupont@example.fr", id="from"),
    pytest.param(
        'From: a@example.com\r\nReply-To: "Desk, Help" <Help@Example.COM>',
        "sender",
        "Help@example.com",
        id="reply-to",
    ),
    pytest.param("From: a@example.com\r\nReply-To: garbage", "sender", "a@example.com", id="reply-to-unusable"),
    pytest.param("From: =?utf-8?q?Jos=C3=A9?= <jose@example.es>", "sender", "jose@example.es", id="from-encoded-name"),
    pytest.param("From: undisclosed-recipients:;", "sender", None, id="from-group"),
    pytest.param("From: not an address", "sender", None, id="from-garbage"),
    pytest.param("X-Other: 1", "sender", None, id="no-from"),
    pytest.param("Auto-Submitted: auto-replied", "auto_submitted", True, id="auto-replied"),
    pytest.param("Auto-Submitted: auto-generated; owner-email=x@y", "auto_submitted", True, id="auto-generated"),
    pytest.param("Auto-Submitted: No", "auto_submitted", False, id="auto-no"),
    pytest.param("X-Other: 1", "auto_submitted", False, id="auto-missing"),
    pytest.param("List-Id: Ops <ops.lists.example.com>", "list_mail", True, id="list-id"),
    pytest.param("List-Unsubscribe: <mailto:u@example.com>", "list_mail", True, id="list-unsubscribe"),
    pytest.param("List-Post: NO", "list_mail", True, id="list-post"),
    pytest.param("Precedence: bulk", "list_mail", True, id="precedence-bulk"),
    pytest.param("Precedence: Junk", "list_mail", True, id="precedence-junk"),
    pytest.param("Precedence: list", "list_mail", True, id="precedence-list"),
    pytest.param("Precedence: first-class", "list_mail", False, id="precedence-other"),
    pytest.param(
        "References: <a@x> <b@y>\r\n <c@z>", "references", ("a@x", "b@y", "c@z"), id="references-folded"
    ),
    pytest.param("X-Other: 1", "references", (), id="references-missing"),
]


@pytest.mark.parametrize(("headers", "field", "value"), HEADER_CASES)
def test_header_fields(headers: str, field: str, value: object) -> None:
    """Reply metadata read from the headers."""
    mail = parse_mail(f"{headers}\r\nSubject: s\r\n\r\nbody\r\n".encode())
    assert getattr(mail, field) == value


def test_envelope_from_is_passed_through() -> None:
    """envelope_from is whatever the caller gives, None by default."""
    assert parse_mail(MAIL_1).envelope_from is None
    assert parse_mail(MAIL_1, envelope_from="bounce@example.org").envelope_from == "bounce@example.org"


def test_mail1_fields() -> None:
    """A whole ParsedMail for a plain mail(1) message."""
    assert parse_mail(MAIL_1) == ParsedMail(
        subject="login@apiKey|0612121515|from=SHOP",
        body="Backup finished OK: 42 GB in 12 min.",
        message_id="20240301091500.4Tq9Zx1k2Wz9sWd@host.example.org",
        sender="root@host.example.org",
        envelope_from=None,
        auto_submitted=False,
        list_mail=False,
        references=(),
        body_source="text/plain",
    )


def test_zabbix_subject() -> None:
    """Zabbix's base64 subject split in the middle of a character."""
    assert parse_mail(ZABBIX).subject == "ops@K3Y|0611223344|from=ZABBIX – Disque plein"


CLEAN_CASES = [
    pytest.param("a\r\nb\rc\n", "a\nb\nc", id="line-ends"),
    pytest.param("\ufeffHello\u200b world\ufeff", "Hello world", id="bom-zero-width"),
    pytest.param("Hi \t\n\n  \nthere  ", "Hi\n\n\nthere", id="trailing-whitespace"),
    pytest.param("Hi\n-- \nsig\n-- \nmore", "Hi", id="sig-first-separator"),
    pytest.param("Hi\n--\nsig", "Hi", id="sig-no-space"),
    pytest.param("Hi\n --\n---\n-- x", "Hi\n --\n---\n-- x", id="not-a-sig"),
    pytest.param("-- \nonly a signature", "", id="only-sig"),
    pytest.param("\n\n  indented\n\n", "  indented", id="leading-blank-lines"),
    pytest.param("👨\u200d👩\u200d👧", "👨\u200d👩\u200d👧", id="zwj-kept"),
]


@pytest.mark.parametrize(("text", "clean"), CLEAN_CASES)
def test_clean_text(text: str, clean: str) -> None:
    """clean_text's normalisations, one at a time."""
    assert clean_text(text) == clean


HTML_CASES = [
    pytest.param("<p>a</p><p>b</p>", "a\nb", id="paragraphs"),
    pytest.param("<div>a<br>b<br/>c</div><div><br></div><div>d</div>", "a\nb\nc\n\nd", id="gmail-divs"),
    pytest.param("<ul><li>one</li>\n  <li><p>two</p></li></ul>", "- one\n- two", id="list"),
    pytest.param("<ol><li>x<li>y</ol>", "- x\n- y", id="unclosed-li"),
    pytest.param("<h1>T</h1>text<hr>end", "T\ntext\nend", id="headings-hr"),
    pytest.param("<table><tr><td>a</td><td>b</td></tr><tr><th>c</th></tr></table>", "a b\nc", id="table"),
    pytest.param("<blockquote>q</blockquote>r", "q\nr", id="blockquote"),
    pytest.param("<pre>  x   y\n\tz</pre>a   b", "  x   y\n\tz\na b", id="pre-keeps-spaces"),
    pytest.param("a\n   b\t\tc", "a b c", id="source-whitespace"),
    pytest.param("caf&eacute; &amp; th&#233; &#x20AC;5&nbsp;&nbsp;net", "café & thé €5 net", id="entities"),
    pytest.param("<head><title>T</title><style>p{}</style></head><body>x</body>", "x", id="head-dropped"),
    pytest.param("<title>T</title>x<script>var a = '<p>';</script>y", "xy", id="script-dropped"),
    pytest.param("<head><meta charset=utf-8><body>kept</body>", "kept", id="unclosed-head"),
    pytest.param("<html><head><title>T</title><div>kept</div>", "kept", id="unclosed-head-no-body"),
    pytest.param("a<!-- hidden -->b<!--[if mso]><p>mso</p><![endif]-->c", "abc", id="comments"),
    pytest.param("<![if !supportLists]>-<![endif]>x", "-x", id="downlevel-revealed"),
    pytest.param("<p>a</p><p>&nbsp;</p><p>&nbsp;</p><p>&nbsp;</p><p>b</p>", "a\n\nb", id="one-blank-line"),
    pytest.param('<p class=MsoNormal>x<o:p></o:p></p><p class=MsoNormal><o:p>&nbsp;</o:p></p>', "x", id="mso-trailing"),
    pytest.param("<a href='http://x'>link</a> <img src=x alt=pic>", "link", id="links-images"),
    pytest.param("a < b and c > d", "a < b and c > d", id="bare-angle"),
    pytest.param("x<![CDATA[ y ]]>z", "xz", id="cdata"),
    pytest.param("a<!-- never closed <p>b</p>", "a", id="unterminated-comment"),
    pytest.param("a<![bogus stuff", "a<![bogus stuff", id="bogus-section"),
    pytest.param("a<b", "a<b", id="unterminated-tag"),
]


@pytest.mark.parametrize(("html", "text"), HTML_CASES)
def test_html_to_text(html: str, text: str) -> None:
    """html_to_text renders blocks as lines and drops invisible content."""
    assert html_to_text(html) == text


# --- never raises ----------------------------------------------------------------------------

HEADER_NAMES = ["Subject", "From", "Reply-To", "Message-ID", "References", "Content-Type",
                "Content-Transfer-Encoding", "Content-Disposition", "Auto-Submitted", "List-Id",
                "Precedence", "MIME-Version", "X-Junk"]
HEADER_VALUES = st.sampled_from([
    b"text/plain; charset=utf-8", b"text/html; charset=x-bogus", b"multipart/mixed; boundary=b",
    b"multipart/alternative; boundary=\"b\"", b"message/rfc822", b"base64", b"quoted-printable",
    b"attachment; filename*=utf-8''%E9t%C3", b"=?utf-8?b?w6k?=", b"=?x?q?=ZZ?=", b"<a@b> <c",
    b"\"unterminated <x@y", b"text/plain; charset=\"utf-8*fr\"; format=flowed; delsp=yes",
    b"text/plain; charset=base64", b"text/plain; charset=unicode_escape", b"text/plain; charset=idna",
]) | st.binary(max_size=40)
LINES = st.one_of(
    st.tuples(st.sampled_from(HEADER_NAMES), HEADER_VALUES).map(lambda t: t[0].encode() + b": " + t[1]),
    st.sampled_from([b"", b"--b", b"--b--", b" folded", b"\tfolded", b"-- ", b"<p>x", b"=C3=A9=", b"w6k="]),
    st.binary(max_size=60),
)
MESSAGES = st.lists(LINES, max_size=40).flatmap(
    lambda lines: st.sampled_from([b"\r\n", b"\n", b"\r"]).map(lambda sep: sep.join(lines))
)


def check(mail: ParsedMail) -> None:
    """The invariants every ParsedMail keeps, whatever the input."""
    for text in (mail.subject, mail.body, mail.body_source):
        assert isinstance(text, str)
    assert mail.message_id is None or isinstance(mail.message_id, str)
    assert mail.sender is None or isinstance(mail.sender, str)
    assert all(isinstance(r, str) for r in mail.references)
    assert "\n" not in mail.subject and "\r" not in mail.subject
    assert mail.body_source in ("text/plain", "text/html", "none")


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(raw: bytes) -> None:
    """parse_mail returns str fields for any bytes."""
    check(parse_mail(raw))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGES)
def test_header_soup_never_raises(raw: bytes) -> None:
    """parse_mail survives glued header-ish lines, MIME debris and random bytes."""
    check(parse_mail(raw))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([*"<>!-[]/&#;=\"' \nabp", "<![if", "<!--", "-->", "<pre>", "&nbsp;"])).map("".join))
def test_html_soup_never_raises(html: str) -> None:
    """html_to_text returns a str for any tag soup."""
    assert isinstance(html_to_text(html), str)


# --- hostile structure and reply safety (issue 13) -------------------------------------


def _nested(depth: int, headers: str = "") -> bytes:
    """A mail whose text sits ``depth`` multiparts deep."""
    head = f"From: alice@example.org\nSubject: login@key|0612121515\n{headers}MIME-Version: 1.0\n"
    opening = "".join(f"Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n" for i in range(depth))
    closing = "".join(f"--b{i}--\n" for i in reversed(range(depth)))
    return eml(head + opening + "Content-Type: text/plain\n\nHello\n" + closing)


class TestNesting:
    def test_shallow_nesting_is_read(self) -> None:
        """Three levels, as Outlook sends: the text is found."""
        assert parse_mail(_nested(3)).body == "Hello"

    def test_too_deep_text_is_not_looked_for(self) -> None:
        """Beyond 20 levels the parts are not looked into: no text, headers intact."""
        mail = parse_mail(_nested(25))
        assert (mail.body, mail.subject, mail.sender) == ("", "login@key|0612121515", "alice@example.org")

    @pytest.mark.parametrize(
        ("header", "field"),
        [
            pytest.param("Auto-Submitted: auto-generated\n", "auto_submitted", id="auto-submitted"),
            pytest.param("List-Id: <alerts.example.org>\n", "list_mail", id="list-id"),
        ],
    )
    def test_thousand_levels_keep_the_headers(self, header: str, field: str) -> None:
        """1,000 nested multiparts: unreadable, but the headers that stop a reply survive."""
        mail = parse_mail(_nested(1000, header))
        assert getattr(mail, field) is True
        assert mail.subject == "login@key|0612121515" and mail.body == ""


@pytest.mark.parametrize(
    ("header", "sender"),
    [
        pytest.param("=?utf-8?q?x:_inj1@evil.org?= <real@Example.org>", "real@example.org", id="colon-in-encoded-word"),
        pytest.param("=?utf-8?q?x:?= _inj1@evil.org?=", None, id="encoded-word-group-trick"),
        pytest.param("=?utf-8?q?Al=C3=A9?= <ale@example.org>", "ale@example.org", id="encoded-name"),
        pytest.param("Alice <alice@Example.ORG>", "alice@example.org", id="plain"),
        pytest.param("a@b@c", None, id="two-ats"),
        pytest.param("undisclosed-recipients:;", None, id="empty-group"),
    ],
)
def test_from_is_an_rfc5322_address(header: str, sender: str | None) -> None:
    """From is read with the RFC 5322 grammar: an encoded word is never an address."""
    assert parse_mail(eml(f"From: {header}\nSubject: s\n\nhi\n")).sender == sender


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        pytest.param("Content-Type: multipart/report; report-type=delivery-status; boundary=x\n",
                     "multipart/report", id="delivery-report"),
        pytest.param("Return-Path: <>\n", "return_path_null", id="return-path-null"),
        pytest.param("X-Failed-Recipients: bob@example.org\n", "x_failed_recipients", id="exim-bounce"),
        pytest.param("From: MAILER-DAEMON@mx.example.org\n", "mailer_daemon", id="mailer-daemon"),
        pytest.param("From: postmaster@mx.example.org\n", "mailer_daemon", id="postmaster"),
        pytest.param("Return-Path: <alice@example.org>\n", None, id="ordinary"),
    ],
)
def test_bounces_are_recognised(headers: str, reason: str | None) -> None:
    """Delivery reports and bounces are marked, and count as automatic mail."""
    if "From:" not in headers:
        headers = "From: alice@example.org\n" + headers
    mail = parse_mail(eml(f"{headers}Subject: login@key|0612121515\n\n--x--\n"))
    assert mail.bounce == reason
    assert mail.auto_submitted is (reason is not None)
