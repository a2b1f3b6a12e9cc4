#!/usr/bin/env bash
# Install everything the tests need, then run them. Used by `make test` and .ci/run.
#   - the package with its test extras (pytest, pytest-asyncio, hypothesis)
#   - Debian's dovecot-imapd when `dovecot` is missing (the IMAP tests start a private one)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e '.[test]' \
  || "$PYTHON" -m pip install --quiet --disable-pip-version-check -e '.[test]'

if ! command -v dovecot >/dev/null 2>&1 && [ ! -x /usr/sbin/dovecot ]; then
  echo "dovecot-imapd is missing: installing it (Debian package)"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dovecot-imapd >/dev/null
fi

exec "$PYTHON" -m pytest "$@"
