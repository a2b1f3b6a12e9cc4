"""Set-up from a fresh clone, and the systemd files (as far as they can be checked here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEBIAN_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"


@pytest.fixture(scope="module", name="fresh_clone")
def fixture_fresh_clone(tmp_path_factory) -> Path:
    """A clone of the committed repository, as a new user gets it."""
    clone = tmp_path_factory.mktemp("clone") / "mail2sms"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    return clone


class TestFreshClone:
    def test_setup_step_creates_and_uses_a_venv(self, fresh_clone):
        """With Debian's python3 first on PATH, the set-up step of `make test` builds .venv
        and installs the bridge and pytest there, never into the system Python."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
        environ["PATH"] = DEBIAN_PATH
        proc = subprocess.run(
            ["./scripts/venv.sh", "test"], cwd=fresh_clone, env=environ, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        venv_python = fresh_clone / ".venv" / "bin" / "python"
        version = subprocess.run(
            [str(fresh_clone / ".venv" / "bin" / "mail2sms"), "--version"], capture_output=True, text=True
        )
        assert version.returncode == 0 and version.stdout.startswith("mail2sms ")
        assert subprocess.run([str(venv_python), "-c", "import pytest, bridge"], cwd="/").returncode == 0
        # a second run is a no-op: nothing to install again
        again = subprocess.run(["./scripts/venv.sh", "test"], cwd=fresh_clone, env=environ, capture_output=True, text=True)
        assert again.returncode == 0 and again.stdout == ""

    def test_make_targets_run_from_the_venv(self, fresh_clone):
        """`make run` and `make test` go through .venv, not the python3 on PATH."""
        dry = subprocess.run(["make", "-n", "run", "test"], cwd=fresh_clone, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
        assert ".venv/bin/mail2sms run --config config.yaml" in dry.stdout
        assert "./scripts/test.sh -q" in dry.stdout
        assert ".venv/bin/python -m pytest" in (fresh_clone / "scripts" / "test.sh").read_text()

    def test_ci_runs_the_readme_test_command(self):
        """.ci/run calls exactly the README's test command."""
        readme = (REPO / "README.md").read_text()
        assert "```sh\nmake test\n```" in readme
        commands = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
        assert commands[-1] == "make test"


UNIT = REPO / "systemd" / "mail2sms.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


class TestSystemdUnit:
    def test_unit_verifies(self, tmp_path):
        """systemd-analyze verify accepts the unit (binary path pointed at a real file)."""
        if shutil.which("systemd-analyze") is None:
            pytest.fail("systemd-analyze is needed: apt-get install systemd")
        unit = tmp_path / "mail2sms.service"
        unit.write_text(UNIT.read_text().replace("/opt/mail2sms/bin/mail2sms", "/bin/true"))
        proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "mail2sms.service" not in proc.stderr  # no warning about our unit

    def test_unit_matches_the_install_steps(self):
        """The unit runs the venv's binary, with the example config's state directory."""
        settings = unit_settings()
        assert settings["ExecStart"] == ["/opt/mail2sms/bin/mail2sms run"]
        assert settings["ExecStartPre"] == ["/opt/mail2sms/bin/mail2sms check-config"]
        assert settings["Environment"] == ["MAIL2SMS_CONFIG=/etc/mail2sms/config.yaml"]
        assert settings["EnvironmentFile"] == ["/etc/mail2sms/env"]
        assert settings["DynamicUser"] == ["yes"] and settings["StateDirectory"] == ["mail2sms"]
        assert settings["ProtectSystem"] == ["strict"]
        example = yaml.safe_load((REPO / "systemd" / "config.example.yaml").read_text())
        assert example["store"] == "sqlite:///var/lib/mail2sms/bridge.db"
        readme = (REPO / "README.md").read_text()
        assert "python3 -m venv /opt/mail2sms" in readme
        assert "install -m 0644 systemd/config.example.yaml /etc/mail2sms/config.yaml" in readme
        assert "pip install ." not in readme.replace("/opt/mail2sms/bin/pip install", "")  # no system pip

    def test_admin_wrapper_runs_as_the_state_owner(self):
        """mail2sms-admin runs the verb as the owner of the state directory, in it, with the
        service's secrets and config (a stand-in binary reports what it got)."""
        if os.geteuid() != 0:
            pytest.fail("this test switches users: run it as root (CI does)")
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="mail2sms-admin-"))  # under /tmp: reachable by nobody
        try:
            folder.chmod(0o755)
            state = folder / "state"
            state.mkdir()
            os.chown(state, 65534, 65534)
            env_file = folder / "env"
            env_file.write_text("ALERTS_API_KEY=from-env-file\n")
            env_file.chmod(0o600)
            stand_in = folder / "mail2sms"
            stand_in.write_text('#!/bin/sh\necho "$(id -u) $(pwd) $ALERTS_API_KEY $MAIL2SMS_CONFIG $*"\n')
            stand_in.chmod(0o755)
            environ = {k: v for k, v in os.environ.items() if k != "ALERTS_API_KEY"} | {
                "MAIL2SMS_STATE_DIR": str(state), "MAIL2SMS_ENV": str(env_file),
                "MAIL2SMS_CONFIG": "/etc/mail2sms/config.yaml", "MAIL2SMS_BIN": str(stand_in),
            }
            proc = subprocess.run(
                [str(REPO / "systemd" / "mail2sms-admin"), "queue", "list"], env=environ,
                capture_output=True, text=True, timeout=60,
            )
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.split() == [
                "65534", str(state), "from-env-file", "/etc/mail2sms/config.yaml", "queue", "list"
            ]
        finally:
            shutil.rmtree(folder)

    def test_admin_wrapper_needs_the_state_directory(self, tmp_path):
        """Before the service ever started, mail2sms-admin says so (exit 2)."""
        environ = os.environ | {"MAIL2SMS_STATE_DIR": str(tmp_path / "missing")}
        proc = subprocess.run([str(REPO / "systemd" / "mail2sms-admin"), "queue", "list"], env=environ,
                              capture_output=True, text=True)
        assert proc.returncode == 2 and "start the service once first" in proc.stderr
