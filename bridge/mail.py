"""Turn raw e-mail bytes into a ``ParsedMail``: decoded subject, SMS text, reply metadata.

Nothing here raises on bad input (broken headers, unknown charsets, broken MIME, huge
bodies): every field gets a best-effort value and the caller decides the status.

How the SMS text (the mail body) is found:

- The first ``text/plain`` part that is not an attachment, anywhere in the MIME tree
  (multipart/mixed, multipart/alternative, multipart/related, nested the way Outlook,
  Thunderbird and Apple Mail send them). A part is an attachment when its
  Content-Disposition is ``attachment`` or when it has a file name. If there is no such
  part, or it is empty once cleaned, the first non-attachment ``text/html`` part converted
  to text. Attachments (images, PDFs, even text/plain files) are ignored, and forwarded
  mail (``message/rfc822`` parts) is not looked into: it is not the SMS.
- The Content-Transfer-Encoding (quoted-printable, base64, 7bit, 8bit) is decoded, then the
  declared charset (utf-8, iso-8859-1, iso-8859-15, windows-1252, any other charset Python
  knows; not its codecs that act on text, such as ``unicode_escape``, which count as unknown).
  If the declared charset is unknown or does not fit the bytes: utf-8, then windows-1252
  (covers mislabelled iso-8859-1), then utf-8 with U+FFFD for undecodable bytes. A body
  declared ``iso-8859-1`` or ``us-ascii`` that holds bytes 0x80-0x9F is read as utf-8, else
  windows-1252 (Outlook's curly quotes and euro sign). No charset: utf-8, then windows-1252.
- ``format=flowed`` text (RFC 3676, Thunderbird) is unwrapped: soft line breaks are joined.
- A body longer than 1 MiB (1,048,576 characters) after decoding is cut to 1 MiB.
- Parts nested deeper than ``MAX_DEPTH`` (20) multiparts are not looked into. A mail the
  parser cannot read at all (1,000 nested multiparts exhaust its recursion) keeps its
  top-level headers, so ``Auto-Submitted``, ``List-Id`` and the bounce signs still stop
  a reply; its text is then empty.
- HTML to text: the content of ``<script>``, ``<style>``, ``<head>`` and ``<title>`` and
  comments (Outlook's ``<!--[if ...]>`` blocks included) is dropped; p, div, br, li, tr,
  h1-h6, table, ul, ol, blockquote, pre and hr end the line; ``<li>`` items start with
  "- "; table cells are separated by a space; entities are decoded (``&nbsp;`` is a
  space); runs of whitespace become one space, except in ``<pre>``; at most one blank line
  in a row. Other tags are dropped and their text kept (links keep their text only).
  Broken HTML reads as in browsers: an unclosed comment hides the rest, a stray "<" is text.
- Then, on both kinds of text: CRLF and lone CR become LF; a UTF-8 BOM and zero-width
  characters (U+200B, U+FEFF) are removed; trailing whitespace is stripped on each line;
  the signature is removed: everything from the first line that is ``--`` once trailing
  whitespace is stripped (so ``-- `` and ``--``) to the end; leading and trailing blank
  lines are removed. Inner line breaks, quoted replies and everything else are kept.
"""

from __future__ import annotations

import binascii
import codecs
import email.message
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.policy import default as _DEFAULT_POLICY
from email.utils import getaddresses
from functools import lru_cache
from html.parser import HTMLParser
from typing import TypeVar

from bridge import mime

_T = TypeVar("_T")

MAX_BODY_CHARS = 1 << 20  # 1 MiB: bounds the work; the SMS length check rejects far less
MAX_DEPTH = 20            # multipart levels looked into; real clients nest 3 or 4
_BOUNCE_SENDERS = frozenset({"mailer-daemon", "postmaster"})

