from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.common.knowledge_base import KnowledgeBase, default_knowledge_base
from tests.services.llm_gateway.server import RunningGateway, running_gateway


@pytest.fixture
def gateway() -> Iterator[RunningGateway]:
    with running_gateway() as running:
        yield running


@pytest.fixture(scope="session")
def kb() -> KnowledgeBase:
    return default_knowledge_base()
