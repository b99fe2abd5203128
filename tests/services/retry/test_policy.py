"""Retry decisions: delays, jitter, Retry-After, limits (no Kafka needed)."""

import random
from datetime import datetime, timezone

import pytest

from services.common.schemas import ErrorInfo, ErrorKind
from services.common.settings import Policies
from services.retry.policy import KINDS, GiveUp, Reroute, RetryKind, Schedule, decide

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


@pytest.mark.parametrize("retry_after", [3600.0, 1e12, 1.7976931348623157e308])
def test_a_retry_after_over_the_overload_cap_takes_the_quota_path(retry_after: float) -> None:
    """An hour would hold every later retry of the level behind it; 1e12 s overflowed the due time."""
    error = ErrorInfo(kind=ErrorKind.overload, status_code=503, retry_after_seconds=retry_after)
    decision = decide(OVERLOAD, 0, error, Policies(), random.Random(0), NOW)
    assert isinstance(decision, Reroute) and decision.kind is RetryKind.quota
    assert decision.reason == (
        f"Retry-After {retry_after:g} s is over the overload cap of 20 s: the question takes the quota path"
    )


@pytest.mark.parametrize("retry_after", [3600.0, 1e12])
def test_a_retry_after_over_the_quota_cap_goes_to_the_dead_letter(retry_after: float) -> None:
    error = ErrorInfo(kind=ErrorKind.quota, status_code=429, retry_after_seconds=retry_after)
    decision = decide(QUOTA, 0, error, Policies(), random.Random(0), NOW)
    assert decision == GiveUp(f"Retry-After {retry_after:g} s is over the quota cap of 300 s")


def test_a_retry_after_up_to_the_cap_is_honoured_and_the_caps_are_policies() -> None:
    policies = Policies(overload_max_retry_after_seconds=90, quota_max_retry_after_seconds=600)
    at_cap = ErrorInfo(kind=ErrorKind.overload, status_code=429, retry_after_seconds=90)
    overload = decide(OVERLOAD, 0, at_cap, policies, random.Random(0), NOW)
    assert isinstance(overload, Schedule) and overload.delay_seconds == 90
    quota = decide(QUOTA, 0, at_cap.model_copy(update={"retry_after_seconds": 600}), policies, random.Random(0), NOW)
    assert isinstance(quota, Schedule) and quota.delay_seconds == 600
    assert isinstance(decide(OVERLOAD, 0, at_cap.model_copy(update={"retry_after_seconds": 90.5}), policies,
                             random.Random(0), NOW), Reroute)


def test_retries_used_up_win_over_a_long_retry_after() -> None:
    error = ErrorInfo(kind=ErrorKind.overload, status_code=503, retry_after_seconds=1e12)
    assert decide(OVERLOAD, 3, error, Policies(), random.Random(0), NOW) == GiveUp("overload retries exhausted (3)")
