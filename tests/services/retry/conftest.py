from __future__ import annotations

import pytest

from services.common.settings import QactlSettings
from tests.services.pipeline import pipeline_settings


@pytest.fixture(scope="session")
def stack_settings(infra_stack: QactlSettings) -> QactlSettings:
    return pipeline_settings(infra_stack)
