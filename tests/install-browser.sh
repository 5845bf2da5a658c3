#!/usr/bin/env bash
# Chromium and its WebDriver for the HTML pages' browser tests (tests/test_html.py): checks they
# are there; installs Debian's packages with apt-get when missing and run as root, otherwise
# prints what to install and stops.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "browser: chromium and chromedriver are installed"
    exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends chromium chromium-driver
    exit 0
fi
echo "browser: install Chromium and ChromeDriver (Debian/Ubuntu: apt-get install chromium chromium-driver)" >&2
exit 1
