"""The palette of the stages and the two shapes of a hop: a narrated line and a detail cell."""

from __future__ import annotations

from rich.text import Text

from services.common.schemas import ErrorInfo, Hop, Stage

STAGE_STYLE: dict[Stage, str] = {
    Stage.queued: "cyan",
    Stage.generating: "cyan",
    Stage.scoring: "blue",
    Stage.regenerating: "magenta",
    Stage.retrying_overload: "yellow",
    Stage.retrying_quota: "yellow",
    Stage.validated: "green",
    Stage.low_quality: "dark_orange",
    Stage.failed: "red",
}


def stage_style(stage: Stage) -> str:
    return STAGE_STYLE.get(stage, "")


def seconds(value: float | None) -> str:
    """A duration as the dashboard shows it: 850ms, 2.4s, 42s, 5m, 3h (– when unknown)."""
    if value is None:
        return "–"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.1f}s" if value < 10 else f"{value:.0f}s"
    if value < 7200:
        return f"{value / 60:.0f}m"
    return f"{value / 3600:.0f}h"


def _error_code(error: ErrorInfo) -> str:
    code = f" {error.status_code}" if error.status_code else ""
    return f"{error.kind.value}{code}"


def hop_line(hop: Hop, started: float | None = None) -> Text:
    """One line of narration for a hop (ask, demo): when, which stage, and what happened there."""
    line = Text()
    elapsed = f"+{hop.at.timestamp() - started:.2f}s " if started is not None else ""
    line.append(f"{hop.at:%H:%M:%S}.{hop.at.microsecond // 1000:03d} {elapsed}", style="dim")
    line.append(f"{hop.stage.value:<18}", style=stage_style(hop.stage))
    if hop.topic:
        line.append(f"-> {hop.topic}  ", style="dim")
    details = []
    if hop.attempt:
        details.append(f"attempt {hop.attempt}")
    if hop.error is not None:
        details.append(f"{_error_code(hop.error)}: {hop.error.message}".strip())
    if hop.score is not None:
        details.append(f"score {hop.score:.3f}")
    if hop.delay_seconds is not None:
        details.append(f"wait {hop.delay_seconds:.1f}s")
    if hop.note:
        details.append(hop.note)
    line.append(", ".join(details))
    return line


def hop_detail(hop: Hop, threshold: float) -> Text:
    """What happened at a hop (the dashboard's journey), most telling first: error, delay, score, then the wording."""
    parts: list[Text] = []
    if hop.error is not None:
        parts.append(Text(_error_code(hop.error), style="red"))
    if hop.delay_seconds is not None:
        parts.append(Text(f"delay {seconds(hop.delay_seconds)}", style="yellow"))
    if hop.score is not None:
        above = hop.score > threshold
        parts.append(
            Text(f"score {hop.score:.3f} {'>' if above else '≤'} {threshold:g}", style="green" if above else "red")
        )
    if hop.error is not None and hop.error.message:
        parts.append(Text(hop.error.message, style="red dim"))
    if hop.note:
        parts.append(Text(hop.note, style="dim"))
    return Text(" ").join(parts)
