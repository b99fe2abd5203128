"""What a retry service decides for one failed LLM call: wait how long on which delay topic, or give up.

Pure functions of the message and the policies, so the decision is tested without Kafka.

``Retry-After`` is honoured up to a cap per kind (``Policies.<kind>_max_retry_after_seconds``),
because a delay topic is FIFO: a retry waiting at the head of a level holds every later retry of
that level behind it, so no wait on a level may be much longer than the level's own delay.
Beyond the cap:

- an overload error takes the quota path (``Reroute``): the error goes on to the quota error
  topic as it is, where retry-quota decides with its own, longer cap and its own retry limit;
- a quota error goes to the dead letter (``GiveUp``): the server asked for a longer wait than
  the pipeline keeps a question open for.

Either way the hop or the dead letter says which Retry-After was over which cap.
"""

from __future__ import annotations

import math
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
    over_cap: RetryKind | None  # whose path a Retry-After over this kind's cap takes; None: the dead letter

    @property
    def delay_group(self) -> str:
        return f"{self.service}-delay"

    def max_retries(self, policies: Policies) -> int:
        if self.kind is RetryKind.overload:
            return policies.overload_max_retries
        return policies.quota_max_retries

    def max_retry_after(self, policies: Policies) -> float:
        if self.kind is RetryKind.overload:
            return policies.overload_max_retry_after_seconds
        return policies.quota_max_retry_after_seconds

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
        RetryKind.overload, topics.LLM_OVERLOAD.name, Stage.retrying_overload, "retry-overload", RetryKind.quota
    ),
    RetryKind.quota: KindSpec(RetryKind.quota, topics.LLM_QUOTA.name, Stage.retrying_quota, "retry-quota", None),
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


@dataclass(frozen=True)
class Reroute:
    """Leave this kind's retries: the failed call goes on to ``kind``'s error topic, unchanged."""

    kind: RetryKind
    reason: str


def retry_after_of(error: ErrorInfo | None) -> float | None:
    """The server's Retry-After in seconds, if it sent a usable one (NaN is none)."""
    if error is None or error.retry_after_seconds is None or math.isnan(error.retry_after_seconds):
        return None
    return max(0.0, error.retry_after_seconds)


def retry_delay_seconds(
    kind: RetryKind,
    retry_count: int,
    error: ErrorInfo | None,
    policies: Policies,
    rng: random.Random,
) -> float:
    """The policy delay (overload: base**n with +-jitter; quota: fixed), or Retry-After if longer.

    Retry-After is the server's own demand, so it is honoured as given, not scaled; ``decide``
    never lets one over the kind's cap reach here.
    """
    if kind is RetryKind.overload:
        nominal = policies.overload_delay_seconds(retry_count)
        spread = nominal * policies.overload_jitter_fraction
        delay = nominal + rng.uniform(-spread, spread)
    else:
        delay = policies.quota_delay()
    retry_after = retry_after_of(error)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return max(0.0, delay)


def decide(
    spec: KindSpec,
    retry_count: int,
    error: ErrorInfo | None,
    policies: Policies,
    rng: random.Random,
    now: datetime | None = None,
) -> Schedule | GiveUp | Reroute:
    """``retry_count``: retries of this kind already made for the question."""
    limit = spec.max_retries(policies)
    if retry_count >= limit:
        return GiveUp(f"{spec.kind.value} retries exhausted ({limit})")
    retry_after = retry_after_of(error)
    cap = spec.max_retry_after(policies)
    if retry_after is not None and retry_after > cap:
        over = f"Retry-After {retry_after:g} s is over the {spec.kind.value} cap of {cap:g} s"
        if spec.over_cap is None:
            return GiveUp(over)
        return Reroute(spec.over_cap, f"{over}: the question takes the {spec.over_cap.value} path")
    delay = retry_delay_seconds(spec.kind, retry_count, error, policies, rng)
    due_at = (now or utcnow()) + timedelta(seconds=delay)
    return Schedule(retry_count, delay, due_at, spec.delay_topic(retry_count))
