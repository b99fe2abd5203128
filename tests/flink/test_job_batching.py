"""The score job's batching function (flink/job.py's ScoreInBatches) across a restore, with the
real gate and model; Flink's keyed state and timer service are played by small fakes holding one
shard's values, so a restore can bring back the state without the timer (what a TaskManager kill
did in CI: every later answer of that shard stayed buffered, and again after the savepoint).
The whole job across real restores is tested in tests/integration/test_flink_state.py."""

from __future__ import annotations

import json

from flink.gate import JobConfig
from flink.job import TAGS, ScoreInBatches
from services.common import topics
from services.common.knowledge_base import load_knowledge_base
from services.common.schemas import LLMAnswer, encode
from services.common.settings import Policies

MAX_WAIT_MS = 100
SHARD = 1


class State:
    """One shard's value state or list state, kept in a dict that outlives a worker (the checkpoint)."""

    def __init__(self, store: dict, name: str) -> None:
        self.store, self.name = store, name

    def value(self):
        return self.store.get(self.name)

    def update(self, value) -> None:
        self.store[self.name] = value

    def get(self):
        return list(self.store.get(self.name, []))

    def add(self, value) -> None:
        self.store.setdefault(self.name, []).append(value)

    def clear(self) -> None:
        self.store.pop(self.name, None)


class RuntimeContext:
    def __init__(self, store: dict) -> None:
        self.store = store

    def get_state(self, descriptor):
        return State(self.store, descriptor.name)

    get_list_state = get_state


class TimerService:
    def __init__(self, now: int) -> None:
        self.now, self.timers = now, set()

    def current_processing_time(self) -> int:
        return self.now

    def register_processing_time_timer(self, at: int) -> None:
        self.timers.add(at)

    def delete_processing_time_timer(self, at: int) -> None:
        self.timers.discard(at)


class Context:
    def __init__(self, timers: TimerService) -> None:
        self.timers = timers

    def get_current_key(self) -> int:
        return SHARD

    def timer_service(self) -> TimerService:
        return self.timers


def worker(store: dict) -> ScoreInBatches:
    config = JobConfig(bootstrap_servers="unused:9092", redis_url=None, policies=Policies())
    function = ScoreInBatches(config.model_dump_json(), batch_size=16, max_wait_ms=MAX_WAIT_MS)
    function.open(RuntimeContext(store))
    return function


def answer(index: int) -> str:
    entry = load_knowledge_base().entries[index]
    return encode(LLMAnswer(
        question_id=f"q-batching-{index}", question=entry.question, reference_answer=entry.reference_answer,
        answer=entry.reference_answer, model="qactl-sim", backend="simulated", llm_latency_ms=1.0,
    )).decode()  # fmt: skip


def fire_due(function: ScoreInBatches, timers: TimerService) -> list[str]:
    """Fire every timer that is due, as Flink does; the question ids the function routed."""
    routed = []
    for at in sorted(t for t in timers.timers if t <= timers.now):
        timers.timers.discard(at)
        for tag, row in function.on_timer(at, Context(timers)):
            assert tag is TAGS[topics.VALIDATED.name]  # the reference itself: it validates
            routed.append(json.loads(row[1])["question_id"])
    return routed


def test_an_answer_is_scored_after_the_wait_and_its_timer_is_the_only_one() -> None:
    store: dict = {}
    function, timers = worker(store), TimerService(now=1_000)
    assert list(function.process_element(answer(0), Context(timers))) == []
    assert list(function.process_element(answer(1), Context(timers))) == []
    assert timers.timers == {1_000 + MAX_WAIT_MS}  # one timer for the batch, not one per answer
    timers.now += MAX_WAIT_MS
    assert fire_due(function, timers) == ["q-batching-0", "q-batching-1"]
    assert store == {} and timers.timers == set()


def test_after_a_restore_that_lost_the_timer_the_next_answer_flushes_the_shard() -> None:
    store: dict = {}
    before, timers = worker(store), TimerService(now=1_000)
    list(before.process_element(answer(0), Context(timers)))
    assert store["pending_count"] == 1 and timers.timers

    # The checkpoint holds the buffered answer (store); the restored job came back without its timer.
    after, restored = worker(store), TimerService(now=timers.now + 60_000)
    list(after.process_element(answer(1), Context(restored)))
    assert restored.timers, "the answer that came after the restore waits for no timer"
    restored.now += MAX_WAIT_MS
    assert fire_due(after, restored) == ["q-batching-0", "q-batching-1"]


def test_a_timer_restored_with_the_state_flushes_it_and_a_late_one_finds_nothing() -> None:
    store: dict = {}
    before, timers = worker(store), TimerService(now=1_000)
    list(before.process_element(answer(0), Context(timers)))

    after, restored = worker(store), TimerService(now=timers.now + 60_000)
    restored.timers = set(timers.timers)  # this time the timer came back with the state
    assert fire_due(after, restored) == ["q-batching-0"]
    assert list(after.on_timer(restored.now, Context(restored))) == []  # nothing buffered, nothing sent
