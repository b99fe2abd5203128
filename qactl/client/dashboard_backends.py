"""The real backends of the dashboard: the stack's clients adapted to ``dashboard``'s probes.

Each probe answers one question of ``DashboardSource`` from one system. The Kafka, Flink REST
and PostgreSQL connections come from the shared clients of ``qactl.client``; what is specific
to the dashboard (which numbers, which SQL, following Redis events) lives here.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis
from pydantic import ValidationError

from qactl.client.dashboard import (
    ComponentRow,
    FlinkJobRow,
    GroupLag,
    HealthProbe,
    QuestionRow,
    RegenerationOutcomes,
    ScoreHistogram,
)
from services.common.schemas import ErrorInfo, Hop
from services.common.settings import QactlSettings
from services.common.status import EVENTS_CHANNEL, StatusTracker, hops_key, status_key

log = logging.getLogger(__name__)


# --- operator actions the dashboard can trigger ---


class DemoFirer(Protocol):
    def fire(self, case: str) -> str:
        """Run one demo case (or "all") to its end; a one-line outcome for a notification."""
        ...


class FaultInjector(Protocol):
    def inject(self, fault: str) -> str:
        """Inject "503-burst", "429", "402" or "degrade" into the LLM gateway."""
        ...

    def clear(self) -> str: ...


@dataclass
class Actions:
    demo: DemoFirer | None = None
    faults: FaultInjector | None = None


# --- Redis: the live stage of recent questions ---


def describe_error(error: ErrorInfo | None) -> str | None:
    if error is None:
        return None
    return f"{error.kind.value} {error.status_code}" if error.status_code else error.kind.value


class RedisLiveProbe:
    """Recent questions from the status tracker: seeded once by a scan, then followed by events.

    The status hashes and hop lists that every stage writes are the truth; the pub/sub channel
    only says what changed, so a poll costs one non-blocking read of the channel instead of a
    scan of every question. After a lost connection the probe seeds itself again.
    """

    def __init__(self, settings: QactlSettings, client: redis.Redis | None = None, scan_limit: int = 5000) -> None:
        self._redis = client or redis.Redis.from_url(
            settings.redis.connection_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        self._tracker = StatusTracker(settings, self._redis)
        self._pubsub: redis.client.PubSub | None = None
        self._rows: OrderedDict[str, QuestionRow] = OrderedDict()  # least recently changed first
        self._scan_limit = scan_limit

    def recent_questions(self, limit: int) -> Sequence[QuestionRow]:
        try:
            if self._pubsub is None:
                self._follow(limit)
            self._drain()
        except redis.RedisError:
            self._drop_pubsub()
            raise
        keep = max(limit, 1) * 10
        while len(self._rows) > keep:
            self._rows.popitem(last=False)
        newest = sorted(self._rows.values(), key=lambda r: r.updated_at, reverse=True)
        return newest[:limit]

    def hops(self, question_id: str) -> Sequence[Hop]:
        return self._tracker.hops(question_id)

    def _follow(self, limit: int) -> None:
        # Subscribe before the scan: an event in between is then seen twice, never missed.
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(EVENTS_CHANNEL)
        self._pubsub = pubsub
        self._rows.clear()
        ids = []
        prefix = status_key("")
        for key in self._redis.scan_iter(match=f"{prefix}*", count=1000):
            ids.append((key.decode() if isinstance(key, bytes) else key)[len(prefix):])
            if len(ids) >= self._scan_limit:
                break
        pipe = self._redis.pipeline(transaction=False)
        for qid in ids:
            pipe.hget(status_key(qid), "updated_at")
        stamps = pipe.execute()
        dated = sorted(
            ((s.decode() if isinstance(s, bytes) else s, qid) for s, qid in zip(stamps, ids) if s),
            reverse=True,
        )[:limit]
        pipe = self._redis.pipeline(transaction=False)
        for _, qid in dated:
            pipe.lindex(hops_key(qid), -1)
        for (_, qid), raw in reversed(list(zip(dated, pipe.execute()))):
            if raw:
                self._apply(qid, raw)

    def _drain(self, most: int = 20_000) -> None:
        assert self._pubsub is not None
        for _ in range(most):
            message = self._pubsub.get_message(timeout=0)
            if message is None:
                return
            if message.get("type") != "message":
                continue
            try:
                event = json.loads(message["data"])
                self._apply(event["question_id"], event["hop"])
            except (ValueError, KeyError, TypeError, ValidationError):
                log.debug("unreadable status event %r", message.get("data"))

    def _apply(self, question_id: str, raw_hop: object) -> None:
        if isinstance(raw_hop, (bytes, str)):
            hop = Hop.model_validate_json(raw_hop)
        else:
            hop = Hop.model_validate(raw_hop)
        previous = self._rows.pop(question_id, None)
        if previous is not None and previous.updated_at > hop.at:
            self._rows[question_id] = previous  # a late duplicate of an older hop changes nothing
            return
        self._rows[question_id] = QuestionRow(
            question_id=question_id,
            stage=hop.stage,
            updated_at=hop.at,
            attempt=hop.attempt,
            score=hop.score if hop.score is not None else (previous.score if previous else None),
            question=previous.question if previous else None,
            error=describe_error(hop.error),
        )

    def _drop_pubsub(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except redis.RedisError:
                pass
        self._pubsub = None

    def close(self) -> None:
        self._drop_pubsub()
        self._redis.close()


# --- component health: the probes of `qactl status` ---


def health_probe(settings: QactlSettings) -> HealthProbe:
    """The probes of `qactl status`, on one Stack built once (building it imports every part)."""
    stack = None

    def probe() -> Sequence[ComponentRow]:
        nonlocal stack
        from qactl.runtime.stack import Stack

        stack = stack or Stack(settings)
        return [ComponentRow(s.name, s.kind, s.ok, s.health.detail) for s in stack.status()]

    return probe


def live_probe(settings: QactlSettings) -> RedisLiveProbe:
    return RedisLiveProbe(settings)


# --- Kafka: end offsets and consumer group lag, one admin client for the dashboard's life ---


class KafkaAdminProbe:
    """End offsets of every declared topic and the lag of every consumer group.

    One ``AdminClient`` is kept (a new one per poll would cost a connection and threads each
    second); requests for all groups are issued together and then awaited.
    """

    def __init__(self, settings: QactlSettings, timeout: float = 2.0, groups_every: int = 10) -> None:
        from services.common.topics import all_topics

        self._bootstrap = settings.kafka.bootstrap
        self._timeout = timeout
        self._partitions = {t.name: t.partitions for t in all_topics(settings.policies)}
        self._client: object | None = None
        self._ends: dict[tuple[str, int], int] = {}
        self._groups: list[str] = []
        self._groups_every = groups_every  # new groups are rare: list them every few polls
        self._polls = 0

    def _admin(self):  # type: ignore[no-untyped-def]
        from qactl.client import kafka_admin

        if self._client is None:
            self._client = kafka_admin.admin(self._bootstrap, self._timeout)
        return self._client

    def end_offsets(self, topics: Sequence[str]) -> Mapping[str, int]:
        from confluent_kafka import KafkaException, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        request = {
            TopicPartition(topic, p): OffsetSpec.latest()
            for topic in topics
            for p in range(self._partitions.get(topic, 1))
        }
        futures = self._admin().list_offsets(request, request_timeout=self._timeout)
        totals: dict[str, int] = {}
        first_error: Exception | None = None
        for tp, future in futures.items():
            try:
                offset = future.result(self._timeout).offset
            except KafkaException as exc:  # a topic not created yet: leave it out
                first_error = first_error or exc
                continue
            self._ends[(tp.topic, tp.partition)] = offset
            totals[tp.topic] = totals.get(tp.topic, 0) + offset
        if not totals and first_error is not None:
            raise first_error
        return totals

    def group_lags(self) -> Sequence[GroupLag]:
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        client = self._admin()
        if self._polls % self._groups_every == 0 or not self._groups:
            listed = client.list_consumer_groups(request_timeout=self._timeout).result(self._timeout)
            self._groups = sorted(g.group_id for g in listed.valid)
        self._polls += 1
        if not self._groups:
            return []
        described = client.describe_consumer_groups(self._groups, request_timeout=self._timeout)
        offsets = {
            group: client.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group)], request_timeout=self._timeout
            )[group]
            for group in self._groups
        }
        committed: dict[str, list[object]] = {}
        for group, future in offsets.items():
            partitions = future.result(self._timeout).topic_partitions or []
            committed[group] = [tp for tp in partitions if tp.offset >= 0]
        # Ends of partitions this poll did not already ask for (topics outside the declared ones).
        unknown = {
            (tp.topic, tp.partition)
            for tps in committed.values()
            for tp in tps
            if (tp.topic, tp.partition) not in self._ends
        }
        if unknown:
            request = {TopicPartition(t, p): OffsetSpec.latest() for t, p in unknown}
            for tp, future in client.list_offsets(request, request_timeout=self._timeout).items():
                self._ends[(tp.topic, tp.partition)] = future.result(self._timeout).offset
        lags = []
        for group in self._groups:
            members, state = None, ""
            try:
                description = described[group].result(self._timeout)
                members, state = len(description.members), str(description.state.name).lower()
            except Exception:  # the description is a nicety; the lag is what matters
                pass
            per_topic: dict[str, int] = {}
            for tp in committed.get(group, []):
                end = self._ends.get((tp.topic, tp.partition), tp.offset)
                per_topic[tp.topic] = per_topic.get(tp.topic, 0) + max(0, end - tp.offset)
            for topic, lag in sorted(per_topic.items()):
                lags.append(GroupLag(group, topic, lag, members, state))
        return lags


# --- Flink REST: job state, checkpoints, records in and out ---


class FlinkRestProbe:
    """Active jobs (or, when none is, the most recent ones, so a failed job stays visible)."""

    def __init__(self, settings: QactlSettings, timeout: float = 2.0) -> None:
        import httpx

        from qactl.client.flink_rest import FlinkRest

        # One HTTP client for the dashboard's life: a new one per request (and its TLS context)
        # costs tens of milliseconds of CPU, every second.
        client = httpx.Client(timeout=timeout)

        class _Rest(FlinkRest):
            def _request(self, method: str, path: str, **kwargs: object) -> object:
                response = client.request(method, f"{self.base_url}{path}", **kwargs)  # type: ignore[arg-type]
                response.raise_for_status()
                return response.json() if response.content else None

            def checkpoints(self, jid: str) -> dict:  # type: ignore[type-arg]
                return self._request("GET", f"/jobs/{jid}/checkpoints")  # type: ignore[return-value]

        self._client = client
        self._rest = _Rest(settings.flink.rest, timeout)

    def jobs(self) -> Sequence[FlinkJobRow]:
        summaries = self._rest.jobs()
        active = [j for j in summaries if j.active]
        shown = active or sorted(summaries, key=lambda j: j.start_time, reverse=True)[:2]
        return [self._row(job) for job in shown]

    def _row(self, job) -> FlinkJobRow:  # type: ignore[no-untyped-def]
        records_in = records_out = None
        try:
            records_in, records_out = records_through(self._rest.job(job.jid))
        except Exception:
            log.debug("no vertex metrics for %s", job.jid, exc_info=True)
        completed = failed = None
        ago = duration = None
        try:
            checkpoints = self._rest.checkpoints(job.jid)
            counts = checkpoints.get("counts", {})
            completed, failed = counts.get("completed"), counts.get("failed")
            latest = (checkpoints.get("latest") or {}).get("completed") or {}
            if latest.get("latest_ack_timestamp"):
                ago = max(0.0, time.time() - latest["latest_ack_timestamp"] / 1000)
            duration = latest.get("end_to_end_duration")
        except Exception:  # checkpointing off or the job just started
            log.debug("no checkpoint stats for %s", job.jid, exc_info=True)
        return FlinkJobRow(
            job_id=job.jid,
            name=job.name,
            state=job.state,
            duration_seconds=job.duration_ms / 1000 if job.duration_ms else None,
            checkpoints_completed=completed,
            checkpoints_failed=failed,
            last_checkpoint_seconds_ago=ago,
            last_checkpoint_duration_ms=duration,
            records_in=records_in,
            records_out=records_out,
        )

    def close(self) -> None:
        self._client.close()


def records_through(job_detail: Mapping[str, object]) -> tuple[int | None, int | None]:
    """Records a job took in (sent on by its source vertices) and let out (received by its last
    vertices, where the sinks run), from Flink's job detail with its plan."""
    vertices = {v["id"]: v for v in job_detail.get("vertices", [])}  # type: ignore[union-attr]
    nodes = (job_detail.get("plan") or {}).get("nodes", [])  # type: ignore[union-attr]
    if not vertices or not nodes:
        return None, None
    fed = {edge["id"] for node in nodes for edge in node.get("inputs", [])}
    sources = [n["id"] for n in nodes if not n.get("inputs")]
    sinks = [n["id"] for n in nodes if n["id"] not in fed]

    def metric(vid: str, name: str) -> int:
        return int((vertices.get(vid, {}).get("metrics") or {}).get(name, 0))

    records_in = sum(metric(v, "write-records") for v in sources)
    # A job of one chained vertex is both: what it read from Kafka never crosses the network.
    records_out = sum(metric(v, "read-records") for v in sinks if v not in sources)
    return records_in, records_out if any(v not in sources for v in sinks) else None


# --- PostgreSQL: scores, outcomes, question text ---

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

# Right-closed bins (lo, hi] like dashboard.histogram; numeric keeps 0.8 / 0.05 exactly 16.
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
        from qactl.client import pg

        if self._conn is None or self._conn.closed:
            self._conn = pg.connect(self._dsn, self._timeout)
            self._conn.autocommit = True  # plain reads: no transaction left open between polls
            with self._conn.cursor() as cur:
                cur.execute("SET statement_timeout = %s", (int(self._timeout * 1000),))
        return self._conn.cursor()

    def _query(self, sql: str, params: object = None) -> list[tuple]:  # type: ignore[type-arg]
        import psycopg2

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
