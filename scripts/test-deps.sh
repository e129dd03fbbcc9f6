#!/usr/bin/env bash
# What the test suite needs beyond the venv: a headless Chromium, in which tests/test_report.py
# renders a report page (Debian package `chromium`). Installed with apt when run as root;
# otherwise this says how to install it, and that test is skipped.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (apt) for the report's browser test ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; then
    echo "error: 'apt-get install chromium' failed (see above); the report's browser test" \
         "needs it" >&2
    exit 1
  fi
else
  echo "note: Chromium is not installed, so the report's browser test will be skipped." \
       "Install it (Debian/Ubuntu: sudo apt-get install chromium) to run what CI runs." >&2
fi
