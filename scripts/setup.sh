#!/usr/bin/env bash
# Set up a fresh Debian machine (Python 3.11): system packages, a virtualenv in .venv, the package.
#   bash scripts/setup.sh        # runtime (what `dvc repro` needs)
#   bash scripts/setup.sh test   # runtime + test tools (pytest, headless chromium for the report check) + Ray (the cluster extra, whose engine the tests run)
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=${1:-}

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
pkgs="ffmpeg"
if [ "$want_test" = test ]; then pkgs="$pkgs chromium"; fi
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || { $SUDO apt-get install -y -qq python3-venv >/dev/null && "$PY" -m venv .venv; }
fi
.venv/bin/python -m pip install -q --upgrade pip
extra=""
if [ "$want_test" = test ]; then extra="[test,cluster]"; fi
.venv/bin/python -m pip install -q -e ".${extra}"
export DVC_NO_ANALYTICS=1
echo "setup done: activate with '. .venv/bin/activate'"
