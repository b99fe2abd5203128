"""What the live dashboard shows, collected in one UI-free snapshot.

``DashboardSource.snapshot()`` asks Kafka (end offsets, consumer group lag), Flink REST (job
state, checkpoints, records in/out), PostgreSQL (scores, regeneration outcomes) and Redis (the
live stage of recent questions) for one consistent-enough picture of the pipeline. Each part
is probed on its own: a backend that is down leaves its part empty and says why in
``Snapshot.errors``, and the rest of the picture still arrives.

Messages/s per topic need two snapshots; ``FlowTracker`` keeps the previous end offsets and a
short history of rates for the sparklines. Nothing here imports a UI toolkit: the TUI renders
snapshots, tests build them by hand.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Protocol, TypeVar

from services.common import topics as topic_names
from services.common.schemas import Hop, Stage
from services.common.settings import QactlSettings

log = logging.getLogger(__name__)

RATE_HISTORY = 60  # rate samples kept per topic: one minute at the default 1 s refresh


@dataclass(frozen=True)
class TopicFlow:
    topic: str
    end_offset: int  # summed over partitions: messages ever produced to the topic
    rate: float | None  # messages/s since the previous snapshot; None on the first one
    history: tuple[float, ...] = ()  # recent rates, oldest first
    kind: str = "contract"  # "contract" (the seven fixed topics) or "delay"


@dataclass(frozen=True)
class GroupLag:
    group: str
    topic: str
    lag: int
    members: int | None = None
    state: str = ""


@dataclass(frozen=True)
class RetryBucket:
    """How many retries of one kind were scheduled for one retry number (1 = first retry)."""

    kind: str  # "overload" or "quota"
    attempt: int | None  # None when the source cannot tell attempts apart
    count: int
    delay_seconds: float | None = None  # the policy's nominal delay for this attempt


@dataclass(frozen=True)
class ScoreHistogram:
    edges: tuple[float, ...]  # len(counts) + 1 bin edges, ascending
    counts: tuple[int, ...]
    threshold: float

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def above(self) -> int:
        """Scores above the threshold (bins are right-closed and aligned to it)."""
        return sum(c for lo, c in zip(self.edges, self.counts) if lo >= self.threshold)


@dataclass(frozen=True)
class RegenerationOutcomes:
    """Terminal states by the number of regenerations it took, and the mean score per attempt."""

    validated_by_attempt: Mapping[int, int] = field(default_factory=dict)  # attempt -> count
    low_quality: int = 0
    failed: int = 0
    mean_score_by_attempt: Mapping[int, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.validated_by_attempt.values()) + self.low_quality + self.failed


@dataclass(frozen=True)
class QuestionRow:
    question_id: str
    stage: Stage
    updated_at: datetime
    attempt: int = 0
    score: float | None = None
    question: str | None = None
    error: str | None = None

    @property
    def terminal(self) -> bool:
        return self.stage in (Stage.validated, Stage.low_quality, Stage.failed)


@dataclass(frozen=True)
class ComponentRow:
    name: str
    kind: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class FlinkJobRow:
    job_id: str
    name: str
    state: str
    duration_seconds: float | None = None
    checkpoints_completed: int | None = None
    checkpoints_failed: int | None = None
    last_checkpoint_seconds_ago: float | None = None
    last_checkpoint_duration_ms: float | None = None
    records_in: int | None = None
    records_out: int | None = None


@dataclass(frozen=True)
class Snapshot:
    """One poll's picture of the pipeline; everything a dashboard panel renders."""

    taken_at: datetime
    threshold: float
    delay_scale: float = 1.0
    poll_seconds: float = 0.0
    topics: tuple[TopicFlow, ...] = ()
    lags: tuple[GroupLag, ...] = ()
    retries: tuple[RetryBucket, ...] = ()
    scores: ScoreHistogram | None = None
    regenerations: RegenerationOutcomes | None = None
    questions: tuple[QuestionRow, ...] = ()
    components: tuple[ComponentRow, ...] = ()
    flink_jobs: tuple[FlinkJobRow, ...] = ()
    errors: Mapping[str, str] = field(default_factory=dict)  # part -> why it is missing

    @property
    def shortened_delays(self) -> bool:
        return self.delay_scale < 1.0


