#!/usr/bin/env bash
# A newcomer's first command: install everything, start the stack, run every demo case.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# The demo profile shortens every retry delay (quota 60 s -> 3 s) and says so on screen.
.venv/bin/qactl up --profile demo
.venv/bin/qactl demo all
