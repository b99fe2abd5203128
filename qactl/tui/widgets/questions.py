"""Recent questions with their live state; Enter (or a click) opens the question's journey."""

from __future__ import annotations

from datetime import datetime, timezone

from rich.text import Text
from textual.message import Message
from textual.widgets import DataTable

from qactl.dashboard.model import Snapshot
from qactl.tui.panels import QUESTION_COLUMNS, question_cells


class QuestionTable(DataTable[object]):
    class Chosen(Message):
        """The operator picked a question to follow."""

        def __init__(self, question_id: str) -> None:
            super().__init__()
            self.question_id = question_id

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=False)
        self.border_title = "recent questions"
        self._order: list[str] = []
        self._cells: dict[str, tuple[object, ...]] = {}

    def on_mount(self) -> None:
        self.add_column(QUESTION_COLUMNS[0], key="question", width=None)
        for name in QUESTION_COLUMNS[1:]:
            self.add_column(name, key=name)

    def show(self, snapshot: Snapshot, now: datetime | None = None) -> None:
        """Update in place when the same questions are listed, else rebuild keeping the cursor."""
        now = now or snapshot.taken_at or datetime.now(timezone.utc)
        order = [row.question_id for row in snapshot.questions]
        # state 17 + att 3 + score 5 + at 8, two cells of padding per column, the frame and a
        # vertical scrollbar: 47 cells. The question gets the rest, never a horizontal scrollbar.
        label_width = max(12, (self.size.width or 80) - 47)
        rows = {
            row.question_id: question_cells(row, now, snapshot.threshold, label_width) for row in snapshot.questions
        }
        if order == self._order:
            for qid, cells in rows.items():
                before = self._cells.get(qid, ())
                for index, (column, cell) in enumerate(zip(QUESTION_COLUMNS, cells)):
                    if index >= len(before) or _same(before[index], cell) is False:
                        self.update_cell(qid, column, cell)
            self._cells = rows
            return
        selected = self.selected_question()
        self.clear()
        for qid in order:
            self.add_row(*rows[qid], key=qid)
        self._order = order
        self._cells = rows
        if selected in rows:
            self.move_cursor(row=order.index(selected), animate=False)

    def selected_question(self) -> str | None:
        if not self._order or self.cursor_row < 0 or self.cursor_row >= len(self._order):
            return None
        return self._order[self.cursor_row]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(self.Chosen(str(event.row_key.value)))


def _same(a: object, b: object) -> bool:
    """Rich ``Text`` equality ignores the base style; a cell's colour matters here."""
    if isinstance(a, Text) and isinstance(b, Text):
        return a.plain == b.plain and str(a.style) == str(b.style) and a.spans == b.spans
    return a == b
