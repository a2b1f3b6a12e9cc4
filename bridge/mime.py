"""Raw e-mail bytes to an ``email.message.Message``, as the stdlib reads them, with less work.

- ``read``: a plain one-part mail (what scripts, monitoring systems and most clients send)
  is split into its fields and payload directly; anything else goes through the stdlib's
  parser (``email.message_from_bytes``). Both give the same message (``tests/test_mime.py``
  holds them to it).
- Headers come back as the raw strings (8-bit bytes kept as surrogates, decoded by
  ``bridge.mail``), never compat32's ``Header`` objects, which break parameter parsing.
- The messages answer header lookups from an index built on first use, and parse a
  header's parameters once: the stdlib scans every header for each lookup, and reading
  one mail asks a dozen.
"""

from __future__ import annotations

import email
import email.message
import re
from email.parser import BytesHeaderParser
from email.policy import Compat32
from typing import Any


def read(raw: bytes) -> _IndexedMessage:
    """The message in ``raw`` (the stdlib's parser may raise on absurd nesting)."""
    return _single_part(raw) or email.message_from_bytes(raw, policy=_POLICY)


def read_headers(raw: bytes) -> _IndexedMessage:
    """Only the top-level headers of ``raw`` (the body is not parsed), or nothing."""
    try:
        return BytesHeaderParser(policy=_POLICY).parsebytes(raw, headersonly=True)
    except Exception:
        return _IndexedMessage(policy=_POLICY)


_NO_HEADER = object()


class _IndexedMessage(email.message.Message):
    """A ``Message`` whose header lookups read an index of the first value of each name,
    built on first use, instead of scanning every header: the stdlib's ``get_content_type``,
    ``get_param``, ``get_filename``... each scan them, and ``bridge.mail`` asks a dozen more. A
    new header list (or a longer one) rebuilds the index; ``replace_header`` drops it. The
    parameters of a header are kept with the index."""

    _indexed: list | None = None
    _indexed_length = 0
    _index: dict[str, tuple[str, str]] = {}
    _params: dict[str, Any] = {}
    _content_type: str | None = None

    def _first(self) -> dict[str, tuple[str, str]]:
        headers = self._headers
        if self._indexed is not headers or self._indexed_length != len(headers):
            index: dict[str, tuple[str, str]] = {}
            for name, value in headers:
                index.setdefault(name.lower(), (name, value))
            self._index, self._indexed, self._indexed_length = index, headers, len(headers)
            self._params, self._content_type = {}, None
        return self._index

    def get_content_type(self) -> str:
        """The stdlib's answer, worked out once per index when the mail has a Content-Type
        (reading one mail asks it four times); without one, the default type as it is now."""
        if "content-type" not in self._first():
            return self.get_default_type()
        if self._content_type is None:
            self._content_type = super().get_content_type()
        return self._content_type

    def _get_params_preserve(self, failobj: Any, header: str) -> Any:
        """The stdlib's parameter list of ``header``, parsed once per header (the charset,
        ``format``, ``delsp`` and a file name are each asked of Content-Type)."""
        self._first()  # a changed header list drops the parameters read before
        key = header.lower()
        params = self._params.get(key, _NO_HEADER)
        if params is _NO_HEADER and key not in self._params:
            found = self._index.get(key)
            value = found[1] if found is not None else None
            params = self._params[key] = (
                _plain_params(value) if isinstance(value, str) and not _QUOTING.search(value)
                else super()._get_params_preserve(_NO_HEADER, header))
        return failobj if params is _NO_HEADER else list(params)

    def get(self, name: str, failobj: Any = None) -> Any:
        found = self._first().get(name.lower())
        return failobj if found is None else self.policy.header_fetch_parse(*found)

    def first_values(self) -> dict[str, tuple[str, str]]:
        """The first (name, value) of each header by lowercased name, as ``get`` finds them
        with this module's policy (the index itself: not to be changed)."""
        return self._first()

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._first()

    def replace_header(self, _name: str, _value: str) -> None:
        self._indexed = None
        super().replace_header(_name, _value)


# What the stdlib's parameter parser treats specially: quotes and escapes (a ";" inside
# quotes), RFC 2231 names (``name*``, ``name*0*``). A value without any of them is split
# on ";" by ``_plain_params``.
_QUOTING = re.compile(r'["\\*]')


def _plain_params(value: str) -> list[tuple[str, str]]:
    """``Message._get_params_preserve`` of a header value without quotes, escapes nor ``*``
    (``text/plain; charset=utf-8``, nearly every mail), in one pass: each ``name=value``
    with the name lowercased, the values after the first quoted, as the stdlib returns
    them (``tests/test_mime.py`` holds the two to the same answers)."""
    params = []
    for item in value.split(";"):
        name, equals, given = item.partition("=")
        if not params:  # the first item keeps its value as it is, "" when bare
            params.append((name.strip().lower(), given.strip()) if equals else (item.strip(), ""))
        else:
            params.append((name.strip().lower() if equals else item.strip(), f'"{given.strip()}"'))
    return params


class _RawHeaders(Compat32):
    """compat32, but headers with 8-bit bytes come back as str too (not ``Header``);
    parsed mails are ``_IndexedMessage``."""

    message_factory = _IndexedMessage

    def header_fetch_parse(self, name: str, value: str) -> str:
        return value


_POLICY = _RawHeaders()


_FIELD = re.compile(r"[\041-\071\073-\176]+:")  # a field name (RFC 5322 ftext), then ":"
_OTHER_BREAKS = re.compile(r"[\r\v\f\x1c-\x1e]")  # where str.splitlines (and the stdlib parser) also break


def _single_part(raw: bytes) -> _IndexedMessage | None:
    """The message the stdlib's parser makes of ``raw`` when it is a plain one-part mail
    (what scripts, monitoring and most clients send), without its line-by-line feed;
    None for anything else (multipart, message/*, a Unix ``From `` line, a header line
    it would call a defect, no blank line before the body), which takes the stdlib's way.

    Same text, same steps: decoded as ASCII with surrogate escapes, each field as
    compat32's ``header_source_parse`` reads its lines (the name up to the first ":", the
    value's leading blanks and trailing line end dropped, folds kept), added as
    ``set_raw`` adds it, the rest after the blank line as the payload.
    ``tests/test_mime.py`` checks both ways agree.
    """
    text = raw.decode("ascii", "surrogateescape")
    ends = [i for i in (text.find("\n\n"), text.find("\n\r\n")) if i >= 0]
    if not ends or text[:1] in ("\r", "\n"):
        return None
    end = min(ends) + 1
    block = text[:end]
    if _OTHER_BREAKS.search(block.replace("\r\n", "")):
        return None
    message = _IndexedMessage(policy=_POLICY)
    headers = message._headers  # what ``set_raw`` appends to
    name = value = ""
    for line in block.splitlines(True):
        if line[0] in " \t":
            if not name:
                return None
            value += line
        elif line.startswith("From ") or not _FIELD.match(line):
            return None
        else:
            if name:
                headers.append((name, value.rstrip("\r\n")))
            name, _, value = line.partition(":")
            value = value.lstrip(" \t")
    headers.append((name, value.rstrip("\r\n")))
    if message.get_content_maintype() in ("multipart", "message"):
        return None
    message.set_payload(text[end + (1 if text[end] == "\n" else 2):])
    return message
