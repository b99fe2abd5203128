"""The storage API: ``POST /query``, ``GET /status/{id}``, ``GET /metrics``, ``GET /health``.

``POST /query`` looks for a validated answer of the question (Redis cache, then PostgreSQL; the
question is its text and its reference answer, ``question_key``) and answers 200 with it;
otherwise it records a run of the question in ``questions`` (one row per run, so identical
questions in flight coalesce into one pipeline run, and a question asked again after its last
run ended low_quality or failed gets a new run with its own id), produces it to
``questions-pending``, waits for Kafka's acknowledgement and answers 202. A question is never
answered 202 unless it is in Kafka, and never left recorded as queued when it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from typing import Any

from services.common import topics
from services.common.schemas import TERMINAL_STAGES, Hop, QuestionMessage, Stage, question_key, utcnow
from services.common.settings import QactlSettings
from services.storage_api.inputs import BadInput, QueryRequest, parse_query
from services.storage_api.metrics import ApiMetrics
from services.storage_api.producer import AsyncProducer, KafkaUnavailable
from services.storage_api.redis_view import RedisView
from services.storage_api.replies import Reply, accepted, error, hit, unavailable
from services.storage_api.store import DatabaseUnavailable, QuestionStore, StoredStatus

log = logging.getLogger(__name__)

PROBE_SECONDS = 1.0
# An accepted question whose produce was never confirmed (the API died in between) is produced
# again after this long; a duplicate run is absorbed downstream (terminal states are written once).
REQUEUE_AFTER_SECONDS = 30.0


class StorageApi:
    """The API's dependencies and request logic; FastAPI routes call into it."""

    def __init__(self, settings: QactlSettings) -> None:
        self.settings = settings
        self.metrics = ApiMetrics()
        self.redis = RedisView(settings.redis.connection_url)
        self.store = QuestionStore(settings.postgres.url)
        self.producer = AsyncProducer(settings, topics.QUESTIONS_PENDING.name)
        # Produces this process has in flight, so a coalesced request can wait for the outcome.
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.metrics.watch_gc()
        self.producer.start(asyncio.get_running_loop())
        await self._probe()
        self._tasks = [
            asyncio.create_task(self._probe_forever(), name="probe"),
            asyncio.create_task(self._requeue_forever(), name="requeue"),
            asyncio.create_task(self.store.mark_produced_forever(), name="mark-produced"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.to_thread(self.producer.close)
        await self.store.flush_produced()
        await self.store.close()
        await self.redis.drain()
        await self.redis.close()
        self.metrics.unwatch_gc()

    # --- POST /query -------------------------------------------------------------------------

    async def query(self, body: bytes) -> tuple[str, Reply]:
        try:
            request = parse_query(body, self.settings.api)
        except BadInput as bad:
            return "invalid", error(bad.status, bad.code, bad.detail)
        key = question_key(request.question, request.reference_answer)

        started = time.perf_counter()
        cached = await self.redis.cached_answer(key)
        self.metrics.cache_step.observe(time.perf_counter() - started)
        if cached is not None and cached.status == Stage.validated.value:
            return "cache_hit", hit(cached, "cache")

        claim = not self.producer.known_down
        now = utcnow()
        started = time.perf_counter()
        try:
            lookup = await self.store.lookup_or_claim(key, request.question, request.reference_answer, now, claim=claim)
            self.metrics.database_step.observe(time.perf_counter() - started)
        except DatabaseUnavailable as exc:
            return "unavailable", unavailable(f"PostgreSQL is unavailable ({exc}); the question was not accepted, retry later")
        if lookup.hit is not None:
            self.redis.fill_cache(lookup.hit, self.settings.redis.cache_ttl_seconds)
            return "db_hit", hit(lookup.hit, "database")
        if not claim:
            return "unavailable", unavailable(
                f"Kafka is unavailable ({self.producer.health.detail}); the question was not accepted, retry later"
            )
        question_id = lookup.question_id
        assert question_id is not None  # a claim that found no answer always names a run
        if not lookup.claimed:
            return await self._coalesce(question_id)
        # Registered before any await: an identical request coalescing from now on waits for
        # this produce's outcome instead of answering 202 for a question Kafka might refuse.
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[question_id] = done
        if lookup.rearmed:
            # Claimed again after its produce was never confirmed: the old live status goes.
            await self.redis.forget_status(question_id)
        return await self._produce(question_id, request, now, done)

    async def _coalesce(self, question_id: str) -> tuple[str, Reply]:
        """The question is already accepted: answer with its id once its produce is confirmed."""
        pending = self._inflight.get(question_id)
        if pending is not None:
            try:
                await asyncio.shield(pending)
            except KafkaUnavailable as exc:
                return "unavailable", unavailable(f"{exc}; the question was not accepted, retry later")
        return "coalesced", accepted(question_id, coalesced=True)

    async def _produce(
        self, question_id: str, request: QueryRequest, now: datetime, done: asyncio.Future[None]
    ) -> tuple[str, Reply]:
        hop = Hop(stage=Stage.queued, topic=topics.QUESTIONS_PENDING.name, at=now)
        message = QuestionMessage(
            question_id=question_id,
            question=request.question,
            reference_answer=request.reference_answer,
            submitted_at=now,
            timestamps={Stage.queued.value: now},
            hops=[hop],
        )
        # Written behind the request (batched); it never overrides a later stage a consumer set.
        self.redis.record_first_hop(question_id, hop)
        started = time.perf_counter()
        try:
            await self.producer.send(message, question_id)
        except KafkaUnavailable as exc:
            done.set_exception(exc)
            done.exception()  # retrieved here, so an unawaited future does not log a warning
            await self._release(question_id, now)
            return "unavailable", unavailable(f"{exc}; the question was not accepted, retry later")
        finally:
            self._inflight.pop(question_id, None)
        self.metrics.kafka_step.observe(time.perf_counter() - started)
        done.set_result(None)
        self.store.mark_produced(question_id)
        return "accepted", accepted(question_id, coalesced=False)

    async def _release(self, question_id: str, submitted_at: datetime) -> None:
        """Undo an acceptance Kafka refused, so that asking again produces again."""
        await self.redis.forget_status(question_id)
        try:
            await self.store.release(question_id, submitted_at)
        except DatabaseUnavailable as exc:
            # The row stays unconfirmed; the requeue sweep produces it once Kafka is back.
            log.error("could not release %s after a failed produce (%s); it will be requeued", question_id, exc)

    # --- GET /status/{id} --------------------------------------------------------------------

    async def status(self, question_id: str) -> tuple[str, Reply]:
        live = await self.redis.live_status(question_id)
        stored: StoredStatus | None = None
        database_error: str | None = None
        try:
            stored = await self.store.status(question_id)
        except DatabaseUnavailable as exc:
            database_error = str(exc)
        if stored is None and live is None:
            if database_error is not None:
                return "unavailable", unavailable(f"PostgreSQL is unavailable ({database_error}) and Redis knows nothing of {question_id}")
            return "not_found", error(404, "not_found", f"no question with id {question_id}")
        live_stage, hops = live if live is not None else (None, [])
        state = _current_state(stored, live_stage)
        payload: dict[str, Any] = {
            "question_id": question_id,
            "state": state.value,
            "terminal": state in TERMINAL_STAGES,
            "hops": [h.model_dump(mode="json", exclude_none=True) for h in sorted(hops, key=lambda h: h.at)],
        }
        if stored is not None:
            payload.update(stored.public())
            if not hops and stored.hops:
                payload["hops"] = stored.hops
        if database_error is not None:
            payload["warning"] = f"PostgreSQL is unavailable ({database_error}); live state only"
        elif not self.redis.ok:
            payload["warning"] = "Redis is unavailable; hops of a question in flight are not shown"
        return "found", Reply(200, payload)

    # --- GET /health -------------------------------------------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
        kafka = self.producer.health
        deps = {
            "kafka": {"ok": kafka.ok, "detail": kafka.detail, "required": True},
            "postgres": {"ok": self.store.ok, "detail": self.store.detail, "required": True},
            "redis": {"ok": self.redis.ok, "detail": self.redis.detail, "required": False},
        }
        if not (kafka.ok and self.store.ok):
            status, code = "unavailable", 503
            missing = [name for name in ("kafka", "postgres") if not deps[name]["ok"]]
            summary = f"not accepting questions: {', '.join(missing)} unavailable"
        elif not self.redis.ok:
            status, code, summary = "degraded", 200, "serving without the Redis cache and live status"
        else:
            status, code, summary = "ok", 200, "accepting questions"
        return code, {"ok": code == 200, "status": status, "summary": summary, "dependencies": deps}

    # --- background ----------------------------------------------------------------------------

    async def _probe(self) -> None:
        await asyncio.gather(self.redis.probe(), self.store.probe())
        for name, up in (("kafka", self.producer.health.ok), ("postgres", self.store.ok), ("redis", self.redis.ok)):
            self.metrics.dependency_up.labels(name).set(1 if up else 0)

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(PROBE_SECONDS)
            try:
                await self._probe()
            except Exception:  # a probe must never kill the API
                log.exception("dependency probe failed")

    async def _requeue_forever(self) -> None:
        while True:
            await asyncio.sleep(REQUEUE_AFTER_SECONDS / 3)
            try:
                await self.requeue_unconfirmed(REQUEUE_AFTER_SECONDS)
            except Exception:
                log.exception("requeue sweep failed")

    async def requeue_unconfirmed(self, older_than_seconds: float) -> int:
        """Produce again accepted questions whose produce was never confirmed; returns how many."""
        if not (self.producer.health.ok and self.store.ok):
            return 0
        rows = await self.store.unconfirmed(older_than_seconds, exclude=set(self._inflight))
        count = 0
        for row in rows:
            hop = Hop(stage=Stage.queued, topic=topics.QUESTIONS_PENDING.name, note="requeued: first produce unconfirmed")
            message = QuestionMessage(
                question_id=row.question_id,
                question=row.question,
                reference_answer=row.reference_answer,
                submitted_at=row.submitted_at,
                timestamps={Stage.queued.value: row.submitted_at},
                hops=[hop],
            )
            try:
                await self.producer.send(message, row.question_id)
            except KafkaUnavailable as exc:
                log.warning("requeue of %s failed: %s", row.question_id, exc)
                break
            await self.redis.record_hop(row.question_id, hop)
            self.store.mark_produced(row.question_id)
            self.metrics.requeued.inc()
            count += 1
        if count:
            log.warning("requeued %d accepted question(s) whose produce was never confirmed", count)
        return count


def _current_state(stored: StoredStatus | None, live: Stage | None) -> Stage:
    """PostgreSQL's terminal state wins; otherwise the live stage; otherwise what was stored."""
    if stored is not None and stored.state in TERMINAL_STAGES:
        return stored.state
    if live is not None and live not in TERMINAL_STAGES:
        return live
    if stored is not None:
        return stored.state
    # Redis says terminal but PostgreSQL has no row yet: the persister has not written it.
    return live if live is not None else Stage.queued
