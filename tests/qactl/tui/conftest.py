from __future__ import annotations

import pytest
from rich.console import Console, RenderableType

from tests.qactl.tui.recorded import RecordedSource, recorded_snapshot


def render_text(renderable: RenderableType, width: int = 80) -> str:
    """What a panel shows, as plain text at ``width`` columns."""
    console = Console(width=width, record=True, color_system=None, force_terminal=False)
    console.print(renderable)
    return console.export_text()


@pytest.fixture
def snapshot_data():
    return recorded_snapshot()


@pytest.fixture
def source() -> RecordedSource:
    return RecordedSource()
