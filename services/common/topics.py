"""Kafka topic names and partition counts: declared here once, read everywhere."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import Policies


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    purpose: str


QUESTIONS_PENDING = Topic("questions-pending", 3, "new questions, error retries, regenerations")
LLM_SUCCESS = Topic("llm-responses-success", 3, "answers the LLM returned (HTTP 200)")
LLM_OVERLOAD = Topic("llm-responses-error-overload", 2, "503 / 429 / timeouts")
LLM_QUOTA = Topic("llm-responses-error-quota", 2, "402 and exhausted quota")
VALIDATED = Topic("validated-responses", 2, "score above threshold")
LOW_QUALITY = Topic("low-quality-responses", 1, "still below threshold after the last regeneration")
DEAD_LETTER = Topic(
    "questions-dead-letter", 1, "retries exhausted, poison messages, unrecoverable errors"
)

CONTRACT_TOPICS: tuple[Topic, ...] = (
    QUESTIONS_PENDING,
    LLM_SUCCESS,
    LLM_OVERLOAD,
    LLM_QUOTA,
    VALIDATED,
    LOW_QUALITY,
    DEAD_LETTER,
)


def overload_delay_topic(retry_count: int) -> Topic:
    """Delay level for overload retry ``retry_count + 1`` (one topic per level, FIFO by due time)."""
    return Topic(f"retry-overload-delay-{retry_count}", 1, f"overload retries waiting, level {retry_count}")


QUOTA_DELAY = Topic("retry-quota-delay", 1, "quota retries waiting (fixed delay)")


def delay_topics(policies: Policies) -> tuple[Topic, ...]:
    levels = tuple(overload_delay_topic(i) for i in range(policies.overload_max_retries))
    return levels + (QUOTA_DELAY,)


def all_topics(policies: Policies) -> tuple[Topic, ...]:
    return CONTRACT_TOPICS + delay_topics(policies)


@dataclass(frozen=True)
class Replication:
    """How every topic is replicated on a cluster of ``brokers``: the one rule, read everywhere."""

    factor: int
    min_insync: int

    @classmethod
    def for_brokers(cls, brokers: int) -> Replication:
        """Replication factor min(3, brokers); min.insync.replicas 2 from 3 brokers on, so that
        with acks=all a write survives the loss of one broker and one broker may be down."""
        factor = max(1, min(3, brokers))
        return cls(factor=factor, min_insync=2 if factor >= 3 else 1)
