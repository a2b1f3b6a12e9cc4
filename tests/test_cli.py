"""Tests for bridge.cli: ``python -m bridge`` run as a user would, in a subprocess."""

from __future__ import annotations

import os
import re
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


# --- set-up errors, preflight checks and scriptable exit codes (issue 13) ----------------


def write_config(folder: Path, text: str, name: str = "config.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


class TestVersionAndUsage:
    def test_version(self):
        """``--version`` prints the version and exits 0."""
        proc = mail2sms("--version")
        assert proc.returncode == 0 and out(proc).startswith("mail2sms 0.")

    def test_bogus_state_exits_2_with_the_choices(self, good_config):
        """``queue list --state bogus`` exits 2 and lists the allowed states."""
        proc = mail2sms("--config", str(good_config), "queue", "list", "--state", "bogus")
        assert proc.returncode == 2
        for state in ("queued", "claimed", "calling", "sent", "failed", "unknown", "cancelled"):
            assert state in err(proc)

    def test_job_states_match_the_store(self):
        """The states the CLI offers are exactly the store's job states."""
        from bridge.cli import JOB_STATES
        from bridge.model import JobState

        assert set(JOB_STATES) == {s.value for s in JobState}

    def test_missing_config_names_absolute_path_and_hint(self, tmp_path):
        """A missing config names its absolute path and says how to give another."""
        proc = mail2sms("--config", "no-such-config.yaml", "check-config")
        assert proc.returncode == 2
        assert str(REPO / "no-such-config.yaml") in err(proc)
        assert "--config" in err(proc) and "MAIL2SMS_CONFIG" in err(proc)
        assert "Traceback" not in err(proc)


class TestCountExitCode:
    def test_too_long_exits_1(self):
        """A text longer than 8 parts is reported and exits 1, so scripts can trust it."""
        proc = mail2sms("count", "x" * 1225)
        assert proc.returncode == 1
        assert "too long: 9 parts needed, 8 allowed" in out(proc)

    def test_longest_allowed_exits_0(self):
        """1224 GSM-7 characters (8 parts) is fine."""
        assert mail2sms("count", "x" * 1224).returncode == 0


PREFLIGHT_BASE = """\
store: sqlite://{store}
smtp:
  listen: {listen}
  recipients: [mail2sms@example.com]
{smtp_extra}providers:
  outbox: {{type: file, path: {outbox}}}
accounts:
{accounts}"""


def preflight_config(folder: Path, **values: str) -> Path:
    settings = {
        "store": "bridge.db", "listen": "127.0.0.1:0", "smtp_extra": "", "outbox": "outbox.jsonl",
        "accounts": "  alerts: {api_key: s3cret-key, route: [outbox]}\n",
    } | values
    return write_config(folder, PREFLIGHT_BASE.format(**settings))


class TestPreflight:
    """``check-config`` catches what would fail at start, naming the key and the path."""

    @pytest.mark.parametrize(
        ("values", "expected"),
        [
            pytest.param(
                {"smtp_extra": "  tls: {cert: /nonexistent/cert.pem, key: /nonexistent/key.pem}\n"},
                "smtp.tls.cert: /nonexistent/cert.pem: no such file", id="missing-cert",
            ),
            pytest.param(
                {"smtp_extra": "  auth:\n    required: true\n    users: {z: {password: p, account: alerts}}\n"},
                "smtp.auth.required: needs smtp.tls", id="auth-without-tls",
            ),
            pytest.param({"accounts": "  {}\n"}, "accounts: no account configured", id="no-accounts"),
            pytest.param(
                {"listen": "0.0.0.0:0", "accounts": "  demo: {api_key: demo-key, route: [outbox]}\n"},
                "accounts.demo.api_key: the demo key 'demo-key' on a listener open to the network",
                id="demo-exposed",
            ),
            pytest.param({"store": "{folder}/afile/bridge.db"}, "store: ", id="store-under-a-file"),
            pytest.param({"outbox": "{folder}/afile/outbox.jsonl"}, "providers.outbox.path: ", id="outbox-under-a-file"),
        ],
    )
    def test_errors(self, tmp_path, values, expected):
        """Each problem exits 2 with one line naming the key; no traceback, no OK."""
        (tmp_path / "afile").write_text("not a folder")
        values = {k: v.replace("{folder}", str(tmp_path)) for k, v in values.items()}
        proc = mail2sms("check-config", "--config", str(preflight_config(tmp_path, **values)))
        assert proc.returncode == 2, err(proc)
        assert expected in err(proc)
        assert "Traceback" not in err(proc) and "OK" not in out(proc)

    def test_unloadable_certificate(self, tmp_path):
        """A certificate file that is not a certificate is named before the daemon starts."""
        (tmp_path / "cert.pem").write_text("garbage")
        (tmp_path / "key.pem").write_text("garbage")
        extra = f"  tls: {{cert: {tmp_path}/cert.pem, key: {tmp_path}/key.pem}}\n"
        proc = mail2sms("check-config", "--config", str(preflight_config(tmp_path, smtp_extra=extra)))
        assert proc.returncode == 2 and "smtp.tls: " in err(proc) and "do not load" in err(proc)

    def test_demo_on_loopback_is_fine(self, tmp_path):
        """The demo account on a loopback listener is what the embedded default does: OK."""
        accounts = "  demo: {api_key: demo-key, route: [outbox]}\n"
        proc = mail2sms("check-config", "--config", str(preflight_config(tmp_path, accounts=accounts)))
        assert proc.returncode == 0, err(proc)

    def test_busy_port_is_a_warning_for_check_config(self, tmp_path):
        """check-config only warns about a busy port (the bridge may be the one running)."""
        import socket

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            proc = mail2sms("check-config", "--config", str(preflight_config(tmp_path, listen=f"127.0.0.1:{port}")))
        assert proc.returncode == 0
        assert f"warning: smtp.listen: 127.0.0.1:{port}: address already in use" in err(proc)

    def test_run_refuses_a_config_that_cannot_work(self, tmp_path):
        """``run`` refuses what check-config calls an error (exit 2) before listening."""
        extra = "  tls: {cert: /nonexistent/cert.pem, key: /nonexistent/key.pem}\n"
        proc = mail2sms("run", "--config", str(preflight_config(tmp_path, smtp_extra=extra)))
        assert proc.returncode == 2
        assert "config error: smtp.tls.cert: /nonexistent/cert.pem: no such file" in err(proc)

    def test_relay_unreachable_is_a_warning(self, tmp_path):
        """An unreachable reply relay is a warning: OK, exit 0."""
        from provider_fakes import closed_port

        path = preflight_config(tmp_path)
        path.write_text(path.read_text() + f"replies: {{relay: 127.0.0.1:{closed_port()}, from: m@example.com}}\n")
        proc = mail2sms("check-config", "--config", str(path))
        assert proc.returncode == 0
        assert "warning: replies.relay: " in err(proc) and "cannot connect" in err(proc)

    def test_run_on_a_busy_port_names_smtp_listen(self, tmp_path):
        """``run`` on a port in use exits 1 (a runtime failure) naming smtp.listen, no traceback."""
        import socket

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            proc = mail2sms("run", "--config", str(preflight_config(tmp_path, listen=f"127.0.0.1:{port}")))
        assert proc.returncode == 1
        assert f"smtp.listen 127.0.0.1:{port}: address already in use" in err(proc)
        assert "Traceback" not in err(proc)


class TestAdminVerbs:
    @pytest.fixture(name="config")
    def fixture_config(self, tmp_path: Path) -> Path:
        text = GOOD_CONFIG.replace("demo: {api_key: k, route: [outbox]}", "demo: {api_key: k, credits: 10, route: [outbox]}")
        return write_config(tmp_path, "timezone: Europe/Paris\n" + text)

    def test_credit_refuses_a_negative_balance(self, config):
        """Removing more credits than there are is refused (exit 1), unless asked for."""
        proc = mail2sms("--config", str(config), "accounts", "credit", "demo", "-15")
        assert proc.returncode == 1 and "has 10 credits" in out(proc) and "--allow-negative" in out(proc)
        assert "demo  " in out(mail2sms("--config", str(config), "accounts", "list"))
        assert " 10  " in out(mail2sms("--config", str(config), "accounts", "list"))
        proc = mail2sms("--config", str(config), "accounts", "credit", "demo", "-15", "--allow-negative")
        assert proc.returncode == 0 and "demo: -5 credits" in out(proc)

    def test_queue_list_has_a_header_and_zoned_times(self, config):
        """``queue list`` starts with a header and shows times with their zone."""
        assert mail2sms("--config", str(config), "send", "--account", "demo", "--to", "0612121515", "Hi").returncode == 0
        lines = out(mail2sms("--config", str(config), "queue", "list")).splitlines()
        assert lines[0].split()[:3] == ["job", "created", "state"]
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (CET|CEST) sent", lines[1])
        shown = out(mail2sms("--config", str(config), "queue", "show", "1"))
        assert shown.startswith("Job 1: sent") and "+33612121515" in shown

    def test_send_warns_about_a_dropped_sender(self, config):
        """``send --sender SHOP`` to France without STOP says the sender is not used."""
        proc = mail2sms("--config", str(config), "send", "--account", "demo", "--to", "0612121515", "--sender", "SHOP", "Hi")
        assert proc.returncode == 0
        assert "warning: custom sender 'SHOP' not used towards French numbers" in out(proc)

    def test_replies_list(self, config):
        """``replies list`` shows the status mails with a header, filterable by state."""
        proc = mail2sms("--config", str(config), "replies", "list", "--state", "queued")
        assert proc.returncode == 0
        assert out(proc).splitlines()[0].split()[:3] == ["reply", "state", "status"]

    def test_store_files_are_private(self, config):
        """The store and the outbox are created 0600."""
        mail2sms("--config", str(config), "send", "--account", "demo", "--to", "0612121515", "Hi")
        for name in ("bridge.db", "outbox.jsonl"):
            assert (config.parent / name).stat().st_mode & 0o077 == 0, name
