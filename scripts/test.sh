#!/usr/bin/env bash
# The README's test command: set up from nothing, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
# Debian's chromium renders the HTML report in one test; install it when we can (root, apt).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "chromium could not be installed; the report-rendering test will be skipped"
fi
exec .venv/bin/python -m pytest "$@"
