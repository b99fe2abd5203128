"""Traffic runs into PostgreSQL (``traffic_runs``, ``traffic_samples``: migration 0002).

A run is written once it is over, in one transaction: a run cut short records nothing, so the
comparison of `qactl metrics` only ever reads complete runs.
"""

from __future__ import annotations

import json

import psycopg2
import psycopg2.extras

from qactl.client import pg
from qactl.errors import QactlError, StackNotRunning
from qactl.traffic.runner import RunResult

INSERT_RUN = """
INSERT INTO traffic_runs (mode, started_at, finished_at, wall_seconds, questions_source, questions_digest,
                          requested_count, rate, poll_interval_ms, backend, model, settings, note)
VALUES (%s, %s, now(), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
RETURNING id
"""

INSERT_SAMPLES = """
INSERT INTO traffic_samples (run_id, seq, question_id, question, sent_at, http_status, perceived_ms, real_ms,
                             outcome, success, from_store, score, detail)
VALUES %s
"""


def record_run(
    dsn: str,
    result: RunResult,
    *,
    questions_source: str,
    questions_digest: str,
    rate: float | None,
    poll_interval: float | None,
    note: str | None = None,
) -> int:
    """Store a finished run and its samples; returns the run id."""
    try:
        conn = pg.connect(dsn, timeout=5, application_name="qactl-traffic")
    except psycopg2.OperationalError as exc:
        raise StackNotRunning(f"PostgreSQL is not reachable, the run was not recorded: {str(exc).strip().splitlines()[0]}") from None
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                INSERT_RUN,
                (
                    result.mode,
                    result.started_at,
                    result.wall_seconds,
                    questions_source,
                    questions_digest,
                    len(result.samples),
                    rate,
                    poll_interval * 1000 if poll_interval is not None else None,
                    result.backend,
                    result.model,
                    json.dumps(result.settings),
                    note,
                ),
            )
            run_id = int(cur.fetchone()[0])
            psycopg2.extras.execute_values(
                cur,
                INSERT_SAMPLES,
                [
                    (
                        run_id, s.seq, s.question_id, s.question, s.sent_at, s.http_status, s.perceived_ms,
                        s.real_ms, s.outcome, s.success, s.from_store, s.score, (s.detail or None) and s.detail[:1000],
                    )
                    for s in result.samples
                ],
                page_size=1000,
            )
    except psycopg2.errors.UndefinedTable:
        raise StackNotRunning("PostgreSQL lacks the traffic tables (migration 0002); run `qactl up`") from None
    except psycopg2.Error as exc:
        raise QactlError(f"the run was not recorded: {str(exc).strip().splitlines()[0]}") from None
    finally:
        conn.close()
    return run_id
