#!/usr/bin/env bash
# System packages the test suite needs. Idempotent.
set -euo pipefail

# Chromium for the browser test of `camloc serve` (Playwright drives Debian's build;
# Playwright's own browser download is not reachable).
if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium
fi
