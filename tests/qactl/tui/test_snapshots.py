"""Screens of `qactl watch` on recorded data, compared with committed SVG baselines.

Regenerate after an intended change with `pytest tests/qactl/tui/test_snapshots.py --snapshot-update`
and look at the SVGs under __snapshots__/ before committing them.
"""

from __future__ import annotations

import time

import pytest
from textual.pilot import Pilot

from qactl.tui.app import make_app
from services.common.settings import load_settings
from tests.qactl.tui.recorded import THRESHOLD, RecordedSource

SMALL = (80, 24)
LARGE = (120, 40)


def recorded_app():
    # The recording's answers were judged at its own threshold; the screens show that one.
    settings = load_settings(policies={"quality_threshold": THRESHOLD})
    return make_app(settings, RecordedSource(), refresh_seconds=3600.0)


async def until(pilot: Pilot, condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "screen not ready in time"
        await pilot.pause(0.02)


def after(*keys: str, journey: bool = False):
    async def run_before(pilot: Pilot) -> None:
        await until(pilot, lambda: pilot.app.polls >= 1)
        for key in keys:
            await pilot.press(key)
        if journey:
            await until(pilot, lambda: getattr(pilot.app.screen, "journey", None) is not None)
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
def test_dashboard(snap_compare, size):
    assert snap_compare(recorded_app(), terminal_size=size, run_before=after())


@pytest.mark.parametrize("page", ["2", "3", "4"], ids=["quality", "questions", "health"])
def test_small_terminal_pages(snap_compare, page):
    assert snap_compare(recorded_app(), terminal_size=SMALL, run_before=after(page))


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
def test_question_journey(snap_compare, size):
    keys = ("3", "down", "enter") if size == SMALL else ("down", "enter")
    assert snap_compare(recorded_app(), terminal_size=size, run_before=after(*keys, journey=True))


def test_help(snap_compare):
    assert snap_compare(recorded_app(), terminal_size=SMALL, run_before=after("question_mark"))
