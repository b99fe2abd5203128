#!/usr/bin/env bash
# A newcomer's first command: install everything, start the stack, run every demo case.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/qactl up
.venv/bin/qactl demo all