_C1_BYTES = re.compile(rb"[\x80-\x9f]")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
# any run of spaces holding a control or line-breaking character: one space (no header injection)
_HEADER_BREAKS = re.compile(r" *[\x00-\x1f\x7f-\x9f\u2028\u2029][\x00-\x1f\x7f-\x9f\u2028\u2029 ]*")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_ANGLE_ID = re.compile(r"<([^<>\s]+)>")
_BAD_ADDR_CHAR = re.compile(r"[\s\x00-\x1f\x7f<>]")
_HTML_SPACE = re.compile(r"[ \t\n\r\f]+")  # HTML's collapsible whitespace (not &nbsp;)
_SPACES = re.compile(r"[ \xa0]+")
_NON_MSO_SECTION = re.compile(r"<!\[(?!(?:if|else|endif)(?![-.\w]))", re.I)
_COMMENT_END = re.compile(r"--\s*>")
_SECTION_END = re.compile(r"\]\s*>")
_ZERO_WIDTH = {0x200B: None, 0xFEFF: None}


@dataclass(frozen=True)
class ParsedMail:
    """What the bridge needs from one e-mail; every field is best effort."""

    subject: str                 # decoded, one line, stripped
    body: str                    # the SMS text (see the module docstring)
    message_id: str | None       # without <>, None if missing
    sender: str | None           # Reply-To, else From: bare address, domain lowercased
    envelope_from: str | None    # the SMTP MAIL FROM, given by the caller
    auto_submitted: bool         # Auto-Submitted not "no", or a bounce (never answer it)
    list_mail: bool              # mailing-list or bulk mail (never answer it)
    references: tuple[str, ...]  # Message-IDs from References, for reply threading
    body_source: str             # "text/plain", "text/html" or "none", for diagnostics
    bounce: str | None = None    # why it looks like a bounce or delivery report, else None


def parse_mail(raw: bytes, envelope_from: str | None = None) -> ParsedMail:
    """Parse raw e-mail bytes into a ``ParsedMail``; never raises on malformed input."""
    try:
        message = mime.read(raw)
        body, source = extract_body(message)
    except Exception:  # the parser is lenient, but absurd MIME nesting exhausts recursion:
        message = mime.read_headers(raw)  # keep the top-level headers, give up on the body
        body, source = "", "none"
    headers = message.first_values()
    submitted = _header(headers, "auto-submitted")
    auto = (submitted or "").split(";")[0].strip().lower()
    precedence = (_header(headers, "precedence") or "").strip().lower()
    bounce = bounce_reason(message, headers)
    return ParsedMail(
        subject=_one_line(_decode_words(_header(headers, "subject") or "")),
        body=body,
        message_id=_message_id(_header(headers, "message-id")),
        sender=_address(_header(headers, "reply-to")) or _address(_header(headers, "from")),
        envelope_from=envelope_from,
        auto_submitted=(submitted is not None and auto != "no") or bounce is not None,
        list_mail=precedence in ("bulk", "list", "junk")
        or any(h in headers for h in ("list-id", "list-unsubscribe", "list-post")),
        references=tuple(_ANGLE_ID.findall(_header(headers, "references") or "")),
        body_source=source,
        bounce=bounce,
    )


def bounce_reason(message: email.message.Message, headers: Mapping[str, tuple[str, str]]) -> str | None:
    """Why ``message`` looks like a bounce or a delivery report (never answer one), or None.

    RFC 3464 delivery reports are ``multipart/report``; bounces carry ``Return-Path: <>``
    (the null sender, as seen after delivery, e.g. in an IMAP mailbox) or Exim's
    ``X-Failed-Recipients``, or come from ``MAILER-DAEMON@`` / ``postmaster@``. ``headers``:
    the message's ``first_values``.
    """
    if _safely(message.get_content_type, "") == "multipart/report":
        return "multipart/report"
    if (_header(headers, "return-path") or "x").strip() in ("<>", ""):
        return "return_path_null"
    if "x-failed-recipients" in headers:
        return "x_failed_recipients"
    sender = _address(_header(headers, "from")) or ""
    if sender.rpartition("@")[0].lower() in _BOUNCE_SENDERS:
        return "mailer_daemon"
    return None


