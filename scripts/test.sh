#!/usr/bin/env bash
# Install everything the tests need, then run them. Used by `make test` and .ci/run.
#   - .venv (created when missing) with the package and its test extras
#     (pytest, pytest-asyncio, hypothesis); nothing goes into the system Python
#   - Debian's dovecot-imapd when `dovecot` is missing (the IMAP tests start a private one)
#   - openssl (the TLS tests make a self-signed certificate)
# Arguments go to pytest: scripts/test.sh -q tests/test_cli.py
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/venv.sh test

missing=()
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || missing+=(dovecot-imapd)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages the tests need: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

exec .venv/bin/python -m pytest "$@"
