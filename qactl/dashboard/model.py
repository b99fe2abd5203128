"""What the live dashboard shows: one UI-free snapshot of the pipeline, and the probes it asks.

A ``Snapshot`` is one poll's picture: Kafka (end offsets, consumer group lag), Flink REST (job
state, checkpoints, records in/out), PostgreSQL (scores, regeneration outcomes), Redis (the
live stage of recent questions) and the LLM (which one; how busy the local model server is).
Each system answers through one probe protocol below; the real probes live beside this
module, ``DashboardSource`` (``source.py``) asks them.

Messages/s per topic need two snapshots; ``FlowTracker`` keeps the previous end offsets and a
short history of rates for the sparklines. Nothing here imports a UI toolkit: the TUI renders
snapshots, tests build them by hand.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from qactl.client.llm_server import ModelServerState
from services.common import topics as topic_names
from services.common.backend_choice import LlmRoute
from services.common.schemas import Hop, Stage
from services.common.settings import QactlSettings

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
    # Which member holds which partitions of ``topic``: (client id, partitions), by client id.
    assignment: tuple[tuple[str, tuple[int, ...]], ...] = ()


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
class LlmState:
    """The LLM the consumers call and, when it is the local model server, how busy it is."""

    route: LlmRoute
    server: ModelServerState | None = None  # None: not ours to ask (Ollama, OpenAI, the simulator)
    tokens_per_second: float | None = None  # the server's output over the last seconds, all slots


@dataclass(frozen=True)
class ChaosRun:
    """The `qactl chaos` experiment running now (its row in ``chaos_runs``)."""

    run_id: int
    experiment: str
    phase: str  # traffic, fault, recover, settle, check
    started_at: datetime
    in_flight_at_fault: int | None = None


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
    llm: LlmState | None = None
    chaos: ChaosRun | None = None  # a `qactl chaos` experiment under way
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


# --- what each backend must answer (the adapters of qactl/client/ are wrapped to these) ---


class KafkaProbe(Protocol):
    def end_offsets(self, topics: Sequence[str]) -> Mapping[str, int]: ...

    def group_lags(self) -> Sequence[GroupLag]: ...


class FlinkProbe(Protocol):
    def jobs(self) -> Sequence[FlinkJobRow]: ...


class QualityProbe(Protocol):
    """PostgreSQL: the durable record of scores and terminal states."""

    def score_histogram(self, edges: Sequence[float], threshold: float) -> ScoreHistogram: ...

    def regeneration_outcomes(self) -> RegenerationOutcomes: ...

    def running_chaos(self) -> ChaosRun | None:
        """The `qactl chaos` experiment under way, if any."""
        ...

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


class LlmProbe(Protocol):
    def llm(self) -> LlmState: ...


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
