"""The dashboard driven by the Pilot on recorded data: keys, screens, and the poll loop."""

from __future__ import annotations

import threading
import time

import pytest
from textual.widgets import Static

from qactl.dashboard.actions import Actions
from qactl.errors import StackNotRunning
from qactl.tui.app import QactlWatchApp, make_app
from qactl.tui.screens.dashboard import DashboardScreen
from qactl.tui.screens.help import HelpScreen
from qactl.tui.screens.journey import JourneyScreen
from qactl.tui.widgets.questions import QuestionTable
from services.common.settings import load_settings
from tests.qactl.tui.conftest import render_text
from tests.qactl.tui.recorded import RecordedSource

pytestmark = pytest.mark.asyncio


def shown(widget: Static, width: int = 120) -> str:
    """The text a Static currently shows."""
    return render_text(widget.content, width)


async def wait_for(pilot, condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.02)


def app_for(source: RecordedSource, refresh: float = 3600.0, actions: Actions | None = None) -> QactlWatchApp:
    return make_app(load_settings(), source, refresh_seconds=refresh, actions=actions)


async def test_first_poll_fills_the_panels_and_the_question_table(source):
    app = app_for(source)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.polls >= 1)
        await pilot.pause()
        status = shown(app.screen.query_one("#status-line", Static))
        assert "09:26:53" in status
        table = app.screen.query_one(QuestionTable)
        assert table.row_count == 6
        assert not app.screen.has_class("-compact")


async def test_enter_on_a_question_opens_its_journey_and_escape_comes_back(source):
    app = app_for(source)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.polls >= 1)
        await pilot.press("down", "enter")
        assert isinstance(app.screen, JourneyScreen)
        assert app.screen.question_id == "q-0002"
        await wait_for(pilot, lambda: app.screen.journey is not None)
        assert "retrying-overload" in shown(app.screen.query_one("#journey", Static))
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)


async def test_clicking_a_question_opens_its_journey(source):
    app = app_for(source)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.polls >= 1)
        table = app.screen.query_one(QuestionTable)
        # Row 3 (0-based 2) lies below the header row; a click highlights, a second selects.
        await pilot.click(QuestionTable, offset=(5, 4))
        await pilot.click(QuestionTable, offset=(5, 4))
        assert isinstance(app.screen, JourneyScreen)
        assert app.screen.question_id == table._order[2]


async def test_small_terminal_pages_switch_with_number_keys(source):
    app = app_for(source)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.polls >= 1)
        screen = app.screen
        assert screen.has_class("-compact") and screen.has_class("-page-flow")
        assert screen.query_one("#flow").display and not screen.query_one("#scores").display
        await pilot.press("2")
        assert screen.query_one("#scores").display and not screen.query_one("#flow").display
        await pilot.press("4")
        assert screen.query_one("#health").display
        # Enter away from the questions page goes to it rather than opening a hidden row.
        await pilot.press("1", "enter")
        assert isinstance(app.screen, DashboardScreen) and screen.has_class("-page-questions")
        assert app.focused is screen.query_one(QuestionTable)
        await pilot.press("enter")
        assert isinstance(app.screen, JourneyScreen) and app.screen.question_id == "q-0001"


async def test_resizing_switches_between_grid_and_pages(source):
    app = app_for(source)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.polls >= 1)
        assert app.screen.has_class("-compact")
        await pilot.resize_terminal(140, 44)
        await pilot.pause()
        assert not app.screen.has_class("-compact")
        assert all(app.screen.query_one(f"#{p}").display for p in ("flow", "scores", "questions", "health"))


async def test_question_mark_shows_help_and_escape_closes_it(source):
    app = app_for(source)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "503 burst" in shown(app.screen.query_one("#help Static", Static))
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)


async def test_q_quits_and_closes_the_source(source):
    app = app_for(source)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.polls >= 1)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0
    assert source.closed


async def test_polls_never_overlap_even_when_the_source_is_slower_than_the_refresh():
    slow = RecordedSource(delay=0.15)
    app = app_for(slow, refresh=0.01)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.polls >= 5, timeout=10)
    assert slow.max_running == 1
    assert slow.calls >= 5


async def test_pause_stops_polling_until_resumed(source):
    app = app_for(source, refresh=0.02)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.polls >= 2)
        await pilot.press("p")
        await pilot.pause(0.1)
        paused_at = source.calls
        await pilot.pause(0.3)
        assert source.calls <= paused_at + 1  # at most the poll already running finishes
        assert "PAUSED" in shown(app.screen.query_one("#status-line", Static))
        await pilot.press("p")
        await wait_for(pilot, lambda: source.calls >= paused_at + 3)


class FailingSource(RecordedSource):
    def __init__(self) -> None:
        super().__init__()
        self.failures = 2

    def snapshot(self):
        if self.failures:
            self.failures -= 1
            self.calls += 1
            raise ConnectionError("backend down")
        return super().snapshot()


async def test_a_failing_poll_is_reported_and_polling_goes_on():
    failing = FailingSource()
    app = app_for(failing, refresh=0.01)
    app.error_backoff_seconds = 0.05
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await wait_for(pilot, lambda: app.snapshot is not None)
        messages = [n.message for n in app._notifications]
        assert any("backend down" in m for m in messages)
        assert failing.calls >= 3


