"""Tests for bridge.config: reading config.yaml into frozen settings, naming bad keys."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from bridge.config import Config, load_config
from bridge.sections import Address
from bridge.errors import ConfigError, ConfigErrors

REPO = Path(__file__).resolve().parent.parent

VALID: dict[str, Any] = {
    "timezone": "Europe/Paris",
    "store": "sqlite://bridge.db",
    "smtp": {"listen": "127.0.0.1:2525", "recipients": ["mail2sms@example.com"]},
    "replies": {"relay": "127.0.0.1:25", "from": "mail2sms@example.com"},
    "providers": {"outbox": {"type": "file", "path": "outbox.jsonl"}},
    "accounts": {"demo": {"api_key": "demo-key", "credits": 10, "route": ["outbox"]}},
}


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied recursively; a value of ``...`` deletes the key."""
    result = copy.deepcopy(base)
    for key, value in changes.items():
        if value is ...:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


@pytest.fixture(name="write_config")
def fixture_write_config(tmp_path: Path):
    """Write a YAML text (or a mapping dumped as YAML) to ``tmp_path/config.yaml``."""

    def write(content: str | dict[str, Any]) -> Path:
        text = content if isinstance(content, str) else yaml.safe_dump(content)
        path = tmp_path / "config.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def problems(path: Path) -> dict[str, str]:
    """The key paths (and problems) ``load_config`` reports for the file at ``path``."""
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    errors = caught.value.errors if isinstance(caught.value, ConfigErrors) else [caught.value]
    return {error.path: error.problem for error in errors}


class TestLoadValid:
    """Configs that load, and what comes out of them."""

    def test_repo_config_loads(self, monkeypatch):
        """The embedded default config.yaml loads with no environment set."""
        monkeypatch.delenv("MAIL2SMS_DEMO_KEY", raising=False)
        config = load_config(REPO / "config.yaml")
        assert config.timezone == ZoneInfo("Europe/Paris")
        assert config.smtp.listen == Address("127.0.0.1", 2525)
        assert config.smtp.recipients == ("mail2sms@localhost",)
        assert set(config.providers) == {"outbox"}
        assert config.accounts["demo"].api_key == "demo-key"
        assert config.accounts["demo"].route == ("outbox",)
        assert config.accounts["demo"].credits == 1000

    def test_minimal_values(self, write_config):
        """A valid file gives frozen settings with the values written."""
        config = load_config(write_config(VALID))
        assert isinstance(config, Config)
        assert config.replies.sender == "mail2sms@example.com"
        assert config.accounts["demo"].login == "demo"
        with pytest.raises(AttributeError):
            config.store = "sqlite://other.db"  # type: ignore[misc]

    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            pytest.param("30s", 30.0, id="seconds"),
            pytest.param("15m", 900.0, id="minutes"),
            pytest.param("24h", 86400.0, id="hours"),
            pytest.param("7d", 604800.0, id="days"),
            pytest.param("1.5h", 5400.0, id="fractional"),
            pytest.param("500ms", 0.5, id="milliseconds"),
            pytest.param(45, 45.0, id="bare-number"),
            pytest.param("45", 45.0, id="bare-number-string"),
        ],
    )
    def test_durations(self, write_config, value, seconds):
        """Durations read as seconds from a number or ``30s``/``15m``/``24h``/``7d``."""
        config = load_config(write_config(merged(VALID, {"dispatcher": {"max_age": value}})))
        assert config.dispatcher.max_age == seconds

    @pytest.mark.parametrize(
        ("store", "expected"),
        [
            pytest.param("sqlite://bridge.db", "bridge.db", id="relative"),
            pytest.param("sqlite://data/bridge.db", "data/bridge.db", id="relative-subfolder"),
        ],
    )
    def test_sqlite_path_relative_to_config_folder(
        self, write_config, tmp_path, monkeypatch, store, expected
    ):
        """A relative SQLite path is from the config file's folder, not the current one."""
        monkeypatch.chdir(REPO)
        config = load_config(write_config(merged(VALID, {"store": store})))
        assert config.sqlite_path() == tmp_path.resolve() / expected

    def test_sqlite_path_absolute(self, write_config):
        """An absolute SQLite path (three slashes) is kept."""
        config = load_config(write_config(merged(VALID, {"store": "sqlite:///var/lib/b.db"})))
        assert config.sqlite_path() == Path("/var/lib/b.db")


