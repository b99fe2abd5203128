"""The dashboard: every panel at once on a large terminal, three pages of them on a small one."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Grid
from textual.screen import Screen
from textual.widgets import Footer, Static

from qactl.dashboard.model import Snapshot
from qactl.tui import panels
from qactl.tui.widgets.panel import SnapshotPanel
from qactl.tui.widgets.questions import QuestionTable

# Below this size the panels do not fit together: show one page at a time.
WIDE_ENOUGH = (120, 36)

PAGES = (("flow", "1 Flow"), ("quality", "2 Quality"), ("questions", "3 Questions"), ("health", "4 Health"))


class DashboardScreen(Screen[None]):
    BINDINGS = [
        Binding("1", "page('flow')", "Pages", key_display="1-4"),
        Binding("2", "page('quality')", show=False),
        Binding("3", "page('questions')", show=False),
        Binding("4", "page('health')", show=False),
        Binding("enter", "open_selected", "Journey", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield Static(id="status-line")
        yield Static(id="pages")
        with Grid(id="panels"):
            yield SnapshotPanel(
                "topic · msg/s · total · last minute",
                panels.topic_flow,
                lambda s: (s.topics, s.errors.get("kafka")),
                id="flow",
                classes="panel page-flow",
            )
            with Container(id="side", classes="panel page-flow"):
                yield SnapshotPanel(
                    "consumer lag", panels.consumer_lag, lambda s: (s.lags, s.errors.get("lag")), id="lag"
                )
                yield SnapshotPanel(
                    "flink", panels.flink_jobs, lambda s: (s.flink_jobs, s.errors.get("flink")), id="flink"
                )
            yield SnapshotPanel(
                "scores",
                panels.score_histogram,
                lambda s: (s.scores, s.errors.get("postgres")),
                id="scores",
                classes="panel page-quality",
            )
            yield SnapshotPanel(
                "outcomes",
                panels.regeneration_outcomes,
                lambda s: (s.regenerations, s.errors.get("postgres")),
                id="regenerations",
                classes="panel page-quality",
            )
            yield SnapshotPanel(
                "retries",
                panels.retries,
                lambda s: (s.retries, s.delay_scale, s.errors.get("kafka")),
                id="retries",
                classes="panel page-quality",
            )
            yield QuestionTable(id="questions", classes="panel page-questions")
            yield SnapshotPanel(
                "llm · components",
                panels.health,
                lambda s: (s.llm, s.components, s.errors.get("llm"), s.errors.get("health")),
                id="health",
                classes="panel page-health",
            )
        yield Footer()

    page = "flow"

    def on_mount(self) -> None:
        self._fit(self.size.width, self.size.height)
        self.action_page("flow")
        self.watch(self.app, "snapshot", self.show_snapshot)

    def on_resize(self, event: events.Resize) -> None:
        self._fit(event.size.width, event.size.height)

    def _fit(self, width: int, height: int) -> None:
        self.set_class(width < WIDE_ENOUGH[0] or height < WIDE_ENOUGH[1], "-compact")
        self._sync_focus()

    def _sync_focus(self) -> None:
        """The question table has the focus whenever it is on screen, and only then."""
        if self.has_class("-compact") and self.page != "questions":
            self.set_focus(None)
        else:
            self.query_one(QuestionTable).focus()

    def show_snapshot(self, snapshot: Snapshot | None) -> None:
        app = self.app
        # One fixed-height line: no layout pass needed.
        self.query_one("#status-line", Static).update(
            panels.status_line(snapshot, getattr(app, "refresh_seconds", 1.0), getattr(app, "paused", False)),
            layout=False,
        )
        if snapshot is None:
            return
        for panel in self.query(SnapshotPanel):
            panel.show(snapshot)
        self.query_one(QuestionTable).show(snapshot)

    def action_page(self, page: str) -> None:
        for name, _ in PAGES:
            self.set_class(name == page, f"-page-{name}")
        self.page = page
        self.query_one("#pages", Static).update(panels.page_tabs(PAGES, page))
        self._sync_focus()

    def action_open_selected(self) -> None:
        table = self.query_one(QuestionTable)
        if self.has_class("-compact") and self.page != "questions":
            self.action_page("questions")
            return
        question_id = table.selected_question()
        if question_id:
            self.app.open_journey(question_id)  # type: ignore[attr-defined]

    def on_question_table_chosen(self, message: QuestionTable.Chosen) -> None:
        self.app.open_journey(message.question_id)  # type: ignore[attr-defined]