class Recorder:
    """Stands in for the demo runner and the gateway client: records what the keys asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.done = threading.Event()

    def fire(self, case: str) -> str:
        self.calls.append(("demo", case))
        return f"{case}: validated as expected"

    def inject(self, fault: str) -> str:
        self.calls.append(("fault", fault))
        return f"{fault} injected"

    def clear(self) -> str:
        self.calls.append(("clear", ""))
        return "faults cleared"


@pytest.mark.parametrize(
    ("key", "call"),
    [
        ("n", ("demo", "normal")),
        ("o", ("demo", "overload")),
        ("u", ("demo", "quota")),
        ("r", ("demo", "regeneration")),
        ("c", ("demo", "cache-hit")),
        ("a", ("demo", "all")),
        ("B", ("fault", "503-burst")),
        ("T", ("fault", "429")),
        ("P", ("fault", "402")),
        ("D", ("fault", "degrade")),
        ("X", ("clear", "")),
    ],
)
async def test_keys_fire_demo_cases_and_inject_faults_with_a_notification(source, key, call):
    recorder = Recorder()
    app = app_for(source, actions=Actions(demo=recorder, faults=recorder))
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press(key)
        await wait_for(pilot, lambda: recorder.calls and len(app._notifications) >= 1)
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert recorder.calls == [call]
        messages = " ".join(str(n.message) for n in app._notifications)
        assert ("validated as expected" in messages) or ("injected" in messages) or ("cleared" in messages)


async def test_without_runner_or_gateway_the_keys_explain_why(source):
    app = app_for(source, actions=Actions())
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("n", "B")
        await pilot.pause()
        messages = " ".join(str(n.message) for n in app._notifications)
        assert "no demo runner" in messages and "no gateway client" in messages


async def test_a_panel_whose_data_did_not_change_is_not_drawn_again(source):
    from qactl.tui.widgets.panel import SnapshotPanel

    app = app_for(source, refresh=0.02)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.polls >= 4)
        await pilot.pause()
        renders = {p.id: p.renders for p in app.screen.query(SnapshotPanel)}
    assert source.calls >= 4
    assert set(renders.values()) == {1}, renders  # the recorded data never changes


async def test_fault_keys_reach_a_real_gateway(source):
    from qactl.client.gateway import GatewayClient, GatewayFaultInjector
    from tests.services.llm_gateway.server import ADMIN_TOKEN, running_gateway

    with running_gateway() as gateway:
        client = GatewayClient(gateway.url, ADMIN_TOKEN)
        app = app_for(source, actions=Actions(faults=GatewayFaultInjector(client)))
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            for key in ("B", "D"):
                await pilot.press(key)
                await app.workers.wait_for_complete()
            rules = client.list_faults()
            assert [(r.kind, r.count) for r in rules] == [("503", 3), ("degrade", 1)]
            await pilot.press("X")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert client.list_faults() == []
            messages = " ".join(str(n.message) for n in app._notifications)
            assert "injected 503 for the next 3 calls" in messages and "cleared 2 fault rule(s)" in messages
        client.close()


async def test_an_unreachable_gateway_is_an_error_notification_not_a_crash(source):
    from qactl.client.gateway import GatewayClient, GatewayFaultInjector
    from tests.services.llm_gateway.server import free_port

    client = GatewayClient(f"http://127.0.0.1:{free_port()}", "token")
    app = app_for(source, actions=Actions(faults=GatewayFaultInjector(client)))
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("T")
        await app.workers.wait_for_complete()
        await pilot.pause()
        errors = [n for n in app._notifications if n.severity == "error"]
        assert errors and "does not answer" in str(errors[0].message)
        assert app.is_running
    client.close()


class SlowDemo:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.fired: list[str] = []

    def fire(self, case: str) -> str:
        self.fired.append(case)
        self.release.wait(10)
        return f"{case} ok"


async def test_one_demo_case_at_a_time(source):
    demo = SlowDemo()
    app = app_for(source, actions=Actions(demo=demo))
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("n")
        await wait_for(pilot, lambda: demo.fired == ["normal"])
        await pilot.press("o")
        await pilot.pause()
        assert any("demo normal is still running" in str(n.message) for n in app._notifications)
        demo.release.set()
        await app.workers.wait_for_complete()
        await pilot.press("o")
        await wait_for(pilot, lambda: demo.fired == ["normal", "overload"])


async def test_make_app_wires_the_real_source_and_actions():
    from qactl.dashboard.source import DashboardSource
    from qactl.client.gateway import GatewayFaultInjector
    from qactl.demo.runner import StackDemoFirer

    app = make_app(load_settings(policies={"quality_threshold": 0.8}), refresh_seconds=2.0)
    try:
        assert isinstance(app.source, DashboardSource)
        assert isinstance(app.actions.demo, StackDemoFirer)
        assert isinstance(app.actions.faults, GatewayFaultInjector)
        assert (app.threshold, app.refresh_seconds) == (0.8, 2.0)
        # No stack was ever up here: the dashboard opens, and a fault key says why it cannot act.
        with pytest.raises(StackNotRunning, match="no gateway admin token"):
            app.actions.faults.inject("503")
    finally:
        app.source.close()
