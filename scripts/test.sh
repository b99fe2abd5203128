#!/usr/bin/env bash
# Run the whole test suite against a real stack (Kafka, Flink, PostgreSQL, Redis) that the
# tests start and stop themselves. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh system venv llm checks
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
