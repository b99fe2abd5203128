from __future__ import annotations

import pytest

from services.common.settings import QactlSettings
from tests.services.pipeline import ensure_kafka_and_redis, settings_for_tests


@pytest.fixture(scope="session")
def stack_settings() -> QactlSettings:
    return ensure_kafka_and_redis(settings_for_tests())
