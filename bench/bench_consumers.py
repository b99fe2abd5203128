"""llm-consumer throughput against its ideal: R replicas x K concurrent calls / L seconds per call.

The built-in gateway answers every call after exactly L ms; the consumers run as real processes
declared as `qactl up` declares them. For each replica count, the consumers start, drain any
backlog, and then ``rounds x R x K`` distinct questions are produced at once; throughput is
questions / (first question produced -> last answer on ``llm-responses-success``), so start-up
of the calls, Kafka round trips and the tail all count against it.

That drain figure mixes two things: how well the consumers keep their call slots busy, and how
evenly the partitions share the backlog among the replicas. So the bench also reports the
sustained throughput: calls completed per second while every replica still had questions
waiting (from the first produce until the first replica starts its last call), a call that
straddles that moment counting for the part of it inside. That is the rate the group keeps up
under a lasting load, which is what R*K/L promises.

Two more columns separate the consumers from the LLM: the average call time the consumers
observed (L plus the gateway's own overhead under load), and how busy the R*K call slots were
(summed call time / (R*K*elapsed)) -- the consumers' own efficiency.

    python bench/bench_consumers.py                        # L=1000 ms, K=8, R=1 2 3
    python bench/bench_consumers.py --latency-ms 500 --concurrency 16 --replicas 3

Runs on its own ports (QACTL_BENCH_PORT_BASE, default 24500) and state dir, starting Kafka and
Redis through the runtime if they are not running there; ``--down`` stops them afterwards.

Partitions: the backlog is spread round-robin over the 3 partitions of questions-pending, so
that the figure measures the consumers and not the luck of the key hash (with ``--keyed`` the
question id decides, as in production, and the fullest partition sets the pace). With R=2 the
replicas split the 3 partitions 2:1 (fixed by the contract), so the replica holding one
partition runs out of work first and waits while the other drains two: the drain figure is
capped at 3/4 of R*K/L, the sustained one is not; replica counts that divide 3 (1, 3) are not
capped either way.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from confluent_kafka import Consumer, Producer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qactl.client import kafka_admin  # noqa: E402
from qactl.runtime import kafka, redis  # noqa: E402
from qactl.runtime.services import components  # noqa: E402
from qactl.runtime.stack import Stack  # noqa: E402
from qactl.runtime.supervisor import ProcessSpec, Supervisor  # noqa: E402
from qactl.runtime import credentials  # noqa: E402
from services.common import topics  # noqa: E402
from services.common.schemas import LLMAnswer, QuestionMessage, encode, question_id_for  # noqa: E402
from services.common.settings import QactlSettings, load_settings  # noqa: E402
from services.llm_consumer.consumer import GROUP  # noqa: E402


def bench_settings(latency_ms: float, concurrency: int, replicas: int) -> QactlSettings:
    base = int(os.environ.get("QACTL_BENCH_PORT_BASE", "24500"))
    return credentials.with_stored(load_settings(
        state_dir=os.environ.get("QACTL_BENCH_STATE_DIR", f"/tmp/qactl-bench-consumers-{base}"),
        kafka={"port": base + 92, "controller_port": base + 93},
        redis={"port": base + 379},
        gateway={"port": base + 435, "latency_ms_min": latency_ms, "latency_ms_max": latency_ms},
        services={"metrics_base_port": base + 300, "llm_consumer_replicas": replicas},
        llm={"backend": "gateway", "concurrency": concurrency, "timeout_seconds": 30.0},
    ), create=True)  # the state dir's credentials, as `qactl up` uses them


def specs(settings: QactlSettings, name: str) -> list[ProcessSpec]:
    (component,) = [c for c in components(settings) if c.name == name]
    return list(component.processes())


def wait_balanced(consumers: list[ProcessSpec], timeout: float = 60.0) -> list[set[int]]:
    """Until every partition is assigned and every replica has its share (the group settled);
    returns each replica's partitions."""
    partitions = topics.QUESTIONS_PENDING.partitions
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assigned = [httpx.get(f"http://127.0.0.1:{s.ports[0].number}/health", timeout=2).json()["assigned"] for s in consumers]
        if sum(map(len, assigned)) == partitions and all(len(a) >= partitions // len(consumers) for a in assigned):
            time.sleep(1.0)  # and stays so
            return [{int(name.rsplit("[", 1)[1].rstrip("]")) for name in names} for names in assigned]
        time.sleep(0.2)
    raise SystemExit(f"the consumer group did not settle: {assigned}")


def wait_drained(settings: QactlSettings, timeout: float = 120.0) -> None:
    """Until the group has no lag, so leftovers of earlier runs do not count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lag = kafka_admin.consumer_group_lag(settings.kafka.bootstrap, GROUP)
        if lag and all(v == 0 for k, v in lag.items() if k[0] == topics.QUESTIONS_PENDING.name):
            return
        if not lag and not any(kafka_admin.end_offsets(settings.kafka.bootstrap, topics.QUESTIONS_PENDING.name).values()):
            return
        time.sleep(0.5)
    raise SystemExit("the consumers did not drain the backlog in time")


@dataclass
class Call:
    partition: int
    ended: float  # epoch seconds: when the consumer produced the outcome
    seconds: float  # the call's own duration, as the consumer measured it

    @property
    def started(self) -> float:
        return self.ended - self.seconds


def sustained_rate(calls: list[Call], started: float, assignment: list[set[int]]) -> tuple[float, float]:
    """(calls/s while every replica had work, that window's length in seconds).

    The window closes when the first replica starts its last call: from then on some of its
    slots idle for want of questions, not of speed. A call overlapping the window's end counts
    for the share of it that lies inside, so bursts of calls ending together do not make the
    figure depend on where the window happens to close.
    """
    last_start = []
    for partitions in assignment:
        mine = [c.started for c in calls if c.partition in partitions]
        if mine:
            last_start.append(max(mine))
    end = min(last_start)
    done = 0.0
    for call in calls:
        if call.ended <= end:
            done += 1.0
        elif call.started < end:
            done += (end - call.started) / call.seconds
    return done / (end - started), end - started


def measure(settings: QactlSettings, count: int, keyed: bool) -> tuple[float, list[Call], float]:
    """(seconds from first produce to last answer, the calls answered as the consumers saw
    them, the epoch time of the first produce)."""
    run = uuid.uuid4().hex[:8]
    texts = [f"bench {run} #{i}: what is Apache Kafka?" for i in range(count)]
    ids = {question_id_for(t) for t in texts}
    watch = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": f"bench-{run}", "enable.auto.commit": False})
    ends = kafka_admin.end_offsets(settings.kafka.bootstrap, topics.LLM_SUCCESS.name)
    watch.assign([TopicPartition(topics.LLM_SUCCESS.name, p, o) for p, o in ends.items()])
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap, "linger.ms": 5})
    partition_of: dict[str, int] = {}

    def delivered(err: object, msg: object) -> None:
        if err is None:
            partition_of[msg.key().decode()] = msg.partition()  # type: ignore[attr-defined]

    started = time.time()
    partitions = topics.QUESTIONS_PENDING.partitions
    for i, text in enumerate(texts):
        message = QuestionMessage(question_id=question_id_for(text), question=text)
        # Round-robin over partitions unless --keyed: see the module docstring.
        where = {} if keyed else {"partition": i % partitions}
        producer.produce(
            topics.QUESTIONS_PENDING.name,
            value=encode(message),
            key=message.question_id.encode(),
            on_delivery=delivered,
            **where,
        )
        producer.poll(0)
    producer.flush(30)
    seen: set[str] = set()
    calls: list[Call] = []
    last = started
    deadline = time.monotonic() + 300
    while seen != ids and time.monotonic() < deadline:
        for msg in watch.consume(num_messages=500, timeout=0.5):
            if msg.error():
                continue
            key = msg.key().decode()
            if key in ids and key not in seen:
                seen.add(key)
                ended = msg.timestamp()[1] / 1000
                last = max(last, ended)
                seconds = LLMAnswer.model_validate_json(msg.value()).llm_latency_ms / 1000
                calls.append(Call(partition_of[key], ended, seconds))
    watch.close()
    return last - started, calls, started


def run_one(latency_ms: float, concurrency: int, replicas: int, rounds: int, keyed: bool) -> dict[str, float]:
    settings = bench_settings(latency_ms, concurrency, replicas)
    supervisor = Supervisor(settings)
    consumers = specs(settings, "llm-consumer")
    try:
        for spec in consumers:
            supervisor.start(spec)
        for spec in consumers:
            supervisor.wait_healthy(spec)
        assignment = wait_balanced(consumers)
        wait_drained(settings)
        count = rounds * replicas * concurrency
        seconds, calls, started = measure(settings, count, keyed)
    finally:
        for spec in consumers:
            supervisor.stop(spec.name, timeout=30)
    ideal = replicas * concurrency / (latency_ms / 1000)
    answered = len(calls)
    measured = answered / seconds
    sustained, window = sustained_rate(calls, started, assignment)
    call_seconds = sum(c.seconds for c in calls)
    return {"R": replicas, "K": concurrency, "L_ms": latency_ms, "questions": count, "answered": answered,
            "seconds": seconds, "measured": measured, "ideal": ideal, "fraction": measured / ideal,
            "sustained": sustained, "sustained_fraction": sustained / ideal, "window": window,
            "observed_L_ms": 1000 * call_seconds / max(1, answered),
            "occupancy": call_seconds / (replicas * concurrency * seconds)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=float, default=1000.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=30, help="questions per call slot")
    parser.add_argument("--down", action="store_true", help="stop the bench stack afterwards")
    parser.add_argument(
        "--keyed", action="store_true", help="partition by question id (as the API does) instead of round-robin"
    )
    args = parser.parse_args()

    settings = bench_settings(args.latency_ms, args.concurrency, max(args.replicas))
    stack = Stack(settings, components=[*kafka.components(settings), *redis.components(settings)])
    stack.up()
    supervisor = Supervisor(settings)
    (gateway,) = specs(settings, "llm-gateway")
    supervisor.stop(gateway.name)  # a gateway left from another run may have another latency
    supervisor.start(gateway)
    supervisor.wait_healthy(gateway)
    rows = []
    try:
        for replicas in args.replicas:
            rows.append(run_one(args.latency_ms, args.concurrency, replicas, args.rounds, args.keyed))
            row = rows[-1]
            print(
                f"R={row['R']} K={row['K']} L={row['L_ms']:.0f} ms: {row['answered']}/{row['questions']} answered "
                f"in {row['seconds']:.2f} s -> {row['measured']:.1f} calls/s, ideal R*K/L = {row['ideal']:.1f}/s, "
                f"{row['fraction']:.1%} of ideal (drain); sustained {row['sustained']:.1f} calls/s over the first "
                f"{row['window']:.1f} s, {row['sustained_fraction']:.1%} of ideal; "
                f"calls took {row['observed_L_ms']:.0f} ms on average, "
                f"call slots busy {row['occupancy']:.1%} of the time",
                flush=True,
            )
    finally:
        supervisor.stop(gateway.name)
        if args.down:
            stack.down()
    print()
    print(
        "| R | K | L (ms) | questions | drain s | drain calls/s | ideal R*K/L | drain fraction "
        "| sustained calls/s | sustained fraction | observed call ms | slots busy |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['R']} | {row['K']} | {row['L_ms']:.0f} | {row['questions']} | {row['seconds']:.2f} | "
            f"{row['measured']:.1f} | {row['ideal']:.1f} | {row['fraction']:.1%} | "
            f"{row['sustained']:.1f} | {row['sustained_fraction']:.1%} | "
            f"{row['observed_L_ms']:.0f} | {row['occupancy']:.1%} |"
        )
    print(f"(load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
