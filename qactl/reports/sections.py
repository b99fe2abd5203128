"""What `qactl metrics` reports, read from PostgreSQL: UI-free, one function per section.

Every figure comes from stored rows: the pipeline's tables and views (migration 0001), the
imported baseline (``responses.source = 'import'``) and the traffic runs recorded by
`qactl traffic` (migration 0002), the experiments of `qactl chaos` (migration 0004). Nothing is typed in: a section without data says so
("not measured yet") rather than showing a number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from qactl.client import pg
from qactl.errors import QactlError, StackNotRunning

NOT_MEASURED = "not measured yet"

SECTIONS = ("latency", "errors", "regeneration", "throughput", "baseline", "comparison", "chaos")


@dataclass
class Section:
    """A titled table: ``columns`` and ``rows`` (lists of plain values), or a ``note`` when empty."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": self.columns,
            "rows": [dict(zip(self.columns, row)) for row in self.rows],
            **({"note": self.note} if self.note else {}),
        }


def connect(dsn: str) -> psycopg2.extensions.connection:
    conn = pg.connect_to_stack(dsn, "qactl-metrics")
    conn.set_session(readonly=True, autocommit=True)
    return conn


def _fetch(conn: psycopg2.extensions.connection, query: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(query, args)
            return [dict(row) for row in cur.fetchall()]
    except psycopg2.errors.UndefinedTable as exc:
        raise StackNotRunning(f"PostgreSQL lacks a table or view ({exc.pgerror.strip().splitlines()[0]}); run `qactl up` to migrate") from None
    except psycopg2.Error as exc:
        raise QactlError(f"metrics query failed: {str(exc).strip().splitlines()[0]}") from None


def _round(value: Any, digits: int = 1) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if hasattr(value, "__float__") and not isinstance(value, (int, bool)):
        return round(float(value), digits)
    return value


def latency(conn: psycopg2.extensions.connection) -> Section:
    rows = _fetch(
        conn,
        """SELECT stage, samples, p50_ms, p95_ms, p99_ms, avg_ms, max_ms FROM latency_by_stage
           ORDER BY CASE stage WHEN 'total' THEN 2 ELSE 1 END, p50_ms DESC""",
    )
    columns = ["stage", "samples", "p50_ms", "p95_ms", "p99_ms", "avg_ms", "max_ms"]
    section = Section("latency", "latency by stage (ms)", columns)
    section.rows = [[_round(r[c]) for c in columns] for r in rows]
    if not rows:
        section.note = f"{NOT_MEASURED}: no question has reached a terminal state through the pipeline"
    return section


def errors(conn: psycopg2.extensions.connection) -> Section:
    rows = _fetch(
        conn,
        """SELECT outcome, error_kind, status_code, occurrences, questions, percent_of_errors
           FROM error_distribution ORDER BY occurrences DESC, outcome, error_kind""",
    )
    columns = ["outcome", "error_kind", "status_code", "occurrences", "questions", "percent_of_errors"]
    section = Section("errors", "error distribution (recovered by retries, or ending the question)", columns)
    section.rows = [[_round(r[c], 2) for c in columns] for r in rows]
    if not rows:
        section.note = "no errors recorded" if _has_outcomes(conn) else f"{NOT_MEASURED}: no outcome stored"
    return section


def _has_outcomes(conn: psycopg2.extensions.connection) -> bool:
    return bool(_fetch(conn, "SELECT 1 AS one FROM questions WHERE terminal_at IS NOT NULL LIMIT 1"))


# Score change per attempt: every attempt's average score, and the average change from the
# same question's previous attempt (attempt n vs n-1), from score_history.
SCORE_PER_ATTEMPT = """
SELECT s.attempt,
       count(*)                             AS answers,
       avg(s.score)                         AS avg_score,
       count(p.score)                       AS with_previous,
       avg(s.score - p.score)               AS avg_change_from_previous,
       count(*) FILTER (WHERE s.score > p.score) AS improved,
       count(*) FILTER (WHERE s.score > %s) AS above_threshold
FROM score_history s
LEFT JOIN score_history p ON p.question_id = s.question_id AND p.attempt = s.attempt - 1
GROUP BY s.attempt ORDER BY s.attempt
"""


def regeneration(conn: psycopg2.extensions.connection, threshold: float) -> Section:
    per_attempt = _fetch(conn, SCORE_PER_ATTEMPT, (threshold,))
    columns = ["attempt", "answers", "avg_score", "avg_change_from_previous", "improved", "above_threshold"]
    section = Section("regeneration", f"score per attempt (threshold {threshold:g}; attempt 0 = first answer)", columns)
    section.rows = [[_round(r[c], 4) for c in columns] for r in per_attempt]
    if not per_attempt:
        section.note = f"{NOT_MEASURED}: no answer has been scored"
    return section


# What each model reached, in the pipeline's own answers: a degrade fault's answers carry the
# fault's name as their model, so no canned text counts for the real model.
BY_MODEL = """
SELECT coalesce(model, 'unknown')                                         AS model,
       coalesce(backend, '')                                              AS backend,
       count(*)                                                           AS questions,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY score)                 AS median_final_score,
       count(*) FILTER (WHERE status = 'validated' AND attempt = 0)       AS validated_first_try,
       count(*) FILTER (WHERE status = 'validated' AND attempt > 0)       AS validated_after_regeneration,
       count(*) FILTER (WHERE status = 'low_quality')                     AS low_quality
FROM responses WHERE source = 'pipeline'
GROUP BY 1, 2 ORDER BY questions DESC, model
"""


def by_model(conn: psycopg2.extensions.connection, threshold: float) -> Section:
    columns = [
        "model", "backend", "questions", "median_final_score",
        "validated_first_try", "validated_after_regeneration", "low_quality",
    ]
    section = Section("by_model", f"what each model's stored answers reached (threshold {threshold:g})", columns)
    section.rows = [[_round(r[c], 4) for c in columns] for r in _fetch(conn, BY_MODEL)]
    if not section.rows:
        section.note = f"{NOT_MEASURED}: no answer of the pipeline is stored"
    return section


def regeneration_outcomes(conn: psycopg2.extensions.connection) -> Section:
    rows = _fetch(
        conn,
        """SELECT source, regenerations, questions, validated, low_quality, validated_percent,
                  avg_first_score, avg_final_score, avg_score_gain
           FROM regeneration_analysis ORDER BY source DESC, regenerations""",
    )
    columns = [
        "source", "regenerations", "questions", "validated", "low_quality", "validated_percent",
        "avg_first_score", "avg_final_score", "avg_score_gain",
    ]
    section = Section("regeneration_outcomes", "outcome by number of regenerations", columns)
    section.rows = [[_round(r[c], 4) for c in columns] for r in rows]
    if not rows:
        section.note = f"{NOT_MEASURED}: no answer stored"
    return section


THROUGHPUT = """
SELECT count(*)                                                        AS terminal,
       count(*) FILTER (WHERE state = 'validated')                     AS validated,
       count(*) FILTER (WHERE state = 'low_quality')                   AS low_quality,
       count(*) FILTER (WHERE state = 'failed')                        AS failed,
       min(submitted_at)                                               AS first_submitted,
       max(terminal_at)                                                AS last_terminal,
       extract(epoch FROM max(terminal_at) - min(submitted_at))        AS span_seconds,
       count(*) FILTER (WHERE terminal_at > now() - interval '1 minute') AS last_minute,
       count(*) FILTER (WHERE terminal_at > now() - interval '1 hour')   AS last_hour,
       (SELECT count(*) FROM questions WHERE terminal_at IS NULL)      AS in_flight
FROM questions WHERE terminal_at IS NOT NULL
"""


def throughput(conn: psycopg2.extensions.connection) -> Section:
    row = _fetch(conn, THROUGHPUT)[0]
    columns = ["metric", "value"]
    section = Section("throughput", "pipeline throughput and success rate (questions ledger)", columns)
    terminal = int(row["terminal"] or 0)
    if not terminal:
        section.note = f"{NOT_MEASURED}: no question has reached a terminal state" + (
            f" ({row['in_flight']} in flight)" if row["in_flight"] else ""
        )
        return section
    answered = int(row["validated"]) + int(row["low_quality"])
    span = float(row["span_seconds"] or 0.0)
    section.rows = [
        ["terminal states", terminal],
        ["validated", int(row["validated"])],
        ["low_quality", int(row["low_quality"])],
        ["failed", int(row["failed"])],
        ["in flight", int(row["in_flight"])],
        ["success rate (answered) %", round(100.0 * answered / terminal, 2)],
        ["validated rate %", round(100.0 * int(row["validated"]) / terminal, 2)],
        ["first submitted", _iso(row["first_submitted"])],
        ["last terminal", _iso(row["last_terminal"])],
        ["throughput over that span (questions/s)", round(terminal / span, 3) if span > 0 else None],
        ["terminal in the last minute", int(row["last_minute"])],
        ["terminal in the last hour", int(row["last_hour"])],
    ]
    return section


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


BASELINE = """
SELECT count(*)                                                           AS answers,
       count(*) FILTER (WHERE status = 'validated')                       AS validated,
       count(score)                                                       AS scored,
       avg(score)                                                         AS avg_score,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY score)                 AS median_score,
       avg(attempt)                                                       AS avg_regenerations,
       count(llm_latency_ms)                                              AS with_latency,
       percentile_cont(0.50) WITHIN GROUP (ORDER BY llm_latency_ms)       AS llm_p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY llm_latency_ms)       AS llm_p95_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY llm_latency_ms)       AS llm_p99_ms,
       min(completed_at)                                                  AS first_completed,
       max(completed_at)                                                  AS last_completed
FROM responses WHERE source = %s
"""


def baseline(conn: psycopg2.extensions.connection) -> Section:
    """The imported earlier run next to this pipeline's own answers."""
    columns = ["metric", "imported (earlier run)", "pipeline"]
    section = Section("baseline", "answers: imported baseline vs this pipeline", columns)
    imported = _fetch(conn, BASELINE, ("import",))[0]
    pipeline = _fetch(conn, BASELINE, ("pipeline",))[0]
    if not imported["answers"] and not pipeline["answers"]:
        section.note = f"{NOT_MEASURED}: no answer stored and nothing imported (`qactl migrate FILE`)"
        return section

    def pct(row: dict[str, Any]) -> Any:
        return round(100.0 * row["validated"] / row["answers"], 2) if row["answers"] else None

    def val(row: dict[str, Any], key: str, digits: int = 1) -> Any:
        return _round(row[key], digits) if row["answers"] else None

    section.rows = [
        ["answers", imported["answers"], pipeline["answers"]],
        ["validated %", pct(imported), pct(pipeline)],
        ["scored", imported["scored"], pipeline["scored"]],
        ["mean score", val(imported, "avg_score", 4), val(pipeline, "avg_score", 4)],
        ["median score", val(imported, "median_score", 4), val(pipeline, "median_score", 4)],
        ["mean regenerations", val(imported, "avg_regenerations", 3), val(pipeline, "avg_regenerations", 3)],
        ["LLM latency p50 (ms)", val(imported, "llm_p50_ms"), val(pipeline, "llm_p50_ms")],
        ["LLM latency p95 (ms)", val(imported, "llm_p95_ms"), val(pipeline, "llm_p95_ms")],
        ["LLM latency p99 (ms)", val(imported, "llm_p99_ms"), val(pipeline, "llm_p99_ms")],
    ]
    if not imported["answers"]:
        section.note = "no baseline imported yet (`qactl migrate FILE`)"
    return section


# The latest finished pipeline run that has a synchronous run on the same questions, with that
# run; else the latest of each mode, whatever their questions.
PAIRED_RUNS = """
SELECT a.run_id AS async_id, s.run_id AS sync_id
FROM traffic_summary a
JOIN LATERAL (
    SELECT run_id FROM traffic_summary
    WHERE mode = 'sync' AND questions_digest = a.questions_digest
    ORDER BY started_at DESC LIMIT 1
) s ON true
WHERE a.mode = 'async'
ORDER BY a.started_at DESC LIMIT 1
"""

RUN = "SELECT * FROM traffic_summary WHERE run_id = %s"
LATEST = "SELECT * FROM traffic_summary WHERE mode = %s ORDER BY started_at DESC LIMIT 1"


def comparison(
    conn: psycopg2.extensions.connection, async_run: int | None = None, sync_run: int | None = None
) -> Section:
    """The original plan's table, synchronous design vs asynchronous pipeline, from traffic runs."""
    note_parts: list[str] = []
    if async_run is None and sync_run is None:
        paired = _fetch(conn, PAIRED_RUNS)
        if paired:
            async_run, sync_run = paired[0]["async_id"], paired[0]["sync_id"]
    runs: dict[str, dict[str, Any] | None] = {}
    for mode, chosen in (("sync", sync_run), ("async", async_run)):
        found = _fetch(conn, RUN, (chosen,)) if chosen is not None else _fetch(conn, LATEST, (mode,))
        if chosen is not None and not found:
            raise QactlError(f"no finished traffic run {chosen}")
        if found and found[0]["mode"] != mode:
            raise QactlError(f"traffic run {chosen} is a {found[0]['mode']} run, not {mode}")
        runs[mode] = found[0] if found else None
    sync, pipeline = runs["sync"], runs["async"]
    columns = ["metric", "synchronous design", "asynchronous pipeline"]
    section = Section("comparison", "synchronous design vs asynchronous pipeline (measured by `qactl traffic`)", columns)

    if sync is None and pipeline is None:
        section.note = (
            f"{NOT_MEASURED}: no traffic run recorded; run `qactl traffic --sync-baseline` "
            "to measure both designs on the same questions"
        )
        return section

    def cell(run: dict[str, Any] | None, key: str, digits: int = 1) -> Any:
        if run is None:
            return NOT_MEASURED
        value = run.get(key)
        return _round(value, digits) if value is not None else None

    section.rows = [
        ["run", cell(sync, "run_id"), cell(pipeline, "run_id")],
        ["questions", cell(sync, "samples"), cell(pipeline, "samples")],
        ["perceived latency p50 (ms)", cell(sync, "perceived_p50_ms"), cell(pipeline, "perceived_p50_ms")],
        ["perceived latency p95 (ms)", cell(sync, "perceived_p95_ms"), cell(pipeline, "perceived_p95_ms")],
        ["perceived latency p99 (ms)", cell(sync, "perceived_p99_ms"), cell(pipeline, "perceived_p99_ms")],
        ["real latency p50 (ms)", cell(sync, "real_p50_ms"), cell(pipeline, "real_p50_ms")],
        ["real latency p95 (ms)", cell(sync, "real_p95_ms"), cell(pipeline, "real_p95_ms")],
        ["throughput (answers/s)", cell(sync, "throughput_per_s", 3), cell(pipeline, "throughput_per_s", 3)],
        ["success rate %", cell(sync, "success_percent", 2), cell(pipeline, "success_percent", 2)],
        ["answered from the store", cell(sync, "from_store"), cell(pipeline, "from_store")],
    ]
    if sync is None or pipeline is None:
        missing = " and ".join(
            name for name, run in (("synchronous (`qactl traffic --sync-baseline`)", sync), ("pipeline (`qactl traffic`)", pipeline)) if run is None
        )
        note_parts.append(f"{NOT_MEASURED}: no {missing} run recorded")
    elif sync["questions_digest"] != pipeline["questions_digest"]:
        note_parts.append("the two runs were not on the same questions: run `qactl traffic --sync-baseline` for a fair pair")
    if pipeline is not None and pipeline.get("from_store"):
        note_parts.append(f"{pipeline['from_store']} pipeline answers came from the store (questions asked before)")
    section.note = "; ".join(note_parts) or None
    return section


CHAOS = """
SELECT id, experiment, state, phase, started_at, in_flight_at_fault, accepted, terminal_once, stuck, duplicated, lost,
       refused_during_fault, recover_seconds, recovered_by, violations
  FROM chaos_runs ORDER BY started_at DESC, id DESC LIMIT %s
"""


def chaos(conn: psycopg2.extensions.connection, limit: int = 30) -> Section:
    """The latest `qactl chaos` experiments, newest first: what each found."""
    columns = ["run", "experiment", "result", "started_at", "in_flight_at_fault", "accepted", "terminal_once", "stuck",
               "duplicated", "missing", "refused_during_fault", "recover_s", "recovered_by", "violations"]  # fmt: skip
    section = Section("chaos", "chaos experiments (latest first)", columns)
    for r in _fetch(conn, CHAOS, (limit,)):
        result = r["state"] if r["state"] != "running" else f"running ({r['phase']})"
        section.rows.append([
            r["id"], r["experiment"], result, _iso(r["started_at"]), r["in_flight_at_fault"], r["accepted"],
            r["terminal_once"], r["stuck"], r["duplicated"], r["lost"], r["refused_during_fault"],
            _round(r["recover_seconds"]), r["recovered_by"], "; ".join(r["violations"] or []) or None,
        ])  # fmt: skip
    if not section.rows:
        section.note = f"{NOT_MEASURED}: run `qactl chaos run EXPERIMENT`"
    return section


def collect(
    dsn: str,
    threshold: float,
    sections: tuple[str, ...] = SECTIONS,
    async_run: int | None = None,
    sync_run: int | None = None,
) -> list[Section]:
    """Every requested section, from one read-only connection."""
    conn = connect(dsn)
    try:
        found: list[Section] = []
        for name in sections:
            if name == "latency":
                found.append(latency(conn))
            elif name == "errors":
                found.append(errors(conn))
            elif name == "regeneration":
                found.append(regeneration(conn, threshold))
                found.append(regeneration_outcomes(conn))
                found.append(by_model(conn, threshold))
            elif name == "throughput":
                found.append(throughput(conn))
            elif name == "baseline":
                found.append(baseline(conn))
            elif name == "comparison":
                found.append(comparison(conn, async_run, sync_run))
            elif name == "chaos":
                found.append(chaos(conn))
            else:
                raise QactlError(f"unknown metrics section {name!r} (sections: {', '.join(SECTIONS)})")
        return found
    finally:
        conn.close()
