"""The API's PostgreSQL access (asyncpg): stored answers and the ``questions`` ledger.

The hot path is one round trip: a single statement looks for a validated answer of the question
(its key: the normalized question and its reference) and, when there is none, claims a run of it
in ``questions``:

- no run yet, or the latest run ended ``low_quality`` or ``failed``: a new run, with the next run's
  question id (``<key>``, then ``<key>-r2``, ...); this request is the one that produces;
- the latest run is still open: identical requests coalesce on it (202 with its id);
- the latest run's produce was never confirmed for ``REQUEUE`` seconds: claimed again, same id, so
  an API crash between insert and produce cannot leave a question stuck.

A run that ended is never re-opened: its ``terminal_at`` is written once (migration 0005).
Confirmations (``produced_at``) are written in batches off the request path.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.common.cache import CachedAnswer
from services.common.schemas import Stage
from services.storage_api.batching import MicroBatcher

log = logging.getLogger(__name__)

MARK_PRODUCED_EVERY = 0.05


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached or the schema is missing; nothing was stored."""


@dataclass
class Lookup:
    hit: CachedAnswer | None
    claimed: bool
    question_id: str | None = None  # the run this request claimed or coalesces on (None: a hit, or no claim)
    rearmed: bool = False  # claimed again: the run's produce was never confirmed


@dataclass(frozen=True)
class Claim:
    question_key: str
    question: str
    reference_answer: str | None
    submitted_at: datetime
    claim: bool


@dataclass
class Unconfirmed:
    question_id: str
    question: str
    reference_answer: str | None
    submitted_at: datetime


@dataclass
class StoredStatus:
    state: Stage
    question: str
    submitted_at: datetime | None
    updated_at: datetime | None
    terminal_at: datetime | None
    answer: str | None
    score: float | None
    model: str | None
    attempt: int | None
    reason: str | None
    hops: list[dict[str, Any]]

    def public(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "question": self.question,
            "submitted_at": self.submitted_at,
            "updated_at": self.updated_at,
            "terminal_at": self.terminal_at,
        }
        if self.answer is not None:
            fields.update(answer=self.answer, score=self.score, model=self.model, attempt=self.attempt)
        if self.reason is not None:
            fields["reason"] = self.reason
        return {k: v for k, v in fields.items() if v is not None}


# One statement for a whole batch of requests: the validated answer of those that have one, and
# for the others the latest run of the question: a new run claimed (none yet, or the latest ended
# without a validated answer), an open one to coalesce on, or an unconfirmed one claimed again.
# A stored answer matches only when it was scored the same way: against a reference or not (an
# answer stored before the reference counted in the key had the question's key alone).
LOOKUP_OR_CLAIM = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::boolean[])
        AS i(question_key, question, reference_answer, submitted_at, claim)
), hit AS (
    SELECT DISTINCT ON (r.question_key)
           r.question_key, r.question_id, r.question, r.answer, r.score, r.status, r.model, r.attempt, r.completed_at
    FROM responses r JOIN input i ON r.question_key = i.question_key
    WHERE r.status = 'validated' AND (r.reference_answer IS NULL) = (i.reference_answer IS NULL)
    ORDER BY r.question_key, r.completed_at DESC
), latest AS (
    SELECT DISTINCT ON (q.question_key)
           q.question_key, q.question_id, q.run, q.terminal_at, q.produced_at, q.updated_at
    FROM questions q JOIN input i ON q.question_key = i.question_key
    ORDER BY q.question_key, q.run DESC
), answered AS (  -- the last run with an answer stored (an imported one has no questions row)
    SELECT r.question_key, max(r.run) AS run
    FROM responses r JOIN input i ON r.question_key = i.question_key
    GROUP BY r.question_key
), plan AS (
    SELECT i.*, l.question_id AS latest_id,
           l.question_key IS NOT NULL AND l.terminal_at IS NULL AS latest_open,
           l.question_key IS NOT NULL AND l.terminal_at IS NULL AND l.produced_at IS NULL
               AND l.updated_at < i.submitted_at - make_interval(secs => $6) AS latest_unconfirmed,
           CASE WHEN greatest(l.run, a.run) IS NULL THEN i.question_key
                ELSE i.question_key || '-r' || (greatest(l.run, a.run) + 1) END AS next_id
    FROM input i LEFT JOIN latest l USING (question_key) LEFT JOIN answered a USING (question_key)
    WHERE NOT EXISTS (SELECT 1 FROM hit h WHERE h.question_key = i.question_key)
), fresh AS (
    INSERT INTO questions (question_id, question, reference_answer, state, submitted_at, updated_at)
    SELECT p.next_id, p.question, p.reference_answer, 'queued', p.submitted_at, p.submitted_at
    FROM plan p
    WHERE p.claim AND NOT p.latest_open
    ON CONFLICT (question_id) DO NOTHING
    RETURNING question_key, question_id
), rearmed AS (
    UPDATE questions q
    SET question = p.question, reference_answer = p.reference_answer, submitted_at = p.submitted_at,
        updated_at = p.submitted_at
    FROM plan p
    WHERE p.claim AND p.latest_unconfirmed AND q.question_id = p.latest_id
      -- Checked again on the row as locked: of two requests racing here, only the first claims it.
      AND q.produced_at IS NULL AND q.terminal_at IS NULL
      AND q.updated_at < p.submitted_at - make_interval(secs => $6)
    RETURNING q.question_key, q.question_id
)
SELECT i.question_key,
       coalesce(f.question_id, a.question_id, CASE WHEN p.latest_open THEN p.latest_id ELSE p.next_id END) AS question_id,
       (f.question_id IS NOT NULL OR a.question_id IS NOT NULL) AS claimed,
       a.question_id IS NOT NULL AS rearmed,
       h.question_id AS hit_id, h.question AS hit_question, h.answer, h.score, h.status, h.model, h.attempt,
       h.completed_at
