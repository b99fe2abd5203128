"""`qactl watch`: the live dashboard of the pipeline.

One poll at a time: a thread worker collects a snapshot, and only when it has finished is the
next poll armed, ``refresh_seconds`` later (dolphie's WorkerManager does the same). A slow
backend therefore slows the refresh down instead of piling up threads.
"""

from __future__ import annotations

from typing import Protocol

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive
from textual.timer import Timer
from textual.worker import Worker, WorkerState

from qactl.dashboard.model import Journey, Snapshot
from services.common.settings import Policies
from qactl.dashboard.actions import Actions
from qactl.tui.screens.dashboard import DashboardScreen
from qactl.tui.screens.help import HelpScreen
from qactl.tui.screens.journey import JourneyScreen
from services.common.settings import QactlSettings

DEMO_KEYS = {"n": "normal", "o": "overload", "u": "quota", "r": "regeneration", "c": "cache-hit", "a": "all"}
FAULT_KEYS = {"B": "503-burst", "T": "429", "P": "402", "D": "degrade"}


class Source(Protocol):
    """What the dashboard polls: ``DashboardSource`` in the product, recorded data in tests."""

    def snapshot(self) -> Snapshot: ...

    def journey(self, question_id: str) -> Journey: ...

    def close(self) -> None: ...


def _bindings() -> list[Binding]:
    demo = [
        Binding(key, f"demo('{case}')", "Demo", show=index == 0, key_display="n o u r c a")
        for index, (key, case) in enumerate(DEMO_KEYS.items())
    ]
    faults = [
        Binding(key, f"fault('{fault}')", "Faults", show=index == 0, key_display="B T P D X")
        for index, (key, fault) in enumerate(FAULT_KEYS.items())
    ]
    return [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("p", "toggle_pause", "Pause", show=False),
        *demo,
        *faults,
        Binding("X", "clear_faults", show=False),
    ]


class QactlWatchApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "qactl watch"
    # The help screen lists every key; the palette would only crowd the footer at 80 columns.
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = _bindings()

    # always_update: a snapshot is new data even if it happens to compare equal.
    snapshot: reactive[Snapshot | None] = reactive(None, always_update=True)

    def __init__(
        self,
        source: Source,
        *,
        threshold: float = Policies().quality_threshold,
        refresh_seconds: float = 1.0,
        actions: Actions | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.threshold = threshold
        self.refresh_seconds = refresh_seconds
        self.actions = actions
        self.paused = False
        self.polls = 0  # finished polls, for tests and the bench
        # After a failed poll, wait longer so a broken source is not hammered, but keep trying.
        self.error_backoff_seconds = min(30.0, max(5.0, 2 * refresh_seconds))
        self._timer: Timer | None = None

    def on_mount(self) -> None:
        self.push_screen(DashboardScreen())
        self.poll()

    # --- polling: one at a time, re-armed when the last one finished ---

    @work(thread=True, group="poll", exit_on_error=False)
    def poll(self) -> Snapshot:
        return self.source.snapshot()

    def _arm(self, delay: float) -> None:
        self._timer = self.set_timer(delay, self._tick)

    def _tick(self) -> None:
        if self.paused:
            self._arm(self.refresh_seconds)
        else:
            self.poll()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group == "poll":
            if event.state == WorkerState.SUCCESS:
                self.polls += 1
                self.snapshot = worker.result
                self._arm(self.refresh_seconds)
            elif event.state == WorkerState.ERROR:
                self.polls += 1
                self.notify(f"poll failed: {worker.error}", severity="error", timeout=4)
                self._arm(self.error_backoff_seconds)
        elif worker.group == "action" and event.state in (WorkerState.SUCCESS, WorkerState.ERROR):
            if event.state == WorkerState.SUCCESS:
                self.notify(str(worker.result), title=worker.name, timeout=6)
            else:
                self.notify(f"{worker.error}", title=f"{worker.name} failed", severity="error", timeout=8)

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        self.notify("refresh paused" if self.paused else "refresh resumed", timeout=2)
        # The status line says PAUSED at once, not at the next poll.
        self.mutate_reactive(QactlWatchApp.snapshot)

    # --- screens ---

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def open_journey(self, question_id: str) -> None:
        self.push_screen(JourneyScreen(question_id))

    # --- operator actions: run in a thread, report with a notification ---

    def action_demo(self, case: str) -> None:
        if self.actions is None or self.actions.demo is None:
            self.notify("demo cases are not available (no demo runner)", severity="warning")
            return
        # Two cases at once would fight over the gateway's fault rules: one at a time.
        running = [w.name for w in self.workers if w.group == "action" and w.name.startswith("demo ") and w.is_running]
        if running:
            self.notify(f"{running[0]} is still running", severity="warning", timeout=3)
            return
        self.notify(f"firing demo case {case}…", timeout=3)
        self._run_action(f"demo {case}", lambda: self.actions.demo.fire(case))  # type: ignore[union-attr]

    def action_fault(self, fault: str) -> None:
        if self.actions is None or self.actions.faults is None:
            self.notify("fault injection is not available (no gateway client)", severity="warning")
            return
        self._run_action(f"fault {fault}", lambda: self.actions.faults.inject(fault))  # type: ignore[union-attr]

    def action_clear_faults(self) -> None:
        if self.actions is None or self.actions.faults is None:
            self.notify("fault injection is not available (no gateway client)", severity="warning")
            return
        self._run_action("clear faults", lambda: self.actions.faults.clear())  # type: ignore[union-attr]

    def _run_action(self, name: str, call: object) -> None:
        self.run_worker(call, name=name, group="action", thread=True, exit_on_error=False)  # type: ignore[arg-type]

    def on_unmount(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self.source.close()


def stack_actions(settings: QactlSettings) -> Actions:
    """Demo cases through the demo runner, faults through the gateway's admin client."""
    from qactl.client.gateway import GatewayClient, GatewayFaultInjector
    from qactl.demo.runner import StackDemoFirer
    from qactl.runtime.credentials import with_stored

    # The token is read at the first fault key, so a dashboard opened before `qactl up` works.
    faults = GatewayFaultInjector(lambda: GatewayClient.from_settings(with_stored(settings)))
    return Actions(demo=StackDemoFirer(settings), faults=faults)


def make_app(
    settings: QactlSettings,
    source: Source | None = None,
    *,
    refresh_seconds: float = 1.0,
    actions: Actions | None = None,
) -> QactlWatchApp:
    """The dashboard for the stack of ``settings``; tests pass recorded ``source`` data."""
    if source is None:
        from qactl.dashboard.source import DashboardSource

        source = DashboardSource.for_stack(settings)
        if actions is None:
            actions = stack_actions(settings)
    return QactlWatchApp(
        source,
        threshold=settings.policies.quality_threshold,
        refresh_seconds=refresh_seconds,
        actions=actions,
    )


