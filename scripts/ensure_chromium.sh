#!/usr/bin/env bash
# The review page's tests (tests/test_review_page.py) drive a real headless Chromium: make sure Debian's chromium and
# chromium-driver are installed (the same version, from apt) and that the venv has Selenium. Nothing is downloaded
# by Selenium itself: the tests hand it /usr/bin/chromedriver.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "chromium or chromedriver not found: installing chromium chromium-driver" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
# Selenium is in requirements.txt (scripts/setup_venv.sh installs it); this covers a venv made before it was added.
if [ -x "$PY" ] && ! "$PY" -c "import selenium" 2>/dev/null; then
  "$PY" -m pip install -q "$(grep -E '^selenium' "$ROOT/requirements.txt" | cut -d'#' -f1 | xargs)"
fi
chromium --version 2>/dev/null | grep -v "unexpected operator" || true
