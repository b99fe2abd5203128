"""Retry decisions: delays, jitter, Retry-After, limits (no Kafka needed)."""

import random
from datetime import datetime, timezone

import pytest

from services.common.schemas import ErrorInfo, ErrorKind
from services.common.settings import Policies
from services.retry.policy import KINDS, GiveUp, RetryKind, Schedule, decide

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
OVERLOAD = KINDS[RetryKind.overload]
QUOTA = KINDS[RetryKind.quota]


@pytest.mark.parametrize("retry_count", [0, 1, 2])
def test_overload_delay_is_base_to_the_n_within_jitter(retry_count: int) -> None:
    policies = Policies()
    nominal = 2.0**retry_count
    for seed in range(50):
        decision = decide(OVERLOAD, retry_count, None, policies, random.Random(seed), NOW)
        assert isinstance(decision, Schedule)
        assert nominal * 0.9 <= decision.delay_seconds <= nominal * 1.1
        assert decision.topic == f"retry-overload-delay-{retry_count}"
        assert (decision.due_at - NOW).total_seconds() == pytest.approx(decision.delay_seconds)


def test_delay_scale_shortens_every_delay() -> None:
    policies = Policies(delay_scale=0.1, overload_jitter_fraction=0.0)
    overload = decide(OVERLOAD, 2, None, policies, random.Random(0), NOW)
    quota = decide(QUOTA, 0, None, policies, random.Random(0), NOW)
    assert isinstance(overload, Schedule) and overload.delay_seconds == pytest.approx(0.4)
    assert isinstance(quota, Schedule) and quota.delay_seconds == pytest.approx(6.0)
    assert quota.topic == "retry-quota-delay"


def test_retry_after_is_honoured_when_longer_than_the_policy() -> None:
    policies = Policies(overload_jitter_fraction=0.0)
    longer = ErrorInfo(kind=ErrorKind.overload, status_code=429, retry_after_seconds=7)
    shorter = ErrorInfo(kind=ErrorKind.overload, status_code=429, retry_after_seconds=0.5)
    assert decide(OVERLOAD, 0, longer, policies, random.Random(0), NOW).delay_seconds == 7  # type: ignore[union-attr]
    assert decide(OVERLOAD, 0, shorter, policies, random.Random(0), NOW).delay_seconds == 1  # type: ignore[union-attr]


@pytest.mark.parametrize(("spec", "limit"), [(OVERLOAD, 3), (QUOTA, 5)])
def test_retries_used_up_give_up_with_the_reason(spec, limit: int) -> None:
    decision = decide(spec, limit, None, Policies(), random.Random(0), NOW)
    assert isinstance(decision, GiveUp)
    assert decision.reason == f"{spec.kind.value} retries exhausted ({limit})"
    assert isinstance(decide(spec, limit - 1, None, Policies(), random.Random(0), NOW), Schedule)


def test_one_delay_topic_per_overload_level() -> None:
    assert OVERLOAD.delay_topics(Policies(overload_max_retries=4)) == [
        "retry-overload-delay-0",
        "retry-overload-delay-1",
        "retry-overload-delay-2",
        "retry-overload-delay-3",
    ]
    assert QUOTA.delay_topics(Policies()) == ["retry-quota-delay"]
