"""The README's examples work as written: YAML blocks pass ``check-config``, shell blocks parse,
the ``console`` transcript matches and the first-SMS snippet works.

YAML blocks are the bridge's config unless their first line says they are another tool's.
The "## Configuration" block is a whole config; every other bridge block is a fragment,
checked merged over it. ``/etc/mail2sms`` and ``/var/lib/mail2sms`` are mapped to a
temporary folder (with a real certificate), and every ``${VAR}`` gets a value.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
_FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.M | re.S)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def blocks(language: str) -> list[tuple[int, str]]:
    """(line number, dedented text) of every fenced block in ``language``."""
    found = []
    for match in _FENCE.finditer(README):
        if match.group(2) == language:
            found.append((README.count("\n", 0, match.start()) + 1, textwrap.dedent(match.group(3))))
    return found


def bridge_yaml() -> list[tuple[int, str]]:
    return [(line, text) for line, text in blocks("yaml") if "not the bridge's" not in text.split("\n")[0]]


def reference() -> str:
    """The whole-config example under "## Configuration"."""
    section = README.index("## Configuration")
    return next(text for line, text in bridge_yaml() if README.count("\n", 0, section) < line)


def merge(base: dict[str, Any], fragment: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in fragment.items():
        merged[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def env_for(text: str) -> dict[str, str]:
    """A value for every ``${VAR}`` (a well-formed one where the provider checks the form)."""
    def value(name: str) -> str:
        if name.endswith("ACCOUNT_SID"):
            return "AC" + "0" * 32
        return "test-secret-value-0123" if name.endswith("SECRET") else "test-value"

    return {name: value(name) for name in _VAR.findall(text)}


@pytest.fixture(scope="module", name="sandbox")
def fixture_sandbox(tmp_path_factory) -> Path:
    """A folder standing for / : etc/mail2sms with a certificate, var/lib/mail2sms."""
    root = tmp_path_factory.mktemp("root")
    etc = root / "etc" / "mail2sms"
    etc.mkdir(parents=True)
    (root / "var" / "lib" / "mail2sms").mkdir(parents=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=mx.example.com",
         "-keyout", str(etc / "key.pem"), "-out", str(etc / "cert.pem")],
        check=True, capture_output=True,
    )
    return root


def check_config(sandbox: Path, name: str, text: str) -> subprocess.CompletedProcess:
    """Write ``text`` (paths mapped into the sandbox) and run ``check-config`` on it."""
    text = text.replace("/etc/mail2sms/", f"{sandbox}/etc/mail2sms/").replace(
        "/var/lib/mail2sms/", f"{sandbox}/var/lib/mail2sms/"
    )
    path = sandbox / "etc" / "mail2sms" / name
    path.write_text(text, encoding="utf-8")
    environ = {k: v for k, v in os.environ.items() if k != "MAIL2SMS_CONFIG"} | env_for(text)
    return subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", "--config", str(path)],
        cwd=REPO, capture_output=True, text=True, env=environ, timeout=60,
    )


def test_every_yaml_block_is_yaml():
    """Every YAML block of the README parses (the ${VAR} inside {...} trap included)."""
    assert len(blocks("yaml")) >= 6
    for line, text in blocks("yaml"):
        try:
            yaml.safe_load(text)
        except yaml.YAMLError as exc:
            pytest.fail(f"README.md line {line}: {exc}")


def test_reference_config_checks_out(sandbox):
    """The "## Configuration" example passes check-config as a whole."""
    proc = check_config(sandbox, "reference.yaml", reference())
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout


@pytest.mark.parametrize("line", [line for line, text in bridge_yaml() if text != reference()])
def test_fragment_checks_out(sandbox, line):
    """Each other bridge YAML block, merged over the reference, passes check-config."""
    text = dict(bridge_yaml())[line]
    merged = merge(yaml.safe_load(reference()), yaml.safe_load(text))
    proc = check_config(sandbox, f"fragment-{line}.yaml", yaml.safe_dump(merged, allow_unicode=True))
    assert proc.returncode == 0, f"README.md line {line}:\n{proc.stderr}"


@pytest.mark.parametrize("name", ["config.yaml", "systemd/config.example.yaml"])
def test_shipped_configs_check_out(sandbox, name):
    """The embedded default and the production example pass check-config."""
    proc = check_config(sandbox, Path(name).name, (REPO / name).read_text(encoding="utf-8"))
    assert proc.returncode == 0, proc.stderr


def test_production_example_has_no_demo_and_writes_only_state():
    """The production example: no demo account, every written path under /var/lib/mail2sms."""
    settings = yaml.safe_load((REPO / "systemd" / "config.example.yaml").read_text(encoding="utf-8"))
    assert "demo" not in settings["accounts"]
    assert all("demo-key" not in str(a.get("api_key")) for a in settings["accounts"].values())
    assert settings["store"].startswith("sqlite:///var/lib/mail2sms/")
    for provider in settings["providers"].values():
        if "path" in provider:
            assert provider["path"].startswith("/var/lib/mail2sms/")


@pytest.mark.parametrize("line", [line for line, _ in blocks("sh")])
def test_shell_blocks_parse(line):
    """Every shell block of the README is valid bash."""
    text = dict(blocks("sh"))[line]
    proc = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    assert proc.returncode == 0, f"README.md line {line}: {proc.stderr}"


def test_count_transcript_matches():
    """The ``mail2sms count`` transcript in the README is what the command prints."""
    block = next(text for _, text in blocks("console") if text.startswith("$ mail2sms count"))
    command, _, expected = block.partition("\n")
    text = re.fullmatch(r'\$ mail2sms count "(.*)"', command).group(1)
    proc = subprocess.run([sys.executable, "-m", "bridge", "count", text], cwd=REPO, capture_output=True, text=True)
    assert proc.stdout.strip() == expected.strip()


def test_first_sms_snippet(tmp_path):
    """The Quick start snippet reaches a running default bridge and the SMS lands in the outbox."""
    snippet = next(text for _, text in blocks("sh") if text.startswith("python3 - <<'EOF'"))
    work = tmp_path / "default"
    work.mkdir()
    shutil.copy(REPO / "config.yaml", work / "config.yaml")
    port = _free_port()
    config = (work / "config.yaml").read_text().replace("127.0.0.1:2525", f"127.0.0.1:{port}")
    (work / "config.yaml").write_text(config)
    environ = {k: v for k, v in os.environ.items() if k != "MAIL2SMS_CONFIG"}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "--config", str(work / "config.yaml")],
        cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environ,
    )
    try:
        _wait_for_port(port)
        proc = subprocess.run(
            ["bash", "-c", snippet.replace("2525", str(port))], cwd=work, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert "accepted" in proc.stdout and '"to": "+33612121515"' in proc.stdout
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, timeout: float = 30.0) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the bridge did not listen on {port}")