@dataclass(frozen=True)
class Journey:
    """A question's hops across topics, oldest first, for the journey screen."""

    question_id: str
    hops: tuple[Hop, ...]
    question: str | None = None
    stage: Stage | None = None


# --- what each backend must answer (the clients of qactl/client/ are adapted to these) ---


class KafkaProbe(Protocol):
    def end_offsets(self, topics: Sequence[str]) -> Mapping[str, int]: ...

    def group_lags(self) -> Sequence[GroupLag]: ...


class FlinkProbe(Protocol):
    def jobs(self) -> Sequence[FlinkJobRow]: ...


class QualityProbe(Protocol):
    """PostgreSQL: the durable record of scores and terminal states."""

    def score_histogram(self, edges: Sequence[float], threshold: float) -> ScoreHistogram: ...

    def regeneration_outcomes(self) -> RegenerationOutcomes: ...

    def questions(self, question_ids: Sequence[str]) -> Mapping[str, str]:
        """Question text by id, for the ids it knows."""
        ...

    def hops(self, question_id: str) -> Sequence[Hop]:
        """The hops stored with a terminal state (empty for a question still in flight)."""
        ...


class LiveProbe(Protocol):
    """Redis: where in-flight questions are right now."""

    def recent_questions(self, limit: int) -> Sequence[QuestionRow]: ...

    def hops(self, question_id: str) -> Sequence[Hop]: ...


HealthProbe = Callable[[], Sequence[ComponentRow]]


# --- pure helpers ---


def score_edges(threshold: float, width: float = 0.05, low: float = 0.0, high: float = 1.0) -> tuple[float, ...]:
    """Bin edges from ``low`` to ``high`` that put the threshold exactly on an edge."""
    below = int(round((threshold - low) / width))
    above = int(round((high - threshold) / width))
    return tuple(round(threshold + i * width, 6) for i in range(-below, above + 1))


def histogram(scores: Sequence[float], edges: Sequence[float], threshold: float) -> ScoreHistogram:
    """Bin scores into right-closed bins (lo, hi]: a score equal to the threshold does not
    validate, so it belongs below the threshold's edge. Values outside the edges go to the
    first or last bin so none is dropped."""
    counts = [0] * (len(edges) - 1)
    for score in scores:
        counts[min(max(bisect_left(edges, score) - 1, 0), len(counts) - 1)] += 1
    return ScoreHistogram(tuple(edges), tuple(counts), threshold)


class FlowTracker:
    """Turns successive end offsets into messages/s per topic, with a short rate history."""

    def __init__(self, history: int = RATE_HISTORY) -> None:
        self._previous: dict[str, int] = {}
        self._previous_at: float | None = None
        self._rates: dict[str, deque[float]] = {}
        self._history = history

    def update(self, offsets: Mapping[str, int], now: float, kinds: Mapping[str, str]) -> tuple[TopicFlow, ...]:
        elapsed = None if self._previous_at is None else now - self._previous_at
        flows = []
        for topic, end in offsets.items():
            rate: float | None = None
            if elapsed and elapsed > 0 and topic in self._previous:
                # A recreated topic restarts at 0: count that as no traffic, not negative traffic.
                rate = max(0, end - self._previous[topic]) / elapsed
                self._rates.setdefault(topic, deque(maxlen=self._history)).append(rate)
            flows.append(
                TopicFlow(topic, end, rate, tuple(self._rates.get(topic, ())), kinds.get(topic, "contract"))
            )
        self._previous = dict(offsets)
        self._previous_at = now
        return tuple(flows)


