"""bridge.settings: one declaration gives the checks, the defaults and the reference rows."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import pytest

from bridge.errors import ConfigError, ConfigErrors
from bridge.settings import (
    BOOL, DURATION, LINK, REQUIRED, SECRET, URL, Kind, SubError, choice, duration, integer, list_of, load,
    number, read, rows, setting,
)


def _by_letter(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError("must be a mapping")
    for key, item in value.items():
        if not isinstance(item, int):
            raise SubError(key, "must be a whole number")
    return value


@dataclass(frozen=True, kw_only=True)
class Sample:
    """A section using most kinds."""

    token: str = setting(REQUIRED, "a secret", SECRET)
    sender: str = setting("x@example.com", "renamed key", key="from")
    wait: float = setting(30.0, "a duration", DURATION)
    lease: float = setting(60.0, "above zero", duration(above=True))
    count: int = setting(3, "a count", integer(1, 9))
    ratio: float = setting(0.5, "a number", number(0))
    mode: str = setting("a", "a choice", choice("a", "b"))
    names: tuple[str, ...] = setting((), "a list", list_of(choice("x", "y")))
    base: str = setting("https://api.example/v1", "a base URL", URL)
    hook: str | None = setting(None, "a URL kept as written", LINK)
    cert: str | None = setting(None, "a nested key", key="tls.cert")
    flag: bool = setting(False, "nested too", BOOL, key="tls.verify")
    table: Any = setting(MappingProxyType({}), "entries named at their own key", Kind("mapping", _by_letter))

    def problems(self):
        """Checks across fields."""
        if self.mode == "b" and not self.names:
            yield "names", "required when mode is b"


def problems_of(data: dict) -> dict[str, str]:
    errors: list[ConfigError] = []
    read(Sample, data, "s", errors)
    return {e.path: e.problem for e in errors}


class TestRead:
    def test_defaults_and_conversions(self) -> None:
        """Durations, nested and renamed keys, exact links, stripped base URLs."""
        sample = load(Sample, {"token": " t ", "from": "me@example.com", "wait": "15m", "lease": 2,
                               "base": "https://api.example/v2/", "hook": "https://me.example/dlr/",
                               "tls": {"cert": "c.pem", "verify": True}, "names": "x"}, "s")
        assert (sample.token, sample.sender, sample.wait, sample.lease) == (" t ", "me@example.com", 900.0, 2.0)
        assert (sample.base, sample.hook) == ("https://api.example/v2", "https://me.example/dlr/")
        assert (sample.cert, sample.flag, sample.names) == ("c.pem", True, ("x",))
        assert (sample.count, sample.ratio, sample.mode) == (3, 0.5, "a")

    @pytest.mark.parametrize(
        ("data", "path"),
        [
            pytest.param({}, "s.token", id="required"),
            pytest.param({"token": "t", "tokn": 1}, "s.tokn", id="unknown"),
            pytest.param({"token": "t", "tls": {"key": "k"}}, "s.tls.key", id="unknown-nested"),
            pytest.param({"token": "t", "tls": "on"}, "s.tls", id="nested-not-mapping"),
            pytest.param({"token": "t", "lease": 0}, "s.lease", id="zero-lease"),
            pytest.param({"token": "t", "wait": "soon"}, "s.wait", id="bad-duration"),
            pytest.param({"token": "t", "count": 10}, "s.count", id="out-of-range"),
            pytest.param({"token": "t", "count": True}, "s.count", id="bool-is-not-int"),
            pytest.param({"token": "t", "ratio": -1}, "s.ratio", id="negative"),
            pytest.param({"token": "t", "names": ["z"]}, "s.names", id="bad-item"),
            pytest.param({"token": "t", "base": "ftp://x"}, "s.base", id="not-http"),
            pytest.param({"token": "t", "table": {"a": 1, "b": "two"}}, "s.table.b", id="sub-key"),
            pytest.param({"token": "t", "mode": "b"}, "s.names", id="cross-field"),
        ],
    )
    def test_each_problem_names_its_key(self, data: dict, path: str) -> None:
        """Exactly one problem, at the key path of the bad value."""
        assert list(problems_of(data)) == [path]

    def test_all_problems_at_once(self) -> None:
        """``load`` reports every problem of the section in one ``ConfigErrors``."""
        with pytest.raises(ConfigErrors) as caught:
            load(Sample, {"wait": "soon", "mode": "c"}, "s")
        assert {e.path for e in caught.value.errors} == {"s.token", "s.wait", "s.mode"}

    def test_secrets_stay_out_of_repr(self) -> None:
        """A SECRET field is not in the dataclass repr."""
        assert "hunter2" not in repr(load(Sample, {"token": "hunter2"}, "s"))


class TestRows:
    def test_reference_rows(self) -> None:
        """Keys (nested, renamed), kinds, defaults as written in YAML, docs."""
        table = {r.key: r for r in rows(Sample, "s")}
        assert table["s.token"].default == "required" and table["s.token"].kind == "secret string"
        assert table["s.from"].default == "x@example.com"
        assert (table["s.wait"].default, table["s.lease"].default) == ("30s", "1m")
        assert table["s.tls.verify"].default == "false" and table["s.mode"].kind == "a | b"
        assert (table["s.names"].default, table["s.table"].default, table["s.hook"].default) == ("[]", "{}", "none")
