"""The SMTP server's fast address path gives aiosmtpd's own answer for every address."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, strategies as st

from conftest import base_settings, make_config

from bridge.guard import ClientGuard
from bridge.smtp import BridgeSMTP


class _Handler:
    pass


def fast_server() -> BridgeSMTP:
    config = make_config(Path("/tmp"), base_settings(Path("/tmp"))).smtp
    return BridgeSMTP(_Handler(), config=config, guard=ClientGuard(10, 10, 1.0))


@pytest.fixture(scope="module")
def servers():
    return fast_server(), SMTP(_Handler())


@pytest.mark.parametrize("arg", [
    "<alice@example.org>",
    "<a.b+tag@sub-domain.example.org> SIZE=1000 BODY=8BITMIME",
    " <UPPER_case@EXAMPLE.COM>",
    "<>",
    '<"quoted local"@example.org>',
    "<alice@[127.0.0.1]>",
    "alice@example.org",
    "<alice@example.org",
    "<@route:alice@example.org>",
    "<" + "x" * 65 + "@example.org>",
    "<a..b@example.org>",
    "",
])
def test_same_answer_as_aiosmtpd(servers, arg):
    """Plain, unusual and broken addresses: the answer is aiosmtpd's."""
    fast, reference = servers
    assert fast._getaddr(arg) == reference._getaddr(arg)


@given(st.from_regex(r"\A<[a-z0-9._+-]{1,20}@[a-z0-9.-]{1,20}>( [A-Z]+=[0-9]+)?\Z"))
def test_generated_addresses(arg):
    """Generated plain-looking addresses, valid or not, get aiosmtpd's answer."""
    fast, reference = fast_server(), SMTP(_Handler())
    assert fast._getaddr(arg) == reference._getaddr(arg)