def retries_from_delay_topics(offsets: Mapping[str, int], settings: QactlSettings) -> tuple[RetryBucket, ...]:
    """Retries by type and attempt, read off the delay topics' end offsets.

    Overload retry n waits in ``retry-overload-delay-{n-1}``, so each level's end offset counts
    the n-th retries ever scheduled; quota retries share one topic (fixed delay), so its count
    covers every attempt.
    """
    policies = settings.policies
    buckets = []
    for level in range(policies.overload_max_retries):
        name = topic_names.overload_delay_topic(level).name
        if name in offsets:
            buckets.append(
                RetryBucket("overload", level + 1, offsets[name], policies.overload_delay_seconds(level))
            )
    if topic_names.QUOTA_DELAY.name in offsets:
        buckets.append(RetryBucket("quota", None, offsets[topic_names.QUOTA_DELAY.name], policies.quota_delay()))
    return tuple(buckets)


# --- the real source ---


class DashboardSource:
    """Collects snapshots from the running stack; one instance per dashboard, used by one thread."""

    def __init__(
        self,
        settings: QactlSettings,
        *,
        kafka: KafkaProbe | None = None,
        flink: FlinkProbe | None = None,
        quality: QualityProbe | None = None,
        live: LiveProbe | None = None,
        health: HealthProbe | None = None,
        health_interval: float = 15.0,
        recent_limit: int = 50,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._kafka = kafka
        self._flink = flink
        self._quality = quality
        self._live = live
        # Health probes open a connection per component and can take seconds when some are
        # down: they run on their own thread and cadence, and never hold up a poll.
        self._health = _HealthWatcher(health, health_interval) if health is not None else None
        self._recent_limit = recent_limit
        self._clock = clock
        self._flow = FlowTracker()
        self._polls = 0
        self._components: tuple[ComponentRow, ...] = ()
        self._question_text: dict[str, str] = {}
        self._edges = score_edges(settings.policies.quality_threshold)
        all_topics = topic_names.all_topics(settings.policies)
        self._topic_kinds = {
            t.name: ("contract" if t in topic_names.CONTRACT_TOPICS else "delay") for t in all_topics
        }

    @classmethod
    def for_stack(cls, settings: QactlSettings, probe_timeout: float = 2.0) -> "DashboardSource":
        """The source wired to the real backends of the stack described by ``settings``.

        ``probe_timeout`` bounds each backend request: a backend slower than that shows as
        unreachable for one poll rather than holding the refresh.
        """
        from qactl.client import dashboard_backends as backends

        return cls(
            settings,
            kafka=backends.KafkaAdminProbe(settings, probe_timeout),
            flink=backends.FlinkRestProbe(settings, probe_timeout),
            quality=backends.PostgresQualityProbe(settings, probe_timeout),
            live=backends.live_probe(settings),
            health=backends.health_probe(settings),
        )

    def snapshot(self) -> Snapshot:
        started = self._clock()
        parts = _Parts()
        policies = self.settings.policies
        offsets: Mapping[str, int] = {}
        flows: tuple[TopicFlow, ...] = ()
        lags: tuple[GroupLag, ...] = ()
        if (kafka := self._kafka) is not None:
            offsets = parts.get("kafka", lambda: dict(kafka.end_offsets(list(self._topic_kinds))), {})
            if offsets:
                flows = self._flow.update(offsets, self._clock(), self._topic_kinds)
            lags = parts.get("lag", lambda: tuple(kafka.group_lags()), ())
        jobs: tuple[FlinkJobRow, ...] = ()
        if (flink := self._flink) is not None:
            jobs = parts.get("flink", lambda: tuple(flink.jobs()), ())
        scores: ScoreHistogram | None = None
        regenerations: RegenerationOutcomes | None = None
        if (quality := self._quality) is not None:
            scores = parts.get(
                "postgres", lambda: quality.score_histogram(self._edges, policies.quality_threshold), None
            )
            if "postgres" not in parts.errors:
                regenerations = parts.get("postgres", quality.regeneration_outcomes, None)
        questions: tuple[QuestionRow, ...] = ()
        if (live := self._live) is not None:
            questions = parts.get("redis", lambda: tuple(live.recent_questions(self._recent_limit)), ())
            questions = self._with_question_text(questions, parts)
        if self._health is not None:
            self._components, health_error = self._health.latest()
            if health_error:
                parts.errors["health"] = health_error
        self._polls += 1
        return Snapshot(
            taken_at=datetime.now(timezone.utc).astimezone(),  # shown as local time
            threshold=policies.quality_threshold,
            delay_scale=policies.delay_scale,
            poll_seconds=self._clock() - started,
            topics=flows,
            lags=lags,
            retries=retries_from_delay_topics(offsets, self.settings),
            scores=scores,
            regenerations=regenerations,
            questions=questions,
            components=self._components,
            flink_jobs=jobs,
            errors=dict(parts.errors),
        )

    def _with_question_text(self, rows: tuple[QuestionRow, ...], parts: "_Parts") -> tuple[QuestionRow, ...]:
        """Fill in question text from PostgreSQL, asked once per id (it never changes)."""
        missing = [r.question_id for r in rows if r.question is None and r.question_id not in self._question_text]
        if missing and (quality := self._quality) is not None and "postgres" not in parts.errors:
            self._question_text.update(parts.get("postgres", lambda: dict(quality.questions(missing)), {}))
        if len(self._question_text) > 10 * self._recent_limit:
            keep = {r.question_id for r in rows}
            self._question_text = {k: v for k, v in self._question_text.items() if k in keep}
        return tuple(
            replace(r, question=self._question_text[r.question_id])
            if r.question is None and r.question_id in self._question_text
            else r
            for r in rows
        )

    def journey(self, question_id: str) -> Journey:
        """Hops from Redis while the status lives there, else those stored in PostgreSQL.

        May run on another thread than ``snapshot``: the probes it uses are thread-safe.
        """
        hops: tuple[Hop, ...] = ()
        if self._live is not None:
            hops = tuple(self._live.hops(question_id))
        question = self._question_text.get(question_id)
        if self._quality is not None:
            if not hops:
                hops = tuple(self._quality.hops(question_id))
            if question is None:
                question = self._quality.questions([question_id]).get(question_id)
        return Journey(question_id, hops, question=question, stage=hops[-1].stage if hops else None)

    def close(self) -> None:
        if self._health is not None:
            self._health.stop()
        for backend in (self._kafka, self._flink, self._quality, self._live):
            closer = getattr(backend, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception:  # closing is best effort on the way out
                    log.debug("closing %r failed", backend, exc_info=True)


T = TypeVar("T")


class _HealthWatcher:
    """Runs the component health probe every ``interval`` seconds on a daemon thread, one
    round at a time; a snapshot takes whatever the last finished round found."""

    def __init__(self, probe: HealthProbe, interval: float) -> None:
        self._probe = probe
        self._interval = interval
        self._lock = threading.Lock()
        self._rows: tuple[ComponentRow, ...] = ()
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def latest(self) -> tuple[tuple[ComponentRow, ...], str | None]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dashboard-health", daemon=True)
            self._thread.start()
        with self._lock:
            return self._rows, self._error

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rows, error = tuple(self._probe()), None
            except Exception as exc:
                rows, error = None, _one_line(exc)
            with self._lock:
                if rows is not None:
                    self._rows = rows
                self._error = error
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()


class _Parts:
    """Runs each part of a snapshot on its own, so one dead backend does not blank the rest."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def get(self, part: str, call: Callable[[], T], default: T) -> T:
        try:
            return call()
        except Exception as exc:
            self.errors.setdefault(part, _one_line(exc))
            log.debug("dashboard part %s failed", part, exc_info=True)
            return default


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
