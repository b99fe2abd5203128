from __future__ import annotations

from collections.abc import Iterator

import pytest

from qactl.runtime.supervisor import ProcessSpec
from services.common.settings import QactlSettings
from tests.services.pipeline import specs_of
from tests.services.storage_stack import process


@pytest.fixture(scope="session")
def storage_settings(infra_stack: QactlSettings) -> QactlSettings:
    """The session stack (tests/stack.py): Kafka, PostgreSQL (migrated), Redis, Flink."""
    return infra_stack


@pytest.fixture(scope="module")
def persister(storage_settings: QactlSettings) -> Iterator[ProcessSpec]:
    """The persister as `qactl up` runs it (``python -m services.persister`` under the supervisor)."""
    (spec,) = specs_of(storage_settings, "persister")
    with process(storage_settings, spec):
        yield spec
