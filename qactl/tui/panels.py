"""Pure functions from a snapshot to a Rich renderable, one per dashboard panel.

No widget state and no terminal: each takes the data (and the width it may use) and returns
what to draw, so tests call them directly and the widgets only decide when to redraw.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.content import Content

from qactl.dashboard.model import GroupLag, Journey, QuestionRow, Snapshot
from qactl.journey.render import STAGE_STYLE, hop_detail, seconds

BLOCKS = " ▁▂▃▄▅▆▇█"

def sparkline(values: Sequence[float], width: int) -> str:
    """The last ``width`` values as block characters scaled to their maximum (0 is blank)."""
    if width <= 0:
        return ""
    tail = list(values)[-width:]
    peak = max(tail, default=0.0)
    if peak <= 0:
        return " " * width
    bars = []
    for value in tail:
        level = 0 if value <= 0 else max(1, round(value / peak * (len(BLOCKS) - 1)))
        bars.append(BLOCKS[level])
    return "".join(bars).rjust(width)


def rate(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def count(value: int | None) -> str:
    if value is None:
        return "–"
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1000:.1f}k"
    return str(value)


def _grid(*columns: tuple[str, str], header: bool = False) -> Table:
    """A borderless table: the panel's frame is the widget's border, its title the header."""
    table = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False, show_header=header)
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")  # type: ignore[arg-type]
    return table


def _missing(snapshot: Snapshot, part: str, what: str) -> Text:
    why = snapshot.errors.get(part)
    return Text(f"{what}: {why}" if why else f"no {what} yet", style="red" if why else "dim")


def topic_flow(snapshot: Snapshot, width: int = 78) -> RenderableType:
    """Messages/s and total per topic, with a sparkline of recent rates; delay topics dimmed.

    No header row (the panel title names the columns) so the eleven topics fit in 13 rows.
    """
    if not snapshot.topics:
        return _missing(snapshot, "kafka", "Kafka end offsets")
    name_width = max(len(t.topic) for t in snapshot.topics)
    spark_width = max(0, width - name_width - 6 - 6 - 3)
    table = _grid(("topic", "left"), ("msg/s", "right"), ("total", "right"), ("", "left"))
    for flow in snapshot.topics:
        delay = flow.kind == "delay"
        busy = flow.rate is not None and flow.rate > 0
        table.add_row(
            Text(flow.topic, style="dim" if delay else ""),
            Text(rate(flow.rate), style="bold" if busy else "dim"),
            Text(count(flow.end_offset), style="dim" if delay else ""),
            Text(sparkline(flow.history, spark_width), style="dim cyan" if delay else "cyan"),
        )
    return table


def consumer_lag(snapshot: Snapshot, width: int = 40) -> RenderableType:
    """Lag summed per consumer group, with its topics when there is room.

    A group of several members shows which member holds which partitions instead
    (``1:0,1 2:2``: member llm-consumer-1 holds partitions 0 and 1), and a group that is
    rebalancing says so: that is how a `qactl scale` shows.
    """
    if not snapshot.lags:
        return _missing(snapshot, "lag", "consumer groups")
    groups: dict[str, tuple[int, list[str], GroupLag]] = {}
    for lag in snapshot.lags:
        total, names, first = groups.get(lag.group, (0, [], lag))
        groups[lag.group] = (total + lag.lag, [*names, lag.topic], first)
    group_width = max(len(g) for g in groups)
    topics_width = width - group_width - 8 - 2
    table = _grid(("group", "left"), ("lag", "right"), ("topics", "left"))
    for group, (total, names, first) in sorted(groups.items()):
        style = "green" if total == 0 else "yellow" if total < 100 else "red bold"
        topics = _members_text(group, first) or Text(", ".join(names), style="dim")
        topics.truncate(max(0, topics_width), overflow="ellipsis")
        table.add_row(group, Text(count(total), style=style), topics if topics_width >= 8 else "")
    return table


def _members_text(group: str, lag: GroupLag) -> Text | None:
    """``×3 1:0 2:1 3:2`` for a group of several members; None for a group of one."""
    if lag.state and lag.state not in ("stable", "empty", "unknown"):
        return Text(f"{lag.state} ({lag.members or 0} members)", style="yellow")
    if not lag.members or lag.members < 2 or not lag.assignment:
        return None
    held = " ".join(
        f"{client.removeprefix(group).lstrip('-') or client}:{','.join(map(str, parts)) or '-'}"
        for client, parts in lag.assignment
    )
    return Text.assemble((f"×{lag.members} ", "bold"), (held, "dim"))


def retries(snapshot: Snapshot, width: int = 40) -> RenderableType:
    """Retries scheduled by type and retry number, with the delay the policy gives each."""
    if not snapshot.retries:
        return _missing(snapshot, "kafka", "retry counts")
    peak = max((r.count for r in snapshot.retries), default=0)
    bar_width = max(0, width - 27)
    table = _grid(("type", "left"), ("#", "right"), ("delay", "right"), ("n", "right"), ("", "left"), header=True)
    for bucket in snapshot.retries:
        filled = 0 if peak == 0 else round(bucket.count / peak * bar_width)
        table.add_row(
            bucket.kind,
            "all" if bucket.attempt is None else str(bucket.attempt),
            seconds(bucket.delay_seconds),
            count(bucket.count),
            Text("█" * filled, style="yellow" if bucket.kind == "overload" else "magenta"),
        )
    if snapshot.shortened_delays:
        note = Text(f"demo profile: delays ×{snapshot.delay_scale:g}", style="italic yellow")
        note.truncate(width, overflow="ellipsis")
        return Group(table, note)
    return table


def score_histogram(snapshot: Snapshot, width: int = 40, height: int = 5) -> RenderableType:
    """Vertical bars per score bin, green above the threshold, red at or below; ┃ marks it.

    Empty bins far below the threshold are left out, so the bars that matter get the room.
    """
    hist = snapshot.scores
    if hist is None:
        return _missing(snapshot, "postgres", "scores")
    at_threshold = min(range(len(hist.edges)), key=lambda i: abs(hist.edges[i] - hist.threshold))
    first_used = next((i for i, c in enumerate(hist.counts) if c), at_threshold)
    start = max(0, min(first_used, at_threshold - 5))
    edges, counts = hist.edges[start:], hist.counts[start:]
    peak = max(counts, default=0)
    cell = max(1, min(3, (width - 2) // max(1, len(counts))))
    levels = len(BLOCKS) - 1
    lines: list[Text] = []
    for row in range(height, 0, -1):
        line = Text()
        for lo, value in zip(edges, counts):
            if abs(lo - hist.threshold) < 1e-9:
                line.append("┃", style="bold")
            # Eighths of a row the bar reaches into this row.
            filled = 0.0 if peak == 0 else value / peak * height * levels
            part = int(min(levels, max(0.0, filled - (row - 1) * levels)))
            if value and row == 1 and part == 0:
                part = 1  # a bin with scores never looks empty
            line.append(BLOCKS[part] * cell, style="green" if lo >= hist.threshold else "red")
        lines.append(line)
    axis = Text()
    for lo in edges[:-1]:
        if abs(lo - hist.threshold) < 1e-9:
            axis.append("┃", style="bold")
        axis.append("─" * cell, style="dim")
    lines.append(axis)
    span = Text(f"{edges[0]:g}–{edges[-1]:g}  ", style="dim")
    span.append_text(
        Text.assemble(
            ("> ", "dim"),
            (f"{hist.threshold:g}", "bold"),
            ": ",
            (f"{hist.above}/{hist.total}", "green" if hist.above else "dim"),
        )
    )
    span.truncate(width, overflow="ellipsis")
    lines.append(span)
    return Group(*lines)


def regeneration_outcomes(snapshot: Snapshot, width: int = 40) -> RenderableType:
    """Terminal states by regenerations used, and the mean score each attempt reached."""
    outcomes = snapshot.regenerations
    if outcomes is None:
        return _missing(snapshot, "postgres", "outcomes")
    total = outcomes.total
    table = _grid(("outcome", "left"), ("n", "right"), ("%", "right"), ("score", "right"), header=True)

    def share(n: int) -> str:
        return f"{100 * n / total:.0f}" if total else "–"

    attempts = sorted(set(outcomes.validated_by_attempt) | set(outcomes.mean_score_by_attempt))
    for attempt in attempts:
        n = outcomes.validated_by_attempt.get(attempt, 0)
        label = "ok 1st answer" if attempt == 0 else f"ok after {attempt} regen"
        mean = outcomes.mean_score_by_attempt.get(attempt)
        table.add_row(Text(label, style="green"), count(n), share(n), "–" if mean is None else f"{mean:.3f}")
    table.add_row(Text("low quality", style="dark_orange"), count(outcomes.low_quality), share(outcomes.low_quality), "")
    table.add_row(Text("failed", style="red"), count(outcomes.failed), share(outcomes.failed), "")
    return table


def components(snapshot: Snapshot, width: int = 40, hide: Collection[str] = ()) -> RenderableType:
    rows = [r for r in snapshot.components if r.name not in hide]
    if not rows:
        return _missing(snapshot, "health", "component health")
    table = _grid(("", "left"), ("component", "left"), ("detail", "left"))
    name_width = max(len(r.name) for r in rows)
    for row in rows:
        detail = Text(row.detail, style="dim" if row.ok else "red")
        detail.truncate(max(0, width - name_width - 4), overflow="ellipsis")
        table.add_row(Text("●" if row.ok else "✖", style="green" if row.ok else "red bold"), row.name, detail)
    return table


LLM_SERVER = "llm-server"  # the component the LLM block stands for when it is the local model


def llm(snapshot: Snapshot, width: int = 40) -> RenderableType:
    """The LLM: backend and model, then, for the local model server, whether the model is
    loaded, the tokens/s it generates, its slots and its queue; for another LLM, where the
    calls go (the simulator is named as such: canned answers, no model)."""
    state = snapshot.llm
    if state is None:
        return _missing(snapshot, "llm", "LLM state")
    route, server = state.route, state.server
    if server is None:
        marker = Text("○", style="dim")  # not ours to ask: only the route is known
    elif server.loaded:
        marker = Text("●", style="green")
    else:
        marker = Text("◌" if server.reachable else "✖", style="yellow" if server.reachable else "red bold")
    head = Text.assemble(marker, "  ")  # aligned with the component rows below
    if route.simulated:
        head.append(route.answered_by, style="yellow")
    else:
        head.append(f"{route.kind} ")
        head.append(server.model if server is not None and server.model else route.model, style="bold")
    lines = [head]
    if server is None:
        via = "gateway " if route.through_gateway else "at "
        lines.append(Text(f"   {via}{route.calls}" + (f" → {route.upstream}" if route.upstream else ""), style="dim"))
    elif not server.reachable:
        lines.append(Text(f"   {server.summary()}", style="red"))
    elif not server.loaded:
        lines.append(Text("   loading the model…" + (f" ({server.detail})" if server.detail else ""), style="yellow"))
    else:
        speed = "–" if state.tokens_per_second is None else f"{state.tokens_per_second:.0f}"
        lines.append(Text.assemble("   ", ("loaded", "green"), " · ", (speed, "bold"), " tok/s"))
        busy = "–" if server.requests_processing is None else f"{server.requests_processing:.0f}"
        full = server.slots is not None and server.requests_processing is not None and (
            server.requests_processing >= server.slots
        )
        queued = server.requests_deferred or 0
        lines.append(
            Text.assemble(
                "   slots ",
                (f"{busy}/{'–' if server.slots is None else server.slots}", "bold" if full else ""),
                " busy · ",
                (f"{queued:.0f} queued", "yellow" if queued else "dim"),
            )
        )
    for line in lines:
        line.truncate(width, overflow="ellipsis")
    return Group(*lines)


def health(snapshot: Snapshot, width: int = 40) -> RenderableType:
    """The LLM above the component rows; the local model server's own row is the LLM's first line."""
    folded = (LLM_SERVER,) if snapshot.llm is not None and snapshot.llm.server is not None else ()
    return Group(llm(snapshot, width), components(snapshot, width, hide=folded))


def flink_jobs(snapshot: Snapshot, width: int = 40) -> RenderableType:
    """Each job in three short lines, so it fits a narrow column."""
    if not snapshot.flink_jobs:
        return _missing(snapshot, "flink", "Flink jobs")
    lines: list[Text] = []
    for job in snapshot.flink_jobs:
        style = "green" if job.state == "RUNNING" else (
            "yellow" if job.state in ("CREATED", "INITIALIZING", "RESTARTING") else "red"
        )
        head = Text.assemble((job.state, f"bold {style}"), " ", job.name)
        if job.duration_seconds is not None:
            head.append(f" up {seconds(job.duration_seconds)}", style="dim")
        checkpoints = Text.assemble(
            ("ckpt ", "dim"),
            (count(job.checkpoints_completed), "green"),
            " ok ",
            (count(job.checkpoints_failed), "red" if job.checkpoints_failed else "dim"),
            " failed",
        )
        if job.last_checkpoint_seconds_ago is not None:
            checkpoints.append(f", last {seconds(job.last_checkpoint_seconds_ago)} ago", style="dim")
        if job.last_checkpoint_duration_ms is not None:
            checkpoints.append(f" ({seconds(job.last_checkpoint_duration_ms / 1000)})", style="dim")
        records = Text.assemble(("records ", "dim"), "in ", count(job.records_in), "  out ", count(job.records_out))
        for line in (head, checkpoints, records):
            line.truncate(width, overflow="ellipsis")
            lines.append(line)
    return Group(*lines)


def status_line(snapshot: Snapshot | None, refresh_seconds: float, paused: bool = False) -> Text:
    """The one-line summary above the panels: time, poll cost, profile, broken parts."""
    line = Text("qactl watch", style="bold")
    if snapshot is None:
        line.append(" │ waiting for the first poll…", style="dim")
        return line
    line.append(" │ ")
    line.append(snapshot.taken_at.strftime("%H:%M:%S"))
    line.append(f" │ poll {seconds(snapshot.poll_seconds)} every {seconds(refresh_seconds)}", style="dim")
    if paused:
        line.append(" │ ")
        line.append("PAUSED", style="bold yellow")
    if snapshot.shortened_delays:
        line.append(" │ ")
        line.append(f"demo delays ×{snapshot.delay_scale:g}", style="yellow")
    if snapshot.chaos is not None:
        run = snapshot.chaos
        line.append(" │ ")
        in_flight = f", {run.in_flight_at_fault} in flight at the fault" if run.in_flight_at_fault is not None else ""
        line.append(f"chaos: {run.experiment} ({run.phase}{in_flight})", style="bold magenta")
    if snapshot.errors:
        line.append(" │ ")
        line.append("unreachable: " + ", ".join(sorted(snapshot.errors)), style="bold red")
    return line


def page_tabs(pages: Sequence[tuple[str, str]], current: str) -> Content:
    """The page strip of small terminals; each label is clickable."""
    parts = []
    for page, label in pages:
        style = "reverse bold" if page == current else "dim"
        parts.append(f"[{style} @click=screen.page('{page}')] {label} [/]")
    return Content.from_markup("  ".join(parts))


# --- recent questions (a DataTable: rows, not one renderable) ---

QUESTION_COLUMNS = ("question", "state", "att", "score", "at")


def question_cells(row: QuestionRow, now: datetime, threshold: float, label_width: int = 40) -> tuple[Text, ...]:
    label = Text(row.question or row.question_id, no_wrap=True)
    label.truncate(max(8, label_width), overflow="ellipsis")
    score_style = "" if row.score is None else "green" if row.score > threshold else "red"
    return (
        label,
        Text(row.stage.value, style=STAGE_STYLE.get(row.stage, "")),
        Text(str(row.attempt), justify="right"),
        Text("–" if row.score is None else f"{row.score:.3f}", style=score_style, justify="right"),
        # The clock time of the last hop, in the snapshot's zone: unlike an age, it only changes
        # when the question moves, so an idle table costs nothing to refresh.
        Text(row.updated_at.astimezone(now.tzinfo).strftime("%H:%M:%S"), style="dim"),
    )


# --- a question's journey ---


def timeline_bar(j: Journey, width: int) -> Text:
    """The journey to scale: each stage's share of the elapsed time, in its colour."""
    bar = Text()
    if len(j.hops) < 2 or width <= 0:
        return bar
    start, end = j.hops[0].at, j.hops[-1].at
    total = (end - start).total_seconds() or 1.0
    used = 0
    for index, hop in enumerate(j.hops[:-1]):
        until = (j.hops[index + 1].at - start).total_seconds()
        cells = round(until / total * width) - used
        if cells > 0:
            bar.append("━" * cells, style=STAGE_STYLE.get(hop.stage, ""))
            used += cells
    bar.append("●", style=STAGE_STYLE.get(j.hops[-1].stage, ""))
    return bar