FROM input i
LEFT JOIN plan p USING (question_key)
LEFT JOIN fresh f USING (question_key)
LEFT JOIN rearmed a USING (question_key)
LEFT JOIN hit h USING (question_key)
"""

STATUS = """
SELECT q.state, q.question, q.submitted_at, q.updated_at, q.terminal_at,
       r.answer, r.score, r.model, r.attempt, r.status AS response_status, r.hops AS response_hops,
       f.reason, f.hops AS failure_hops
FROM (SELECT $1::text AS question_id) AS wanted
LEFT JOIN questions q ON q.question_id = wanted.question_id
LEFT JOIN responses r ON r.question_id = wanted.question_id
LEFT JOIN LATERAL (
    SELECT reason, hops FROM failed_questions WHERE question_id = wanted.question_id
    ORDER BY failed_at DESC LIMIT 1
) f ON true
"""


class QuestionStore:
    def __init__(self, dsn: str, max_connections: int = 8, requeue_after_seconds: float = 30.0) -> None:
        self._dsn = dsn
        self._max = max_connections
        self._requeue_after = requeue_after_seconds
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._produced: set[str] = set()
        self._lookups: MicroBatcher[Claim, Lookup] = MicroBatcher(self._lookup_batch, max_in_flight=3)
        self.ok = False
        self.detail = "not checked yet"

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn, min_size=2, max_size=self._max, timeout=2.0, command_timeout=5.0,
                    max_inactive_connection_lifetime=600, init=_init_connection, reset=_keep_session,
                )
        return self._pool

    async def _run(self, what: str, method: str, query: str, *args: Any) -> Any:
        try:
            pool = await self._get_pool()
            return await getattr(pool, method)(query, *args)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                asyncpg.CannotConnectNowError, asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as exc:
            self._down(f"{what}: {type(exc).__name__}: {exc}")
            raise DatabaseUnavailable(self.detail) from exc

    def _down(self, detail: str) -> None:
        if self.ok:
            log.warning("postgres unavailable: %s", detail)
        self.ok = False
        self.detail = detail

    async def probe(self) -> bool:
        try:
            # The ledger's existence is part of health: without migrations nothing can be accepted.
            await self._run("probe", "fetchval", "SELECT count(*) FROM questions WHERE false")
        except DatabaseUnavailable:
            return False
        if not self.ok:
            log.info("postgres is available")
        self.ok, self.detail = True, "ok"
        return True

    async def lookup_or_claim(
        self, key: str, question: str, reference: str | None, now: datetime, claim: bool
    ) -> Lookup:
        """The validated answer of question ``key``, or the run this request claimed (then it must
        produce it) or coalesces on."""
        return await self._lookups.submit(Claim(key, question, reference, now, claim))

    async def _lookup_batch(self, claims: list[Claim]) -> list[Lookup]:
        # A statement cannot claim the same row twice: identical questions in one batch go in
        # once, and the others coalesce on the first.
        first: dict[str, Claim] = {}
        for item in claims:
            first.setdefault(item.question_key, item)
        unique = list(first.values())
        rows = await self._run(
            "lookup", "fetch", LOOKUP_OR_CLAIM,
            [c.question_key for c in unique], [c.question for c in unique], [c.reference_answer for c in unique],
            [c.submitted_at for c in unique], [c.claim for c in unique], self._requeue_after,
        )
        found = {row["question_key"]: row for row in rows}
        results = []
        for item in claims:
            row = found[item.question_key]
            if row["answer"] is not None:
                hit = CachedAnswer(
                    question_id=row["hit_id"], question=row["hit_question"], answer=row["answer"],
                    score=row["score"], status=row["status"], model=row["model"], attempt=row["attempt"] or 0,
                    completed_at=row["completed_at"],
                )
                results.append(Lookup(hit=hit, claimed=False))
            elif row["claimed"] and first[item.question_key] is item:
                results.append(Lookup(hit=None, claimed=True, question_id=row["question_id"], rearmed=row["rearmed"]))
            else:
                results.append(Lookup(hit=None, claimed=False, question_id=row["question_id"] if item.claim else None))
        return results

    async def release(self, question_id: str, submitted_at: datetime) -> None:
        """Delete a claim whose produce Kafka refused (only that claim: same submitted_at)."""
        await self._run(
            "release", "execute",
            "DELETE FROM questions WHERE question_id = $1 AND submitted_at = $2 AND produced_at IS NULL",
            question_id, submitted_at,
        )

    def mark_produced(self, question_id: str) -> None:
        """Note that Kafka acknowledged the question; written by the next batch."""
        self._produced.add(question_id)

    async def flush_produced(self) -> None:
        if not self._produced:
            return
        batch, self._produced = list(self._produced), set()
        try:
            await self._run(
                "confirm", "execute",
                "UPDATE questions SET produced_at = now() WHERE question_id = ANY($1::text[]) AND produced_at IS NULL",
                batch,
            )
        except DatabaseUnavailable:
            self._produced.update(batch)  # kept for the next batch

    async def mark_produced_forever(self) -> None:
        while True:
            await asyncio.sleep(MARK_PRODUCED_EVERY)
            await self.flush_produced()

    async def unconfirmed(self, older_than_seconds: float, exclude: set[str]) -> list[Unconfirmed]:
        rows = await self._run(
            "sweep", "fetch",
            """SELECT question_id, question, reference_answer, submitted_at FROM questions
               WHERE produced_at IS NULL AND terminal_at IS NULL
                 AND updated_at < now() - make_interval(secs => $1)
               ORDER BY submitted_at LIMIT 500""",
            older_than_seconds,
        )
        pending = self._produced | exclude
        return [
            Unconfirmed(r["question_id"], r["question"], r["reference_answer"], r["submitted_at"])
            for r in rows if r["question_id"] not in pending
        ]

    async def status(self, question_id: str) -> StoredStatus | None:
        row = await self._run("status", "fetchrow", STATUS, question_id)
        if row is None or (row["state"] is None and row["answer"] is None and row["reason"] is None):
            return None
        state = _stage(row["state"] or row["response_status"], row["answer"] is not None, row["reason"] is not None)
        hops = row["response_hops"] or row["failure_hops"] or []
        return StoredStatus(
            state=state, question=row["question"], submitted_at=row["submitted_at"],
            updated_at=row["updated_at"], terminal_at=row["terminal_at"], answer=row["answer"],
            score=row["score"], model=row["model"], attempt=row["attempt"], reason=row["reason"],
            hops=hops if isinstance(hops, list) else [],
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


async def _keep_session(connection: asyncpg.Connection) -> None:
    """No reset on release: the API keeps no session state, and a reset is one more round trip."""


async def _init_connection(connection: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await connection.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def _stage(state: str | None, answered: bool, failed: bool) -> Stage:
    if state is not None:
        try:
            return Stage(state)
        except ValueError:
            pass
    if answered:
        return Stage.validated
    return Stage.failed if failed else Stage.queued