def extract_body(message: email.message.Message) -> tuple[str, str]:
    """Find, decode and clean the SMS text (rules in the module docstring).

    Returns ``(text, source)``, source being "text/plain", "text/html" or "none"."""
    plain = html = None
    for part in _leaves(message, MAX_DEPTH):
        ctype = _safely(part.get_content_type, "")
        if ctype not in ("text/plain", "text/html") or _is_attachment(part):
            continue
        if ctype == "text/plain" and plain is None:
            plain = part
        elif ctype == "text/html" and html is None:
            html = part
    text = clean_text(_plain_text(plain)) if plain is not None else ""
    if text or (plain is not None and html is None):
        return text, "text/plain"
    if html is not None:  # no plain part, or an empty one next to the HTML
        return clean_text(html_to_text(_part_text(html))), "text/html"
    return "", "none"


def html_to_text(html: str) -> str:
    """Render HTML as plain text: line breaks for blocks, no markup, scripts or styles."""
    parser = _HtmlText()
    try:
        parser.feed(_defuse(html))
        parser.close()
    except Exception:  # 3.11's parser raises AssertionError on odd markup; _defuse should
        pass           # prevent it, and if it did not, the text so far is the best effort
    lines: list[str] = []
    for line in "".join(parser.parts).split("\n"):
        line = line.rstrip()
        if line or (lines and lines[-1]):  # at most one blank line in a row, none on top
            lines.append(line)
    return "\n".join(lines).strip("\n")


def _defuse(html: str) -> str:
    """Neutralise what Python 3.11's HTMLParser handles badly: it rescans to the end of the
    input for every unterminated construct (minutes for 1 MiB of "<a<a<a") and raises on
    unknown "<![" sections. As browsers do: an unterminated comment hides the rest, a lone
    "<" is text, a "<![" other than Outlook's "<![if" is a bogus comment up to the next ">"."""
    comment = html.find("<!--", _last_end(_COMMENT_END, html))
    html = html[:comment] if comment >= 0 else html
    tag = html.rfind(">") + 1
    html = html[:tag] + html[tag:].replace("<", "&lt;")
    section = _last_end(_SECTION_END, html)
    return _NON_MSO_SECTION.sub("<!_[", html[:section]) + html[section:].replace("<![", "<!_[")


def _last_end(pattern: re.Pattern[str], text: str) -> int:
    match = None
    for match in pattern.finditer(text):
        pass
    return match.end() if match else 0


def clean_text(text: str) -> str:
    """Normalise line ends; drop BOM and zero-width characters, trailing whitespace, the
    signature and blank lines at both ends. Inner line breaks and quoted text are kept."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_ZERO_WIDTH)
    lines = [line.rstrip() for line in text.split("\n")]
    if "--" in lines:  # the signature separator "-- " (or "--" from clients that trim it)
        lines = lines[: lines.index("--")]
    return "\n".join(lines).strip("\n")


# --- bytes and charsets -------------------------------------------------------------------


def _decode(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset if it fits, else utf-8, then windows-1252."""
    codec = _codec(charset)
    if codec in ("iso8859-1", "ascii") and _C1_BYTES.search(data):
        codec = None  # C1 controls are never text: Outlook labels windows-1252 as iso-8859-1
    for name in (codec, "utf-8", "cp1252"):
        if name:
            try:
                return data.decode(name)
            except (UnicodeError, LookupError, ValueError):  # not this charset: try the next
                continue
    return data.decode("utf-8", "replace")


def _codec(charset: str | None) -> str | None:
    """Python's codec name for a MIME charset, or None if Python does not know it as one
    (``unicode_escape`` and the like decode escapes, not a charset's bytes)."""
    name = (charset or "").strip().strip("\"'").split("*")[0]  # RFC 2231: "utf-8*fr"
    try:
        codec = codecs.lookup(name).name if name else None
    except (LookupError, ValueError):
        return None
    return None if codec in _NOT_CHARSETS else codec


#: Python text codecs that are no MIME charset: they would act on the text (escapes, IDNA).
_NOT_CHARSETS = frozenset({"unicode-escape", "raw-unicode-escape", "punycode", "idna", "charmap", "undefined"})


