"""One outcome, one transaction, written once (psycopg2).

The guard is the ``questions`` row: the transaction first sets the question's terminal state
if, and only if, it has none yet (inserting the row when the question never went through the
API). When that changes nothing, the message is a replay or a second outcome: nothing else is
written, and the stored outcome is read back so that the cache still gets the stored answer.

PostgreSQL's text and jsonb cannot hold NUL (U+0000), and psycopg2 refuses it with a plain
``ValueError``: every string written, inside the JSON columns too, goes without it (``_without_nul``).
The llm-consumer already removes it from answers, but a message can come from anywhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from services.common import db
from services.common.cache import CachedAnswer
from services.common.schemas import ErrorInfo, ErrorKind, Stage
from services.persister.records import Outcome

log = logging.getLogger(__name__)


class DatabaseDown(Exception):
    """PostgreSQL is unreachable (or restarting): retry later, nothing was written."""


class Unstorable(Exception):
    """PostgreSQL refused the data itself: retrying the same write cannot succeed."""


@dataclass
class WriteResult:
    kind: str  # written, duplicate (same outcome again), conflict (a different outcome already stored)
    stored_state: str | None = None
    cache_entry: CachedAnswer | None = None


CLAIM_TERMINAL = """
INSERT INTO questions AS q (question_id, question, reference_answer, state, submitted_at, updated_at, terminal_at)
VALUES (%(question_id)s, %(question)s, %(reference_answer)s, %(state)s, %(submitted_at)s, now(), %(terminal_at)s)
ON CONFLICT (question_id) DO UPDATE
    SET state = EXCLUDED.state, updated_at = now(), terminal_at = EXCLUDED.terminal_at
    WHERE q.terminal_at IS NULL
RETURNING q.question_id
"""

INSERT_RESPONSE = """
INSERT INTO responses (question_id, question, reference_answer, answer, score, status, threshold, model, backend,
                       attempt, retries_overload, retries_quota, llm_latency_ms, submitted_at, completed_at, hops)
VALUES (%(question_id)s, %(question)s, %(reference_answer)s, %(answer)s, %(score)s, %(status)s, %(threshold)s,
        %(model)s, %(backend)s, %(attempt)s, %(retries_overload)s, %(retries_quota)s, %(llm_latency_ms)s,
        %(submitted_at)s, %(completed_at)s, %(hops)s)
ON CONFLICT (question_id) DO NOTHING
"""

INSERT_FAILURE = """
INSERT INTO failed_questions (question_id, question, reason, error_kind, status_code, error_message, source_topic,
                              attempt, retries_overload, retries_quota, raw, last_message, hops, submitted_at,
                              failed_at)
VALUES (%(question_id)s, %(question)s, %(reason)s, %(error_kind)s, %(status_code)s, %(error_message)s,
        %(source_topic)s, %(attempt)s, %(retries_overload)s, %(retries_quota)s, %(raw)s, %(last_message)s, %(hops)s,
        %(submitted_at)s, %(failed_at)s)
