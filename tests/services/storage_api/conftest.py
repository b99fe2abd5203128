from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.common.settings import QactlSettings
from tests.services.pipeline import specs_of
from tests.services.storage_stack import process


@pytest.fixture(scope="session")
def storage_settings(infra_stack: QactlSettings) -> QactlSettings:
    """The session stack (tests/stack.py): Kafka, PostgreSQL (migrated), Redis, Flink."""
    return infra_stack


@pytest.fixture(scope="module")
def api_url(storage_settings: QactlSettings) -> Iterator[str]:
    """The storage API as `qactl up` runs it (``python -m services.storage_api`` under the supervisor)."""
    (spec,) = specs_of(storage_settings, "storage-api")
    with process(storage_settings, spec):
        yield storage_settings.api.base_url
