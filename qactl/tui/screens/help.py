"""The keys, what each does, and where the data comes from."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS: tuple[tuple[str, str], ...] = (
    ("1 2 3 4", "pages on terminals under 120x36: flow, quality, questions, health"),
    ("↑ ↓ enter", "pick a recent question, open its journey"),
    ("esc", "back from a journey or this help"),
    ("n o u r c", "fire a demo case: normal, overload, quota, regeneration, cache-hit"),
    ("a", "fire every demo case, one after another"),
    ("B", "inject a 503 burst into the LLM gateway"),
    ("T", "inject 429 Too Many Requests"),
    ("P", "inject 402 Payment Required (quota)"),
    ("D", "degrade answers (low scores, regenerations)"),
    ("X", "clear every injected fault"),
    ("p", "pause / resume the refresh"),
    ("?", "this help"),
    ("q", "quit"),
)

SOURCES = (
    "topic flow, retries: Kafka end offsets (delay topics count retries per attempt)",
    "consumer lag: Kafka consumer groups",
    "flink: Flink REST (job state, checkpoints, records in/out)",
    "scores, regeneration outcomes: PostgreSQL",
    "recent questions, journeys: Redis status hops",
    "llm: the backend and model the consumers call; the local model server's /health, /props and "
    "/metrics (tok/s: tokens generated over the last 10 s, all slots)",
    "components: the same health probes as `qactl status`",
)


def help_text() -> Table:
    table = Table(box=None, show_header=False, padding=(0, 1), expand=True)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for keys, what in KEYS:
        table.add_row(keys, what)
    table.add_row("", "")
    for line in SOURCES:
        table.add_row("", Text(line, style="dim"))
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,question_mark,q", "app.pop_screen", "Close"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(help_text())

    def on_mount(self) -> None:
        self.query_one("#help").border_title = "qactl watch · keys"