"""

INSERT_SCORE = """
INSERT INTO score_history (question_id, attempt, score, answer, scored_at)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (question_id, attempt) DO NOTHING
"""

INSERT_TIMING = """
INSERT INTO processing_metrics (question_id, stage, attempt, started_at, ended_at, duration_ms)
VALUES %s
"""

STORED_ANSWER = """
SELECT q.state, r.question, r.answer, r.score, r.status, r.model, r.attempt, r.completed_at
FROM questions q LEFT JOIN responses r ON r.question_id = q.question_id
WHERE q.question_id = %s
"""

# Connection-level failures: the server is down, restarting or unreachable.
_TRANSIENT = (psycopg2.OperationalError, psycopg2.InterfaceError)
# SQLSTATE classes of an OperationalError that are the server's state, not the row's: connection
# (08), insufficient resources (53), operator intervention such as a shutdown (57), system (58).
# libpq's own failures (refused, reset) carry no SQLSTATE. Other classes, e.g. 54 "index row
# requires 16440 bytes", are about this one row: waiting for them would hold the partition forever.
_SERVER_STATE_CLASSES = ("08", "53", "57", "58")


def _server_down(exc: BaseException) -> bool:
    code = getattr(exc, "pgcode", None)
    return code is None or code[:2] in _SERVER_STATE_CLASSES


class Writer:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg2.extensions.connection | None = None
        self.ok = False
        self.detail = "not connected yet"

    def connect_quietly(self) -> None:
        """Connect at start when possible; a failure only shows in health until the first write."""
        try:
            self._connection()
        except DatabaseDown:
            pass

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            self._conn = db.connect(self._dsn, application_name="qactl-persister", timeout=3)
        except _TRANSIENT as exc:
            self._down(exc)
        self.ok, self.detail = True, "ok"
        return self._conn  # type: ignore[return-value]

    def _down(self, exc: BaseException) -> None:
        self.ok, self.detail = False, f"unavailable: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
        self._conn = None
        raise DatabaseDown(self.detail) from exc

    def probe(self) -> bool:
        """``SELECT 1`` (connecting if needed); updates ``ok``/``detail``, never raises."""
        try:
            conn = self._connection()
            with conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
        except DatabaseDown:
            return False
        except _TRANSIENT as exc:
            with contextlib.suppress(DatabaseDown):
                self._down(exc)
            return False
        self.ok, self.detail = True, "ok"
        return True

    def write(self, outcome: Outcome) -> WriteResult:
        conn = self._connection()
        try:
            with conn:  # one transaction: commit on success, rollback on any error
                with conn.cursor() as cur:
                    return self._write(cur, outcome)
        except _TRANSIENT as exc:
            if not _server_down(exc):
                raise Unstorable(str(exc).strip()) from exc
            self._down(exc)
            raise  # unreachable: _down raises
        except (psycopg2.DataError, psycopg2.IntegrityError, psycopg2.ProgrammingError) as exc:
            if isinstance(exc, psycopg2.errors.UndefinedTable):
                # The schema is missing (migrations not run): transient from our side, wait for it.
                self.ok, self.detail = False, f"schema missing: {exc.pgerror or exc}"
                raise DatabaseDown(self.detail) from exc
            raise Unstorable(str(exc).strip()) from exc

    def write_unstorable(self, outcome: Outcome, error: str) -> WriteResult:
        """Record that an outcome could not be stored: a failure with the reason, its text dropped."""
        from services.common.schemas import DeadLetter

        letter = DeadLetter(
            question_id=outcome.question_id[:64],
            reason=f"outcome from {outcome.source} could not be stored: {error}"[:1000],
            error=ErrorInfo(kind=ErrorKind.internal, message=error[:1000]),
            source_topic=outcome.source.split("[")[0],
            failed_at=outcome.terminal_at,
        )
        failed = Outcome(
            question_id=outcome.question_id, state=Stage.failed, question="", reference_answer=None,
            submitted_at=outcome.submitted_at, terminal_at=outcome.terminal_at, source=outcome.source, failure=letter,
        )
        try:
            return self.write(failed)
        except DatabaseDown:
            raise  # the caller waits for PostgreSQL and tries the outcome again
        except Exception as exc:  # noqa: BLE001 (one message must not stop the others)
            log.error("dropping %s: even its failure record cannot be stored: %s", outcome.source, exc)
            return WriteResult("unstorable")

    def _write(self, cur: psycopg2.extensions.cursor, outcome: Outcome) -> WriteResult:
        _execute(
            cur,
            CLAIM_TERMINAL,
            {
                "question_id": outcome.question_id,
                "question": outcome.question,
                "reference_answer": outcome.reference_answer,
                "state": outcome.state.value,
                "submitted_at": outcome.submitted_at,
                "terminal_at": outcome.terminal_at,
            },
        )
        if cur.fetchone() is None:
            return self._already_terminal(cur, outcome)
        if outcome.answer is not None:
            self._insert_response(cur, outcome)
        if outcome.failure is not None:
            self._insert_failure(cur, outcome)
        if outcome.scores:
            cur.executemany(
                INSERT_SCORE,
                _without_nul([(outcome.question_id, s.attempt, s.score, s.answer, s.scored_at) for s in outcome.scores]),
            )
        if outcome.timings:
            psycopg2.extras.execute_values(
                cur, INSERT_TIMING,
                _without_nul(
                    [(outcome.question_id, t.stage, t.attempt, t.started_at, t.ended_at, t.duration_ms) for t in outcome.timings]
                ),
            )
        return WriteResult("written", outcome.state.value, outcome.cache_entry())

    def _already_terminal(self, cur: psycopg2.extensions.cursor, outcome: Outcome) -> WriteResult:
        _execute(cur, STORED_ANSWER, (outcome.question_id,))
        row = cur.fetchone()
        stored_state = row[0] if row else None
        kind = "duplicate" if stored_state == outcome.state.value else "conflict"
        entry = None
        if row is not None and row[2] is not None and stored_state == Stage.validated.value:
            # The stored answer, not this message's: a replay refreshes the cache with the truth
            # (validated only: a low-quality answer is never served as a hit).
            entry = CachedAnswer(
                question_id=outcome.question_id, question=row[1], answer=row[2], score=row[3],
                status=row[4] or stored_state, model=row[5], attempt=row[6] or 0, completed_at=row[7],
            )
        return WriteResult(kind, stored_state, entry)

    def _insert_response(self, cur: psycopg2.extensions.cursor, outcome: Outcome) -> None:
        answer = outcome.answer
        assert answer is not None
        _execute(
            cur,
            INSERT_RESPONSE,
            {
                "question_id": outcome.question_id,
                "question": outcome.question,
                "reference_answer": outcome.reference_answer,
                "answer": answer.answer,
                "score": answer.score,
                "status": outcome.state.value,
                "threshold": answer.threshold,
                "model": answer.model,
                "backend": answer.backend,
                "attempt": answer.attempt,
                "retries_overload": answer.retries.overload,
                "retries_quota": answer.retries.quota,
                "llm_latency_ms": answer.llm_latency_ms,
                "submitted_at": outcome.submitted_at,
                "completed_at": outcome.terminal_at,
                "hops": _hops_json(outcome),
            },
        )

    def _insert_failure(self, cur: psycopg2.extensions.cursor, outcome: Outcome) -> None:
        letter = outcome.failure
        assert letter is not None
        carried = letter.message
        _execute(
            cur,
            INSERT_FAILURE,
            {
                "question_id": outcome.question_id,
                "question": outcome.question,
                "reason": letter.reason,
                "error_kind": letter.error.kind.value,
                "status_code": letter.error.status_code,
                "error_message": letter.error.message,
                "source_topic": letter.source_topic,
                "attempt": carried.attempt if carried is not None else 0,
                "retries_overload": carried.retries.overload if carried is not None else 0,
                "retries_quota": carried.retries.quota if carried is not None else 0,
                "raw": letter.raw,
                "last_message": _json(json.loads(carried.model_dump_json())) if carried is not None else None,
                "hops": _hops_json(outcome),
                "submitted_at": outcome.submitted_at,
                "failed_at": outcome.terminal_at,
            },
        )

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()


def _hops_json(outcome: Outcome) -> str:
    return _json([h.model_dump(mode="json", exclude_none=True) for h in outcome.hops])


def _json(value: Any) -> str:
    """JSON for a jsonb column, which refuses ``\\u0000`` as PostgreSQL's text refuses NUL."""
    return json.dumps(_without_nul(value))


def _execute(cur: psycopg2.extensions.cursor, query: str, params: Any) -> None:
    cur.execute(query, _without_nul(params))


def _without_nul(value: Any) -> Any:
    """``value`` with NUL removed from every string in it (dicts, lists and tuples followed)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_without_nul(item) for item in value)
    return value
