"""PostgreSQL for the dashboard: scores, regeneration outcomes, question text, stored hops."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import psycopg2

from qactl.client import pg
from qactl.dashboard.model import ChaosRun, RegenerationOutcomes, ScoreHistogram
from services.common.schemas import Hop
from services.common.settings import QactlSettings


OUTCOMES_SQL = """
SELECT 'validated', attempt, count(*), NULL::double precision
  FROM responses WHERE source = 'pipeline' AND status = 'validated' GROUP BY attempt
UNION ALL
SELECT 'low_quality', 0, count(*), NULL FROM responses WHERE source = 'pipeline' AND status = 'low_quality'
UNION ALL
SELECT 'failed', 0, count(DISTINCT question_id), NULL FROM failed_questions
UNION ALL
SELECT 'score', attempt, count(*), avg(score) FROM score_history GROUP BY attempt
"""

# Right-closed bins (lo, hi] like model.histogram; numeric keeps 0.8 / 0.05 exactly 16.
HISTOGRAM_SQL = """
SELECT least(greatest(ceil((score::numeric - %(low)s::numeric) / %(width)s::numeric)::int - 1, 0), %(last)s),
       count(*)
  FROM score_history GROUP BY 1
"""


class PostgresQualityProbe:
    """Read-only queries on the pipeline's tables; reconnects after the server went away."""

    def __init__(self, settings: QactlSettings, timeout: float = 2.0) -> None:
        self._dsn = settings.postgres.url
        self._timeout = timeout
        self._conn = None
        # The poll and a journey screen may ask at the same time; one query at a time.
        self._lock = threading.Lock()

    def _cursor(self):  # type: ignore[no-untyped-def]
        if self._conn is None or self._conn.closed:
            self._conn = pg.connect(self._dsn, self._timeout)
            self._conn.autocommit = True  # plain reads: no transaction left open between polls
            with self._conn.cursor() as cur:
                cur.execute("SET statement_timeout = %s", (int(self._timeout * 1000),))
        return self._conn.cursor()

    def _query(self, sql: str, params: object = None) -> list[tuple]:  # type: ignore[type-arg]
        with self._lock:
            try:
                with self._cursor() as cur:
                    cur.execute(sql, params)
                    return cur.fetchall()
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                self._close()
                raise

    def score_histogram(self, edges: Sequence[float], threshold: float) -> ScoreHistogram:
        width = round(edges[1] - edges[0], 9)
        last = len(edges) - 2
        counts = [0] * (last + 1)
        for index, n in self._query(HISTOGRAM_SQL, {"low": edges[0], "width": width, "last": last}):
            counts[int(index)] += int(n)
        return ScoreHistogram(tuple(edges), tuple(counts), threshold)

    def regeneration_outcomes(self) -> RegenerationOutcomes:
        validated: dict[int, int] = {}
        means: dict[int, float] = {}
        low = failed = 0
        for kind, attempt, n, mean in self._query(OUTCOMES_SQL):
            if kind == "validated":
                validated[int(attempt)] = int(n)
            elif kind == "low_quality":
                low = int(n)
            elif kind == "failed":
                failed = int(n)
            elif mean is not None:
                means[int(attempt)] = float(mean)
        return RegenerationOutcomes(validated, low, failed, means)

    def running_chaos(self) -> ChaosRun | None:
        try:
            rows = self._query(
                "SELECT id, experiment, phase, started_at, in_flight_at_fault FROM chaos_runs"
                " WHERE state = 'running' ORDER BY started_at DESC LIMIT 1"
            )
        except psycopg2.errors.UndefinedTable:  # a database migrated before `qactl chaos` existed
            return None
        for run_id, experiment, phase, started_at, in_flight in rows:
            return ChaosRun(int(run_id), experiment, phase, started_at, in_flight)
        return None

    def questions(self, question_ids: Sequence[str]) -> Mapping[str, str]:
        rows = self._query(
            "SELECT question_id, question FROM questions WHERE question_id = ANY(%s)", (list(question_ids),)
        )
        return {qid: text for qid, text in rows}

    def hops(self, question_id: str) -> Sequence[Hop]:
        """The hops stored with the terminal state, for questions whose Redis status expired."""
        rows = self._query(
            "SELECT hops FROM responses WHERE question_id = %(q)s"
            " UNION ALL (SELECT hops FROM failed_questions WHERE question_id = %(q)s ORDER BY failed_at DESC LIMIT 1)",
            {"q": question_id},
        )
        for (raw,) in rows:
            if isinstance(raw, list) and raw:
                return [Hop.model_validate(item) for item in raw]
        return []

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
        self._conn = None
