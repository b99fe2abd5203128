"""The real infrastructure for integration tests, started by the same code as `qactl up`.

Ports are ``QACTL_TEST_PORT_BASE`` (default 26000) plus a fixed offset per service, the
layout of ``tests/services/pipeline.py``; state lives in ``QACTL_TEST_STATE_DIR`` (default
``/tmp/qactl-test-<base>``; /tmp because PostgreSQL runs as an unprivileged user when the tests
run as root). Jars come from the shared cache (``~/.cache/qactl``). ``QACTL_TEST_KEEP_STACK=1``
leaves the stack running after the session, for quick iterations.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from qactl.runtime import credentials
from services.common.settings import QactlSettings

INFRA = ("kafka", "flink", "postgres", "redis")


def port_base() -> int:
    return int(os.environ.get("QACTL_TEST_PORT_BASE", "26000"))


def port_layout(base: int, state_dir: str) -> dict[str, Any]:
    """Every port of a stack of its own, derived from ``base`` (the tests', and the benches')."""
    return {
        "state_dir": state_dir,
        "kafka": {"port": base + 92, "controller_port": base + 93},
        "flink": {"rest_port": base + 81, "rpc_port": base + 123},
        "postgres": {"port": base + 432},
        "redis": {"port": base + 379},
        "api": {"port": base + 1},
        "gateway": {"port": base + 435},
        "llm_server": {"port": base + 436},
        "services": {"metrics_base_port": base + 300},
    }


def test_settings(base: int | None = None, **overrides: Any) -> QactlSettings:
    """Settings on the test port range; every port derives from ``base``."""
    base = port_base() if base is None else base
    values = port_layout(base, os.environ.get("QACTL_TEST_STATE_DIR", f"/tmp/qactl-test-{base}"))
    if "QACTL_CACHE_DIR" in os.environ:  # the shared jar cache
        values["cache_dir"] = os.environ["QACTL_CACHE_DIR"]
    for key, value in overrides.items():  # a section given in part keeps the test ports of the rest
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    # Validated, not loaded: neither the developer's QACTL_* variables nor ./qactl.toml apply.
    # With the state dir's credentials (made now if this stack never ran), as `qactl up` uses them.
    return credentials.with_stored(QactlSettings.model_validate(values), create=True)


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a test, despite the name


# QACTL_TEST_KEEP_STACK=1: the session stacks stay up afterwards (see the module docstring).
KEEP_STACKS = os.environ.get("QACTL_TEST_KEEP_STACK") == "1"


@pytest.fixture(scope="session")
def infra_stack() -> Iterator[QactlSettings]:
    """Kafka, Flink, PostgreSQL and Redis up for the whole session; down at the end."""
    settings = test_settings()
    with running(settings, INFRA, keep=KEEP_STACKS):
        yield settings


@contextmanager
def running(settings: QactlSettings, names: Sequence[str], keep: bool = False) -> Iterator[None]:
    """Components ``names`` up for the block, down after it; down too if ``up`` fails half-way."""
    from qactl.runtime.stack import Stack

    try:
        Stack(settings, only=names).up()
        yield
    except BaseException:
        Stack(settings, only=names).down()  # what did start must not outlive the tests
        raise
    if not keep:
        Stack(settings, only=names).down()
