#!/usr/bin/env bash
# System packages the test suite needs (none yet beyond Python). Idempotent.
set -euo pipefail
exit 0