def _part_text(part: email.message.Message) -> str:
    """A leaf part's payload, transfer-decoded and charset-decoded, cut to MAX_BODY_CHARS."""
    payload = _safely(lambda: part.get_payload(decode=True), None)
    if not isinstance(payload, bytes):
        return ""
    return _decode(payload, _safely(part.get_content_charset, None))[:MAX_BODY_CHARS]


def _plain_text(part: email.message.Message) -> str:
    text = _part_text(part)
    if _param(part, "format") == "flowed":
        text = _unflow(text, delsp=_param(part, "delsp") == "yes")
    return text


def _unflow(text: str, delsp: bool) -> str:
    """Join RFC 3676 soft line breaks: a line ending in a space continues on the next one."""
    lines: list[str] = []
    soft, prev_quote = False, ""
    for line in text.replace("\r\n", "\n").split("\n"):
        body = line.lstrip(">")
        quote = line[: len(line) - len(body)]
        body = body[1:] if body.startswith(" ") else body  # undo space-stuffing
        signature = body == "-- "  # the signature separator is never flowed, in or out
        if soft and quote == prev_quote and not signature:
            lines[-1] += body
        else:
            lines.append(f"{quote} {body}" if quote else body)
        soft = body.endswith(" ") and not signature
        if soft and delsp:
            lines[-1] = lines[-1][:-1]
        prev_quote = quote
    return "\n".join(lines)


# --- MIME tree -----------------------------------------------------------------------------


def _leaves(message: email.message.Message, max_depth: int) -> Iterator[email.message.Message]:
    """Leaf parts in document order, ``max_depth`` multiparts deep at most; message/* parts
    (forwarded mail) are not entered."""
    stack = [(message, 0)]  # iterative: hostile nesting cannot exhaust recursion here
    while stack:
        part, depth = stack.pop()
        if _safely(part.get_content_maintype, "message") == "message":
            continue
        if part.is_multipart():
            if depth < max_depth:
                stack.extend((child, depth + 1) for child in reversed(part.get_payload()))
        else:
            yield part


def _is_attachment(part: email.message.Message) -> bool:
    disposition = _safely(part.get_content_disposition, "attachment")
    return disposition == "attachment" or bool(_safely(part.get_filename, "?"))


def _param(part: email.message.Message, name: str) -> str:
    value = _safely(lambda: part.get_param(name), None)
    return value.strip().lower() if isinstance(value, str) else ""


def _safely(call: Callable[[], _T], default: _T) -> _T:
    """``call()``, or ``default`` if the stdlib trips on broken MIME (it has, on hostile input)."""
    try:
        return call()
    except Exception:
        return default


# --- headers -------------------------------------------------------------------------------


def _header(headers: Mapping[str, tuple[str, str]], name: str) -> str | None:
    """The first ``name`` (lowercase) header, unfolded, 8-bit bytes decoded (utf-8, else
    windows-1252)."""
    found = headers.get(name)
    if found is None:
        return None
    value = str(found[1])
    if not value.isascii():  # raw 8-bit bytes, kept as surrogates by the parser
        value = _decode(value.encode("utf-8", "surrogateescape"), None)
    return _FOLD.sub("", value) if "\n" in value else value


def _decode_words(value: str) -> str:
    """Decode RFC 2047 encoded-words; adjacent words of one charset are joined before decoding
    (mailers split multibyte characters across words), and the space between them dropped."""
    pieces: list[tuple[str | bytes, str | None]] = []
    pos, last_word_end = 0, -1
    for match in _ENCODED_WORD.finditer(value):
        gap = value[pos : match.start()]
        adjacent = last_word_end == pos and not gap.strip(" \t\r\n")
        data, charset = _word_bytes(match), match[1].lower()
        if data is None:  # undecodable: keep the word as it was written
            pieces.append((gap + match[0], None))
            last_word_end = -1
        elif adjacent and pieces[-1][1] == charset:
            pieces[-1] = (pieces[-1][0] + data, charset)  # type: ignore[operator]
        else:
            pieces.append(("" if adjacent else gap, None))
            pieces.append((data, charset))
        pos = match.end()
        if data is not None:
            last_word_end = pos
    pieces.append((value[pos:], None))
    return "".join(p if isinstance(p, str) else _decode(p, cs) for p, cs in pieces)


