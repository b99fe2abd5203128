"""What the demo reads and resets on the running stack, besides the storage API and the gateway.

- the policies the running services use (the retry services report their ``delay_scale`` in
  their ``/health``: a stack started with the demo profile shortens delays, whatever the
  settings of this `qactl` process say);
- ``forget``: a case's earlier runs of its questions are removed (stored answer, failure and
  score rows, the questions ledger, the Redis cache entry and live status), so that asking again
  runs the whole path instead of answering from the store;
- the end offsets of ``questions-pending`` (a cache hit must leave them unchanged) and whether
  an answer has reached the Redis cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import psycopg2
import redis

from qactl.errors import QactlError, StackNotRunning
from services.common import topics
from services.common.cache import cache_key
from services.common.settings import Policies, QactlSettings
from services.common.status import hops_key, status_key

# A question without a terminal state, updated more recently than this, is taken as still in
# flight: forgetting it would let its old outcome land in the middle of the new run.
IN_FLIGHT_WINDOW = timedelta(minutes=15)


@dataclass(frozen=True)
class RunningPolicies:
    policies: Policies
    source: str  # where delay_scale came from


def running_policies(settings: QactlSettings) -> RunningPolicies:
    """The CLI's policies with the ``delay_scale`` the running retry services report."""
    try:
        from qactl.runtime.services import components

        found = {c.name: c for c in components(settings)}
    except Exception:  # the runtime table is optional here; the settings still tell something
        found = {}
    for name in ("retry-overload", "retry-quota"):
        component = found.get(name)
        if component is None:
            continue
        for spec in component.processes():
            health = spec.health() if spec.health is not None else None
            scale = health.data.get("delay_scale") if health is not None else None
            if isinstance(scale, (int, float)):
                policies = settings.policies.model_copy(update={"delay_scale": float(scale)})
                return RunningPolicies(policies, f"reported by {spec.name}")
    return RunningPolicies(settings.policies, "from this qactl's settings (retry services not reachable)")


@dataclass
class ForgetReport:
    rows: dict[str, int] = field(default_factory=dict)
    redis_keys: int = 0
    stale_in_flight: list[str] = field(default_factory=list)

    @property
    def anything(self) -> bool:
        return bool(sum(self.rows.values()) or self.redis_keys)


FORGET_TABLES = ("score_history", "processing_metrics", "failed_questions", "responses", "questions")


def forget(settings: QactlSettings, question_ids: list[str]) -> ForgetReport:
    """Remove every trace of earlier runs of these questions; refuse if one is still in flight."""
    report = ForgetReport()
    try:
        conn = psycopg2.connect(settings.postgres.url, connect_timeout=5, application_name="qactl-demo")
    except psycopg2.OperationalError as exc:
        raise StackNotRunning(f"PostgreSQL is not reachable ({str(exc).strip().splitlines()[0]}); start the stack with `qactl up`") from None
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT question_id, state, updated_at FROM questions "
                "WHERE question_id = ANY(%s) AND terminal_at IS NULL FOR UPDATE",
                (question_ids,),
            )
            now = datetime.now(timezone.utc)
            for question_id, state, updated_at in cur.fetchall():
                if now - updated_at < IN_FLIGHT_WINDOW:
                    raise QactlError(
                        f"question {question_id} is still in flight ({state} since {updated_at:%H:%M:%S}); "
                        "wait for it to end (`qactl ask` shows it) or run the case with --keep"
                    )
                report.stale_in_flight.append(question_id)
            for table in FORGET_TABLES:
                cur.execute(f"DELETE FROM {table} WHERE question_id = ANY(%s)", (question_ids,))
                report.rows[table] = cur.rowcount
    except psycopg2.Error as exc:
        raise QactlError(f"could not forget the case's earlier runs: {str(exc).strip().splitlines()[0]}") from None
    finally:
        conn.close()
    client = redis.Redis.from_url(settings.redis.connection_url, socket_timeout=3, socket_connect_timeout=3)
    try:
        keys = [k for qid in question_ids for k in (cache_key(qid), status_key(qid), hops_key(qid))]
        report.redis_keys = int(client.delete(*keys))
    except redis.RedisError as exc:
        raise StackNotRunning(f"Redis is not reachable ({exc}); the cache entries could not be forgotten") from None
    finally:
        client.close()
    return report


def cached(settings: QactlSettings, question_id: str) -> bool:
    client = redis.Redis.from_url(settings.redis.connection_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.exists(cache_key(question_id)))
    except redis.RedisError:
        return False
    finally:
        client.close()


def pending_end_offsets(settings: QactlSettings) -> dict[int, int]:
    from qactl.client.kafka_admin import end_offsets

    try:
        return end_offsets(settings.kafka.bootstrap, topics.QUESTIONS_PENDING.name)
    except Exception as exc:  # librdkafka raises KafkaException and friends
        raise StackNotRunning(f"Kafka is not reachable at {settings.kafka.bootstrap}: {exc}") from None
