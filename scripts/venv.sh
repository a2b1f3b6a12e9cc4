#!/usr/bin/env bash
# Create the project's virtual environment (.venv) when it is missing, and install the
# package into it (editable), with the extras given as arguments ("test", ...).
# Debian's /usr/bin/python3 is "externally managed" (PEP 668): nothing is ever installed
# into it; everything goes into .venv. Re-running is cheap: the install is redone only
# when pyproject.toml or the extras changed.
#   usage: scripts/venv.sh [EXTRA...]      (PYTHON=python3.12 to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: $PYTHON not found; install Python 3.11 or newer (Debian: apt-get install python3)" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: Python 3.11 or newer is needed, $PYTHON is $("$PYTHON" -V 2>&1)" >&2
  exit 1
fi

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if [ ! -x "$VENV/bin/python" ]; then
  rm -rf "$VENV"
  if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
    # Debian ships venv's pip bootstrap separately (python3-venv / python3.X-venv).
    rm -rf "$VENV"
    echo "python3 -m venv needs Debian's python3-venv: installing it"
    sudo_if_needed apt-get update -qq
    DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq python3-venv >/dev/null
    "$PYTHON" -m venv "$VENV"
  fi
fi

extras=$(IFS=,; echo "$*")
target=.
[ -n "$extras" ] && target=".[$extras]"
stamp="$VENV/.mail2sms-installed"
wanted="$(cksum < pyproject.toml) $target"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  "$VENV/bin/python" -m pip install -qq --disable-pip-version-check -e "$target"  # -qq: errors only
  echo "$wanted" > "$stamp"
fi
