"""What a retry service decides for one failed LLM call: wait how long on which delay topic, or give up.

Pure functions of the message and the policies, so the decision is tested without Kafka.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from services.common import topics
from services.common.schemas import ErrorInfo, Stage, utcnow
from services.common.settings import Policies


class RetryKind(StrEnum):
    overload = "overload"
    quota = "quota"


@dataclass(frozen=True)
class KindSpec:
    """Everything that differs between retry-overload and retry-quota."""

    kind: RetryKind
    error_topic: str
    stage: Stage
    service: str  # process name, also the error consumer's group id

    @property
    def delay_group(self) -> str:
        return f"{self.service}-delay"

    def max_retries(self, policies: Policies) -> int:
        if self.kind is RetryKind.overload:
            return policies.overload_max_retries
        return policies.quota_max_retries

    def delay_topic(self, retry_count: int) -> str:
        if self.kind is RetryKind.overload:
            return topics.overload_delay_topic(retry_count).name
        return topics.QUOTA_DELAY.name

    def delay_topics(self, policies: Policies) -> list[str]:
        if self.kind is RetryKind.overload:
            return [topics.overload_delay_topic(i).name for i in range(policies.overload_max_retries)]
        return [topics.QUOTA_DELAY.name]


KINDS: dict[RetryKind, KindSpec] = {
    RetryKind.overload: KindSpec(
        RetryKind.overload, topics.LLM_OVERLOAD.name, Stage.retrying_overload, "retry-overload"
    ),
    RetryKind.quota: KindSpec(RetryKind.quota, topics.LLM_QUOTA.name, Stage.retrying_quota, "retry-quota"),
}


@dataclass(frozen=True)
class Schedule:
    """Retry number ``retry_count + 1`` after ``delay_seconds``, waiting on ``topic``."""

    retry_count: int
    delay_seconds: float
    due_at: datetime
    topic: str


@dataclass(frozen=True)
class GiveUp:
    reason: str


def retry_delay_seconds(
    kind: RetryKind,
    retry_count: int,
    error: ErrorInfo | None,
    policies: Policies,
    rng: random.Random,
) -> float:
    """The policy delay (overload: base**n with +-jitter; quota: fixed), or Retry-After if longer.

    Retry-After is the server's own demand, so it is honoured as given, not scaled.
    """
    if kind is RetryKind.overload:
        nominal = policies.overload_delay_seconds(retry_count)
        spread = nominal * policies.overload_jitter_fraction
        delay = nominal + rng.uniform(-spread, spread)
    else:
        delay = policies.quota_delay()
    if error is not None and error.retry_after_seconds is not None:
        delay = max(delay, error.retry_after_seconds)
    return max(0.0, delay)


def decide(
    spec: KindSpec,
    retry_count: int,
    error: ErrorInfo | None,
    policies: Policies,
    rng: random.Random,
    now: datetime | None = None,
) -> Schedule | GiveUp:
    """``retry_count``: retries of this kind already made for the question."""
    limit = spec.max_retries(policies)
    if retry_count >= limit:
        return GiveUp(f"{spec.kind.value} retries exhausted ({limit})")
    delay = retry_delay_seconds(spec.kind, retry_count, error, policies, rng)
    due_at = (now or utcnow()) + timedelta(seconds=delay)
    return Schedule(retry_count, delay, due_at, spec.delay_topic(retry_count))
