"""The dashboard's source of snapshots: asks every probe, survives the ones that are down.

``DashboardSource.snapshot()`` probes each part on its own: a backend that is down leaves its
part empty and says why in ``Snapshot.errors``, and the rest of the picture still arrives.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from typing import TypeVar

from qactl.dashboard.model import (
    ChaosRun,
    ComponentRow,
    FlinkJobRow,
    FlinkProbe,
    FlowTracker,
    GroupLag,
    HealthProbe,
    Journey,
    KafkaProbe,
    LiveProbe,
    LlmProbe,
    LlmState,
    QualityProbe,
    QuestionRow,
    RegenerationOutcomes,
    ScoreHistogram,
    Snapshot,
    TopicFlow,
    retries_from_delay_topics,
    score_edges,
)
from services.common import topics as topic_names
from services.common.schemas import Hop
from services.common.settings import QactlSettings

log = logging.getLogger(__name__)


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
        llm: LlmProbe | None = None,
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
        self._llm = llm
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
        from qactl.dashboard.flink_probe import FlinkRestProbe
        from qactl.dashboard.health_probe import health_probe
        from qactl.dashboard.kafka_probe import KafkaAdminProbe
        from qactl.dashboard.llm_probe import ModelServerProbe
        from qactl.dashboard.postgres_probe import PostgresQualityProbe
        from qactl.dashboard.redis_probe import RedisLiveProbe

        return cls(
            settings,
            kafka=KafkaAdminProbe(settings, probe_timeout),
            flink=FlinkRestProbe(settings, probe_timeout),
            quality=PostgresQualityProbe(settings, probe_timeout),
            live=RedisLiveProbe(settings),
            llm=ModelServerProbe(settings, min(probe_timeout, 1.0)),
            health=health_probe(settings),
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
        chaos: ChaosRun | None = None
        if (quality := self._quality) is not None:
            scores = parts.get(
                "postgres", lambda: quality.score_histogram(self._edges, policies.quality_threshold), None
            )
            if "postgres" not in parts.errors:
                regenerations = parts.get("postgres", quality.regeneration_outcomes, None)
            if "postgres" not in parts.errors:
                chaos = parts.get("postgres", quality.running_chaos, None)
        questions: tuple[QuestionRow, ...] = ()
        if (live := self._live) is not None:
            questions = parts.get("redis", lambda: tuple(live.recent_questions(self._recent_limit)), ())
            questions = self._with_question_text(questions, parts)
        llm: LlmState | None = None
        if (llm_probe := self._llm) is not None:
            llm = parts.get("llm", llm_probe.llm, None)
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
            llm=llm,
            chaos=chaos,
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
