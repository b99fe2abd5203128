"""A framed panel that draws one pure ``(snapshot, width) -> renderable`` function.

Cheap to refresh every second: the panel renders its renderable once into lines (not once to
measure and again to draw, as a ``Static`` with ``height: auto`` would), asks for a new layout
only when its height changed, and does nothing when the part of the snapshot it shows and its
width are the same as last time.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import RenderableType
from rich.segment import Segment
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget

from qactl.dashboard.model import Snapshot

Render = Callable[[Snapshot, int], RenderableType]
Part = Callable[[Snapshot], object]


def _whole(snapshot: Snapshot) -> object:
    return snapshot


class SnapshotPanel(Widget):
    DEFAULT_CSS = """
    SnapshotPanel {
        border: round $primary-background-lighten-2;
        border-title-color: $text-accent;
        padding: 0 1;
        height: auto;
    }
    """

    def __init__(
        self,
        title: str,
        render_fn: Render,
        part: Part = _whole,
        *,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.border_title = title
        self._render_fn = render_fn
        self._part = part
        self._snapshot: Snapshot | None = None
        self._drawn: tuple[object, int] | None = None  # (part, width) the lines were drawn from
        self._lines: list[Strip] = []
        self.renders = 0  # how often the renderable was actually drawn (tests, bench)

    def show(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._redraw()

    def on_resize(self) -> None:
        self._redraw()

    def _redraw(self) -> None:
        if self._snapshot is None or not self.is_mounted:
            return
        width = self.content_size.width or max(1, self.size.width - 4) or 40
        key = (self._part(self._snapshot), width)
        if key == self._drawn:
            return
        self._drawn = key
        console = self.app.console
        options = self.app.console_options.update(width=width, height=None, highlight=False)
        lines = console.render_lines(self._render_fn(self._snapshot, width), options, pad=True, new_lines=False)
        self.renders += 1
        height_changed = len(lines) != len(self._lines)
        self._lines = [Strip(Segment.adjust_line_length(line, width), width) for line in lines]
        self.refresh(layout=height_changed)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return max(1, len(self._lines))

    def render_line(self, y: int) -> Strip:
        width = self.content_size.width
        if y >= len(self._lines):
            return Strip.blank(width, self.rich_style)
        return self._lines[y].crop_extend(0, width, self.rich_style).apply_style(self.rich_style)

    def text(self) -> str:
        """What the panel shows, as plain text (for tests)."""
        return "\n".join(strip.text.rstrip() for strip in self._lines)
