"""One question's journey: its hops across topics on a timeline, refreshed while it moves."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerState

from qactl.dashboard.model import Journey
from qactl.tui import panels
from services.common.schemas import TERMINAL_STAGES
from services.common.settings import Policies


class JourneyScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("backspace", "app.pop_screen", show=False),
    ]

    def __init__(self, question_id: str) -> None:
        super().__init__()
        self.question_id = question_id
        self.journey: Journey | None = None
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Static(f"journey of {self.question_id}", id="journey-title")
        with VerticalScroll(id="journey-body"):
            yield Static(id="journey")
        yield Footer()

    def on_mount(self) -> None:
        self.fetch()

    @work(thread=True, group="journey", exit_on_error=False)
    def fetch(self) -> Journey:
        return self.app.source.journey(self.question_id)  # type: ignore[attr-defined]

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "journey" or not self.is_attached:
            return
        interval = getattr(self.app, "refresh_seconds", 1.0)
        if event.state == WorkerState.SUCCESS:
            self.show(event.worker.result)  # type: ignore[arg-type]
            # A question in a terminal state does not move any more: stop asking.
            if self.journey is None or self.journey.stage not in TERMINAL_STAGES:
                self._timer = self.set_timer(interval, self.fetch)
        elif event.state == WorkerState.ERROR:
            self.query_one("#journey", Static).update(f"[red]could not read the hops:[/] {event.worker.error}")
            self._timer = self.set_timer(max(5.0, 2 * interval), self.fetch)

    def show(self, journey: Journey) -> None:
        self.journey = journey
        threshold = getattr(self.app, "threshold", Policies().quality_threshold)
        body = self.query_one("#journey", Static)
        body.update(panels.journey(journey, threshold, body.content_size.width or self.size.width - 2))

    def on_unmount(self) -> None:
        if self._timer is not None:
            self._timer.stop()
