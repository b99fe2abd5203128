from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from services.common.settings import QactlSettings
from tests.stack import KEEP_STACKS, running, test_settings

# This directory's own port range and state dir: never the defaults, never another suite's.
# Its stack has no Flink: the dashboard must still show the rest while Flink is missing.
DASHBOARD_PORT_BASE = int(os.environ.get("QACTL_DASHBOARD_TEST_PORT_BASE", "27000"))
COMPONENTS = ("kafka", "postgres", "redis")


@pytest.fixture(scope="session")
def infra_settings() -> Iterator[QactlSettings]:
    """Kafka, PostgreSQL (migrated) and Redis, started by the same runtime code as `qactl up`,
    stopped at the end of the session."""
    base = DASHBOARD_PORT_BASE
    settings = test_settings(base, state_dir=f"/tmp/qactl-test-{base}", policies={"delay_scale": 0.1})
    with running(settings, COMPONENTS, keep=KEEP_STACKS):
        yield settings
