from __future__ import annotations

import os

import pytest

from services.common.settings import QactlSettings, load_settings

# This directory's own port range and state dir: never the defaults, never another suite's.
DASHBOARD_PORT_BASE = int(os.environ.get("QACTL_DASHBOARD_TEST_PORT_BASE", "27000"))


def dashboard_test_settings() -> QactlSettings:
    base = DASHBOARD_PORT_BASE
    return load_settings(
        state_dir=f"/tmp/qactl-test-{base}",
        kafka={"port": base + 92, "controller_port": base + 93},
        redis={"port": base + 379},
        postgres={"port": base + 432},
        flink={"rest_port": base + 81, "rpc_port": base + 123},
        api={"port": base + 1},
        gateway={"port": base + 435},
        services={"metrics_base_port": base + 300},
        policies={"delay_scale": 0.1},
    )


@pytest.fixture(scope="session")
def infra_settings() -> QactlSettings:
    """Kafka, PostgreSQL (migrated) and Redis, started by the same runtime code as `qactl up`."""
    from qactl.runtime import kafka, postgres, redis
    from qactl.runtime.stack import Stack

    settings = dashboard_test_settings()
    Stack(
        settings,
        components=[*kafka.components(settings), *postgres.components(settings), *redis.components(settings)],
    ).up()
    return settings