def journey(j: Journey, threshold: float, width: int = 78) -> RenderableType:
    """The hops on a timeline: time since the first hop, the wait before each, and what happened."""
    title = Text.assemble(
        (j.question or j.question_id, "bold"),
        "  ",
        (j.question_id, "dim") if j.question else "",
    )
    if not j.hops:
        return Group(title, Text("no hops recorded for this question (expired or unknown id)", style="dim"))
    start = j.hops[0].at
    table = Table(box=None, padding=(0, 1), pad_edge=False, expand=True, show_edge=False)
    table.add_column("", no_wrap=True)
    table.add_column("at", justify="right", no_wrap=True)
    table.add_column("+wait", justify="right", no_wrap=True)
    table.add_column("stage", no_wrap=True)
    table.add_column("topic", no_wrap=True, overflow="ellipsis", ratio=1)
    table.add_column("att", justify="right", no_wrap=True)
    table.add_column("detail", overflow="fold", ratio=2)
    previous = start
    last = len(j.hops) - 1
    for index, hop in enumerate(j.hops):
        style = STAGE_STYLE.get(hop.stage, "")
        marker = "●" if index in (0, last) else "┼" if hop.error else "│"
        table.add_row(
            Text(marker, style=style),
            seconds((hop.at - start).total_seconds()) if index else "0",
            Text(seconds((hop.at - previous).total_seconds()) if index else "", style="dim"),
            Text(hop.stage.value, style=style),
            Text(hop.topic or "", style="dim"),
            str(hop.attempt),
            hop_detail(hop, threshold),
        )
        previous = hop.at
    total = (j.hops[-1].at - start).total_seconds()
    summary = Text.assemble(
        ("now: ", "dim"),
        (j.hops[-1].stage.value, STAGE_STYLE.get(j.hops[-1].stage, "")),
        (f" · {len(j.hops)} hops in {seconds(total)}", "dim"),
    )
    return Group(title, timeline_bar(j, max(0, width - 1)), table, summary)