class TestEnvironment:
    """``${VAR}`` and ``${VAR:-default}`` in strings."""

    @pytest.mark.parametrize(
        ("written", "env", "expected"),
        [
            pytest.param("${BRIDGE_TEST_KEY}", {"BRIDGE_TEST_KEY": "s3cret"}, "s3cret", id="set"),
            pytest.param("${BRIDGE_TEST_KEY:-fallback}", {}, "fallback", id="default-used"),
            pytest.param(
                "${BRIDGE_TEST_KEY:-fallback}", {"BRIDGE_TEST_KEY": "s3cret"}, "s3cret",
                id="default-ignored-when-set",
            ),
            pytest.param(
                "pre-${BRIDGE_TEST_KEY}-post", {"BRIDGE_TEST_KEY": "x"}, "pre-x-post",
                id="inside-a-string",
            ),
            pytest.param(
                "${BRIDGE_TEST_A}${BRIDGE_TEST_B}", {"BRIDGE_TEST_A": "a", "BRIDGE_TEST_B": "b"},
                "ab", id="two-variables",
            ),
            pytest.param("$BRIDGE_TEST_KEY", {"BRIDGE_TEST_KEY": "x"}, "$BRIDGE_TEST_KEY",
                         id="no-braces-literal"),
        ],
    )
    def test_interpolation(self, write_config, monkeypatch, written, env, expected):
        """Variables are replaced by their value, or the default when unset."""
        for name in ("BRIDGE_TEST_KEY", "BRIDGE_TEST_A", "BRIDGE_TEST_B"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        config = load_config(write_config(merged(VALID, {"accounts": {"demo": {"api_key": written}}})))
        assert config.accounts["demo"].api_key == expected

    def test_unset_variable_names_the_key(self, write_config, monkeypatch):
        """An unset variable without default is an error at its key path."""
        monkeypatch.delenv("BRIDGE_TEST_UNSET", raising=False)
        path = write_config(
            merged(VALID, {"accounts": {"demo": {"api_key": "${BRIDGE_TEST_UNSET}"}}})
        )
        found = problems(path)
        assert list(found) == ["accounts.demo.api_key"]
        assert "BRIDGE_TEST_UNSET" in found["accounts.demo.api_key"]

    def test_unset_variable_in_a_list_names_the_item(self, write_config, monkeypatch):
        """In a list the error names the item's index."""
        monkeypatch.delenv("BRIDGE_TEST_UNSET", raising=False)
        path = write_config(merged(VALID, {"smtp": {"recipients": ["${BRIDGE_TEST_UNSET}"]}}))
        assert list(problems(path)) == ["smtp.recipients[0]"]


class TestUnreadable:
    """Files that cannot be read as YAML at all."""

    @pytest.mark.parametrize(
        ("text", "line"),
        [
            pytest.param("smtp:\n  listen: [oops\nreplies: {}\n", 3, id="unclosed-bracket"),
            pytest.param("timezone: Europe/Paris\n  store: x\n", 2, id="bad-indent"),
            pytest.param("providers:\n\t- x\n", 2, id="tab"),
        ],
    )
    def test_broken_yaml_names_the_line(self, write_config, text, line):
        """Broken YAML is one ConfigError giving the line where the parser stopped."""
        with pytest.raises(ConfigError) as caught:
            load_config(write_config(text))
        assert not isinstance(caught.value, ConfigErrors)
        assert f"line {line}" in str(caught.value)

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param("", id="empty"),
            pytest.param("- a\n- b\n", id="list"),
            pytest.param("just text\n", id="scalar"),
        ],
    )
    def test_top_level_not_a_mapping(self, write_config, text):
        """A file whose top level is not a mapping is refused."""
        with pytest.raises(ConfigError, match="top level must be a mapping"):
            load_config(write_config(text))

    def test_missing_file(self, tmp_path):
        """A missing file is a ConfigError saying it cannot be read."""
        with pytest.raises(ConfigError, match="cannot read"):
            load_config(tmp_path / "nope.yaml")


