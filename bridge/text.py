"""Text hygiene before anything is counted, stored or logged.

Mail bodies and subjects arrive in every charset a client can get wrong. Before intake
decides anything: lone UTF-16 surrogates (``charset=utf-7`` ``+3SU-``, a broken encoded
word) become U+FFFD, NUL and control characters other than line breaks are removed (a tab
becomes a space), and MIME boundary lines with their part headers, left in a body whose
multipart structure could not be parsed, are dropped. The API key of a subject is hidden
before the subject is stored or logged, whether or not the subject parses.
"""

from __future__ import annotations

import re

_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_BOUNDARY = re.compile(r"^--([0-9A-Za-z'()+_,./:=?-]{1,70}?)(--)?[ \t]*$")
_PART_HEADER = re.compile(r"^(content-[a-z-]+|mime-version)\s*:", re.IGNORECASE)
_KEY = re.compile(r"@[^|]*")


def fix_surrogates(text: str) -> str:
    """``text`` with surrogate pairs joined and lone surrogates replaced by U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def clean(text: str) -> str:
    """Safe text: surrogates fixed, CR LF -> LF, controls other than LF removed."""
    text = fix_surrogates(text).replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    return _CONTROLS.sub("", text)


def clean_body(text: str) -> str:
    """``clean`` plus MIME boundary lines (and the part headers after them) removed."""
    text = clean(text)
    if "\n--" not in f"\n{text}":
        return text
    lines = text.split("\n")
    tokens = {m.group(1) for line in lines if (m := _BOUNDARY.match(line)) and m.group(1).strip("-")}
    # A boundary line is one followed by part headers, or one closed by --token--.
    real = {
        token for token in tokens
        if f"--{token}--" in lines
        or any(_BOUNDARY.match(line) and _BOUNDARY.match(line).group(1) == token
               and i + 1 < len(lines) and _PART_HEADER.match(lines[i + 1])
               for i, line in enumerate(lines))
    }
    if not real:
        return text
    kept: list[str] = []
    in_headers = False
    for line in lines:
        match = _BOUNDARY.match(line)
        if match and match.group(1) in real:
            in_headers = True
            continue
        if in_headers:
            if _PART_HEADER.match(line) or (line.startswith((" ", "\t")) and line.strip()):
                continue
            in_headers = False
            if not line.strip():
                continue
        kept.append(line)
    return "\n".join(kept).strip("\n")


def redact_subject(subject: str) -> str:
    """The subject with whatever follows ``@`` in its first field hidden (the API key)."""
    first, sep, rest = subject.partition("|")
    if "@" in first:
        first = _KEY.sub("@***", first, count=1)
    return (first + sep + rest)[:200]


def subject_without_key(summary: str | None) -> str:
    """A stored (redacted) subject with no trace of the key: ``arthur45@***|06...`` -> ``arthur45|06...``."""
    first, sep, rest = (summary or "").partition("|")
    first = first.split("@", 1)[0]
    return " ".join((first + sep + rest).split())[:150] or "SMS"
