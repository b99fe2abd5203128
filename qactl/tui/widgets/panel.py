"""A framed panel that draws one pure ``(snapshot, width) -> renderable`` function."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import RenderableType
from textual.widgets import Static

from qactl.client.dashboard import Snapshot

Render = Callable[[Snapshot, int], RenderableType]


class SnapshotPanel(Static):
    """Keeps the last snapshot so a resize can redraw at the new width without a poll."""

    DEFAULT_CSS = """
    SnapshotPanel {
        border: round $primary-background-lighten-2;
        border-title-color: $text-accent;
        padding: 0 1;
        height: auto;
    }
    """

    def __init__(self, title: str, render_fn: Render, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("", id=id, classes=classes)
        self.border_title = title
        self._render_fn = render_fn
        self._snapshot: Snapshot | None = None

    def show(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._redraw()

    def on_resize(self) -> None:
        self._redraw()

    def _redraw(self) -> None:
        if self._snapshot is None:
            return
        width = self.content_size.width or 40
        self.update(self._render_fn(self._snapshot, width))
