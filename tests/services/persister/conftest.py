from __future__ import annotations

from collections.abc import Iterator

import pytest

from qactl.runtime.supervisor import ProcessSpec
from services.common.settings import QactlSettings
from tests.services.pipeline import settings_for_tests, specs_of
from tests.services.storage_stack import ensure_storage_stack, process


@pytest.fixture(scope="session")
def storage_settings() -> QactlSettings:
    return ensure_storage_stack(settings_for_tests())


@pytest.fixture(scope="module")
def persister(storage_settings: QactlSettings) -> Iterator[ProcessSpec]:
    """The persister as `qactl up` runs it (``python -m services.persister`` under the supervisor)."""
    (spec,) = specs_of(storage_settings, "persister")
    with process(storage_settings, spec):
        yield spec
