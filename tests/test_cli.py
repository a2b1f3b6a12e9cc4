"""Tests for bridge.cli: ``python -m bridge`` run as a user would, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

GOOD_CONFIG = """\
store: sqlite://bridge.db
smtp:
  recipients: [mail2sms@example.com]
providers:
  outbox: {type: file, path: outbox.jsonl}
accounts:
  demo: {api_key: k, route: [outbox]}
"""

BAD_CONFIG = """\
timezone: Mars/Base
smtp:
  listen: 25
  recipients: [mail2sms@example.com]
providers:
  outbox: {type: file, path: outbox.jsonl}
accounts:
  demo: {api_key: k, credits: -1, route: [outbox]}
"""


def mail2sms(*args: str, stdin: str | None = None, env: dict[str, str] | None = None):
    """Run ``python -m bridge ARGS`` from the repo root; return the finished process."""
    environ = {k: v for k, v in os.environ.items() if k != "MAIL2SMS_CONFIG"}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=REPO,
        input=stdin.encode("utf-8") if stdin is not None else None,
        capture_output=True,
        env=environ,
        timeout=60,
    )


def out(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.decode("utf-8")


def err(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.decode("utf-8")


@pytest.fixture(name="good_config")
def fixture_good_config(tmp_path: Path) -> Path:
    """A valid config file in a temporary folder."""
    path = tmp_path / "good.yaml"
    path.write_text(GOOD_CONFIG, encoding="utf-8")
    return path


@pytest.fixture(name="bad_config")
def fixture_bad_config(tmp_path: Path) -> Path:
    """A config file with three bad values."""
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_CONFIG, encoding="utf-8")
    return path


class TestCheckConfig:
    """``check-config``: 0 and OK for a good file, 2 and every problem for a bad one."""

    def test_repo_config_ok(self):
        """The default config.yaml in the current folder checks out."""
        proc = mail2sms("check-config")
        assert proc.returncode == 0, err(proc)
        assert "OK" in out(proc)

    @pytest.mark.parametrize(
        "placement",
        [
            pytest.param("before-verb", id="before-verb"),
            pytest.param("after-verb", id="after-verb"),
            pytest.param("env", id="env-MAIL2SMS_CONFIG"),
        ],
    )
    def test_config_location(self, good_config, placement):
        """``--config`` works before or after the verb, and ``$MAIL2SMS_CONFIG`` is read."""
        args = {
            "before-verb": ("--config", str(good_config), "check-config"),
            "after-verb": ("check-config", "--config", str(good_config)),
            "env": ("check-config",),
        }[placement]
        env = {"MAIL2SMS_CONFIG": str(good_config)} if placement == "env" else None
        proc = mail2sms(*args, env=env)
        assert proc.returncode == 0, err(proc)
        assert str(good_config) in out(proc) and "OK" in out(proc)

    @pytest.mark.parametrize(
        "args",
        [
            pytest.param(("--config", "{good}", "check-config"), id="flag-before-verb"),
            pytest.param(("check-config", "--config", "{good}"), id="flag-after-verb"),
        ],
    )
    def test_flag_beats_env(self, good_config, bad_config, args):
        """An explicit ``--config`` wins over ``$MAIL2SMS_CONFIG``."""
        args = tuple(a.format(good=good_config) for a in args)
        proc = mail2sms(*args, env={"MAIL2SMS_CONFIG": str(bad_config)})
        assert proc.returncode == 0, err(proc)

    def test_bad_config_lists_each_problem(self, bad_config):
        """A bad config exits 2 and prints each problem with its key path, no traceback."""
        proc = mail2sms("check-config", "--config", str(bad_config))
        assert proc.returncode == 2
        stderr = err(proc)
        for path in ("timezone:", "smtp.listen:", "accounts.demo.credits:"):
            assert path in stderr
        assert "Traceback" not in stderr
        assert "OK" not in out(proc)

    @pytest.mark.parametrize(
        ("content", "expected"),
        [
            pytest.param(None, "cannot read", id="missing-file"),
            pytest.param("smtp: [oops\n", "line 2", id="broken-yaml"),
        ],
    )
    def test_unreadable_config(self, tmp_path, content, expected):
        """A missing or broken file exits 2 with a one-line explanation, no traceback."""
        path = tmp_path / "config.yaml"
        if content is not None:
            path.write_text(content, encoding="utf-8")
        proc = mail2sms("check-config", "--config", str(path))
        assert proc.returncode == 2
        assert expected in err(proc)
        assert "Traceback" not in err(proc)

    @pytest.mark.parametrize(
        "args",
        [
            pytest.param((), id="no-verb"),
            pytest.param(("fly",), id="unknown-verb"),
        ],
    )
    def test_usage_error_exits_2(self, args):
        """A usage error exits 2."""
        assert mail2sms(*args).returncode == 2


class TestCount:
    """``count`` tells the encoding and the number of parts of a text."""

    @pytest.mark.parametrize(
        ("args", "stdin", "encoding", "parts"),
        [
            pytest.param(("count", "Hello"), None, "GSM-7", 1, id="argument"),
            pytest.param(("count", "x" * 161), None, "GSM-7", 2, id="argument-two-parts"),
            pytest.param(("count",), "ê" * 75, "UCS-2", 2, id="stdin-ucs2"),
            pytest.param(("count",), "Hello\n", "GSM-7", 1, id="stdin-trailing-newline"),
        ],
    )
    def test_count(self, args, stdin, encoding, parts):
        """The report shows the encoding and the number of parts, and exits 0."""
        proc = mail2sms(*args, stdin=stdin)
        assert proc.returncode == 0, err(proc)
        report = out(proc)
        assert f"encoding: {encoding}" in report
        assert f"parts: {parts} (" in report

    def test_stdin_counts_what_would_be_sent(self):
        """A trailing newline from ``echo`` is not counted, as the bridge does not send it."""
        report = out(mail2sms("count", stdin="x" * 160 + "\n"))
        assert "characters: 160 (160 septets)" in report
        assert "parts: 1 (" in report

    def test_count_in_french(self):
        """``--language fr`` gives the French report."""
        report = out(mail2sms("count", "--language", "fr", "Hello"))
        assert "codage: GSM-7" in report

    def test_count_needs_no_config(self, tmp_path):
        """``count`` works even when the config file is missing."""
        proc = mail2sms("--config", str(tmp_path / "nope.yaml"), "count", "Hello")
        assert proc.returncode == 0, err(proc)