class TestBadValues:
    """Each bad value is reported at its exact key path."""

    @pytest.mark.parametrize(
        ("changes", "path"),
        [
            pytest.param({"smtp": {"listen": 25}}, "smtp.listen", id="listen-port-only"),
            pytest.param({"smtp": {"listen": "localhost"}}, "smtp.listen", id="listen-no-port"),
            pytest.param({"smtp": {"listen": "h:99999"}}, "smtp.listen", id="listen-port-range"),
            pytest.param({"smtp": {"max_size": "big"}}, "smtp.max_size", id="max-size-word"),
            pytest.param({"smtp": {"foo": 1}}, "smtp.foo", id="unknown-smtp-key"),
            pytest.param({"smtp": {"recipients": ...}}, "smtp.recipients",
                         id="missing-recipients"),
            pytest.param({"smtp": {"recipients": ["not-an-address"]}}, "smtp.recipients",
                         id="recipient-not-email"),
            pytest.param({"smtp": {"reject_inline": "yes"}}, "smtp.reject_inline",
                         id="bool-as-string"),
            pytest.param({"smtp": {"tls": {"cert": "c.pem"}}}, "smtp.tls", id="cert-without-key"),
            pytest.param({"replies": {"from": "nobody"}}, "replies.from", id="replies-from"),
            pytest.param({"accounts": {"demo": {"credits": -1}}}, "accounts.demo.credits",
                         id="negative-credits"),
            pytest.param({"accounts": {"demo": {"credits": 1.5}}}, "accounts.demo.credits",
                         id="fractional-credits"),
            pytest.param({"accounts": {"demo": {"api_key": ...}}}, "accounts.demo.api_key",
                         id="missing-api-key"),
            pytest.param({"accounts": {"demo": {"route": ["nowhere"]}}}, "accounts.demo.route",
                         id="route-to-undefined-provider"),
            pytest.param({"accounts": {"demo": {"route": ...}}}, "accounts.demo.route",
                         id="missing-route"),
            pytest.param({"accounts": {"demo": {"language": "de"}}}, "accounts.demo.language",
                         id="unknown-language"),
            pytest.param({"dispatcher": {"max_age": "forever"}}, "dispatcher.max_age",
                         id="duration-word"),
            pytest.param({"dispatcher": {"max_age": -5}}, "dispatcher.max_age",
                         id="negative-duration"),
            pytest.param({"dispatcher": {"concurrency": 0}}, "dispatcher.concurrency",
                         id="zero-concurrency"),
            pytest.param({"providers": {"outbox": {"type": "carrier-pigeon"}}},
                         "providers.outbox.type", id="unknown-provider-type"),
            pytest.param({"providers": {"outbox": {"type": ...}}}, "providers.outbox.type",
                         id="provider-without-type"),
            pytest.param({"providers": {"outbox": "file"}}, "providers.outbox",
                         id="provider-not-a-mapping"),
            pytest.param({"timezone": "Mars/Base"}, "timezone", id="unknown-time-zone"),
            pytest.param({"region": "XX"}, "region", id="unknown-region"),
            pytest.param({"store": "mysql://db"}, "store", id="unsupported-store"),
            pytest.param({"logging": {"level": "loud"}}, "logging.level", id="log-level"),
            pytest.param({"colour": "blue"}, "colour", id="unknown-top-level-key"),
        ],
    )
    def test_error_path(self, write_config, changes, path):
        """The only problem reported is at the exact key path of the bad value."""
        found = problems(write_config(merged(VALID, changes)))
        assert list(found) == [path], found

    def test_several_errors_at_once(self, write_config):
        """Every problem is collected, so check-config can list them all in one run."""
        bad = merged(
            VALID,
            {
                "smtp": {"listen": 25, "max_size": "big"},
                "dispatcher": {"max_age": "forever"},
                "accounts": {"demo": {"credits": -1}},
                "timezone": "Mars/Base",
            },
        )
        assert set(problems(write_config(bad))) == {
            "smtp.listen", "smtp.max_size", "dispatcher.max_age",
            "accounts.demo.credits", "timezone",
        }

    def test_each_problem_reported_once(self, write_config):
        """A section of the wrong shape is reported once, however many accounts use it."""
        bad = merged(
            VALID,
            {
                "providers": ["outbox"],
                "accounts": {
                    "a": {"api_key": "k", "route": ["outbox"]},
                    "b": {"api_key": "k", "route": ["outbox"]},
                },
            },
        )
        with pytest.raises(ConfigErrors) as caught:
            load_config(write_config(bad))
        paths = [error.path for error in caught.value.errors]
        assert paths.count("providers") == 1

    def test_message_names_path_and_problem(self, write_config):
        """``str()`` of an error is ``key.path: problem``."""
        with pytest.raises(ConfigErrors) as caught:
            load_config(write_config(merged(VALID, {"smtp": {"listen": 25}})))
        assert str(caught.value.errors[0]) == "smtp.listen: expected host:port"


class TestReference:
    """``mail2sms config reference`` and the README come from the same declarations."""

    def test_readme_table_is_the_reference(self):
        """The README's "Every setting" table is exactly ``config reference --format markdown``."""
        from bridge.config import reference_table

        readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
        start = readme.index("<!-- config-reference:start -->\n") + len("<!-- config-reference:start -->\n")
        end = readme.index("<!-- config-reference:end -->")
        assert readme[start:end].rstrip("\n") == reference_table("markdown"), (
            "README out of date: paste `mail2sms config reference --format markdown` into it")

    def test_every_setting_has_a_doc_and_a_default(self):
        """Each row names a type, a default (or "required") and a one-line doc."""
        from bridge.config import reference

        rows = reference()
        assert len({r.key for r in rows}) == len(rows)
        for row in rows:
            assert row.kind and row.default and row.doc and "\n" not in row.doc, row

    def test_new_dispatcher_keys(self, write_config):
        """lease, sweep_interval, reconcile_interval and reconcile_after: seconds above 0."""
        config = load_config(write_config(VALID))
        d = config.dispatcher
        assert (d.lease, d.sweep_interval, d.reconcile_interval, d.reconcile_after) == (60.0, 15.0, 60.0, 30.0)
        config = load_config(write_config(merged(VALID, {"dispatcher": {"lease": "2m", "reconcile_after": 5}})))
        assert (config.dispatcher.lease, config.dispatcher.reconcile_after) == (120.0, 5.0)
        for key in ("lease", "sweep_interval", "reconcile_interval", "reconcile_after"):
            assert list(problems(write_config(merged(VALID, {"dispatcher": {key: 0}})))) == [f"dispatcher.{key}"]

    def test_cli_prints_it(self, capsys):
        """``mail2sms config reference`` needs no config file and exits 0."""
        from bridge.cli import main

        assert main(["--config", "/nonexistent.yaml", "config", "reference"]) == 0
        out = capsys.readouterr().out
        assert "dispatcher.lease" in out and "providers.<name>[ovh].no_stop_clause" in out
