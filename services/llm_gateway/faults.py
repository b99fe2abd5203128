"""Fault rules set through the admin API, and the gateway's call statistics.

A rule fires for the next ``count`` matching calls, or on a fraction ``rate`` of them drawn
from a generator seeded by (gateway seed, rule id), so a run is reproducible. ``match`` limits
a rule to questions containing that text (compared normalized), so a demo can target one
question while others flow normally. The first rule (in order of creation) that fires wins.
Everything here runs on the event loop thread, so no lock is needed.

``hang``: the call is accepted and never answered while the rule set stands (the LLM hung, not
refusing); clearing the rules releases the held calls, which are then answered normally.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from services.common.schemas import normalize_question

FaultKind = Literal["503", "429", "402", "insufficient_quota", "timeout", "hang", "degrade"]
ERROR_KINDS: frozenset[str] = frozenset({"503", "429", "402", "insufficient_quota"})


class FaultRule(BaseModel):
    kind: FaultKind
    count: int | None = Field(default=None, ge=1, description="Fire for the next N matching calls.")
    rate: float | None = Field(default=None, gt=0, le=1, description="Fire on this fraction of calls.")
    match: str | None = Field(default=None, min_length=1, description="Only questions containing this.")
    retry_after: float | None = Field(default=None, ge=0, description="Retry-After seconds on errors.")
    seconds: float | None = Field(default=None, gt=0, description="timeout: how long to stall first.")

    @model_validator(mode="after")
    def _count_or_rate(self) -> "FaultRule":
        if (self.count is None) == (self.rate is None):
            raise ValueError("give exactly one of count or rate")
        return self


class ActiveRule(FaultRule):
    id: int
    remaining: int | None = None
    fired: int = 0


class FaultBook:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._rules: list[ActiveRule] = []
        self._generators: dict[int, random.Random] = {}
        self._next_id = 1
        self._released = asyncio.Event()

    def add(self, rule: FaultRule) -> ActiveRule:
        active = ActiveRule(**rule.model_dump(), id=self._next_id, remaining=rule.count)
        self._generators[active.id] = random.Random(f"{self.seed}:{active.id}")
        self._next_id += 1
        self._rules.append(active)
        return active

    def rules(self) -> list[ActiveRule]:
        return list(self._rules)

    def clear(self) -> int:
        cleared = len(self._rules)
        self._rules.clear()
        self._generators.clear()
        self._released.set()  # calls held by a hang rule go on
        self._released = asyncio.Event()
        return cleared

    async def held(self) -> None:
        """Wait until the rules are cleared (a ``hang`` rule holds its calls until then)."""
        await self._released.wait()

    def take(self, question: str) -> ActiveRule | None:
        """The rule that applies to this call, if any; count rules are used up as they fire."""
        normalized = normalize_question(question)
        for rule in self._rules:
            if rule.match is not None and normalize_question(rule.match) not in normalized:
                continue
            if rule.rate is not None:
                if self._generators[rule.id].random() >= rule.rate:
                    continue
            else:
                assert rule.remaining is not None
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._rules.remove(rule)
            rule.fired += 1
            return rule
        return None


class CallStats:
    """Calls by outcome, overall and per normalized question."""

    def __init__(self) -> None:
        self.by_outcome: Counter[str] = Counter()
        self.by_question: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def record(self, question: str | None, outcome: str) -> None:
        self.by_outcome[outcome] += 1
        if question is not None:
            self.by_question[normalize_question(question)][outcome] += 1

    def reset(self) -> None:
        self.by_outcome.clear()
        self.by_question.clear()

    def snapshot(self) -> dict[str, object]:
        return {
            "total": sum(self.by_outcome.values()),
            "by_outcome": dict(self.by_outcome),
            "by_question": {q: dict(c) for q, c in self.by_question.items()},
        }
