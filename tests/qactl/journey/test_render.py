"""One palette and the hop renderers of ask, demo and watch."""

from __future__ import annotations

from datetime import datetime, timezone

from qactl.journey import STAGE_STYLE, hop_detail, hop_line
from services.common.schemas import ErrorInfo, ErrorKind, Hop, Stage

AT = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)


def styles(text) -> dict[str, str]:
    return {text.plain[span.start:span.end]: str(span.style) for span in text.spans}


def test_every_stage_has_one_colour_and_scoring_is_blue() -> None:
    assert set(STAGE_STYLE) == set(Stage)
    assert STAGE_STYLE[Stage.scoring] == "blue"


def test_a_narrated_line_says_when_where_and_what() -> None:
    error = ErrorInfo(kind=ErrorKind.overload, status_code=503, message="busy")
    hop = Hop(stage=Stage.retrying_overload, topic="llm-responses-error-overload", at=AT, attempt=1,
              error=error, delay_seconds=2.0, note="retry 1/3")
    line = hop_line(hop, started=AT.timestamp() - 1.5)
    assert line.plain == (
        "03:04:05.678 +1.50s retrying-overload -> llm-responses-error-overload  "
        "attempt 1, overload 503: busy, wait 2.0s, retry 1/3"
    )
    assert styles(line)["retrying-overload ".ljust(18)] == "yellow"
    scoring = hop_line(Hop(stage=Stage.scoring, at=AT, score=0.8123))
    assert scoring.plain == "03:04:05.678 scoring           score 0.812"
    assert styles(scoring)["scoring".ljust(18)] == "blue"


def test_a_detail_cell_puts_the_most_telling_first() -> None:
    error = ErrorInfo(kind=ErrorKind.quota, status_code=402, message="pay")
    cell = hop_detail(Hop(stage=Stage.retrying_quota, at=AT, error=error, delay_seconds=60.0, note="n"), 0.75)
    assert cell.plain == "quota 402 delay 60s pay n"
    assert hop_detail(Hop(stage=Stage.validated, at=AT, score=0.9), 0.75).plain == "score 0.900 > 0.75"