def _word_bytes(match: re.Match[str]) -> bytes | None:
    text = match[3].encode("utf-8")
    try:
        if match[2] in "qQ":
            return binascii.a2b_qp(text, header=True)
        data = binascii.a2b_base64(text + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if data or not text else None  # non-base64 junk decodes to nothing: keep it


def _one_line(value: str) -> str:
    return _HEADER_BREAKS.sub(" ", value).strip()


def _message_id(value: str | None) -> str | None:
    # the first <id>; else the first word, for scripts that forget the brackets
    ids = _ANGLE_ID.findall(value or "") or (value or "").split()[:1]
    return (ids[0].strip("<>") or None) if ids else None


@lru_cache(maxsize=4096)  # pure; the same few senders write again and again
def _address(value: str | None) -> str | None:
    """The first usable addr-spec in an address header, domain lowercased.

    Parsed by the RFC 5322 grammar (``email.headerregistry``), where an encoded word is a
    display name and never an address or a group: ``=?utf-8?q?x:_a@evil.org?= <b@ok.org>``
    is ``b@ok.org``. Addresses without a domain, or holding spaces, controls, ``<`` or
    ``>``, are skipped.
    """
    if not value:
        return None
    for local, domain in _addr_specs(value):
        if local and domain and not _BAD_ADDR_CHAR.search(f"{local}@{domain}"):  # no CR/LF into a reply
            return f"{local}@{domain.lower()}"
    return None


def _addr_specs(value: str) -> list[tuple[str, str]]:
    """(local part, domain) of each address in an address header."""
    if "=?" not in value:  # no encoded word: the stdlib's quick parser reads it the same way
        pairs = _safely(lambda: getaddresses([value]), [])
        return [(a.rpartition("@")[0], a.rpartition("@")[2]) for _name, a in pairs]
    header = _safely(lambda: _DEFAULT_POLICY.header_factory("From", value), None)
    addresses = _safely(lambda: header.addresses, ()) if header is not None else ()
    return [(a.username, a.domain) for a in addresses]


class _HtmlText(HTMLParser):
    """Collects the visible text of an HTML document, with line breaks for blocks."""

    BLOCKS = frozenset("p div br li tr h1 h2 h3 h4 h5 h6 table ul ol blockquote pre hr".split())
    HIDDEN = frozenset(("script", "style", "title"))

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0      # depth inside script/style/title
        self.head = False    # inside <head>, not shown either
        self.pre = 0         # depth inside <pre>: whitespace kept
        self.bullet = False  # an <li> waits for its first text to get "- "

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag == "head":
            self.head = True
        elif tag == "body" or tag in self.BLOCKS:
            self.head = False  # the body has started, even if </head> was forgotten
        if self.hidden or self.head:
            return
        if tag == "br":
            self.parts.append("\n")
        elif tag in self.BLOCKS:
            self._end_line()
            self.bullet = self.bullet or tag == "li"  # <li><p>text: the bullet goes on the text
        elif tag in ("td", "th"):
            self._write(" ")
        self.pre += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag == "head":
            self.head = False
        elif tag in self.BLOCKS and not (self.hidden or self.head):
            self._end_line()
        if tag == "pre":
            self.pre = max(0, self.pre - 1)

    def handle_data(self, data: str) -> None:
        if not (self.hidden or self.head):
            self._write(data)

    def _write(self, text: str) -> None:
        if self.pre:
            text = text.replace("\xa0", " ")
        else:
            text = _HTML_SPACE.sub(" ", text)
            last = self.parts[-1][-1] if self.parts else "\n"
            # source whitespace never starts a line or doubles a space; an &nbsp; may start
            # a line, so that Outlook's <p>&nbsp;</p> stays a blank line
            if last in " \n":
                text = text.lstrip(" \xa0" if last == " " else " ")
            text = _SPACES.sub(" ", text)
        if text:
            self.parts.append(("- " if self.bullet else "") + text)
            self.bullet = False

    def _end_line(self) -> None:
        if self.parts and self.parts[-1][-1] != "\n":
            self.parts.append("\n")
