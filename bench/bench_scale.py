"""The cluster topology's figures: throughput per llm-consumer replica count, a broker killed under
traffic, resident memory, and the warm start of `qactl up --profile cluster`. Print-only.

The stack is the cluster profile (3 brokers, 2 TaskManagers with 3 slots each) started by the
same runtime as `qactl up --profile cluster`, with the gateway's simulator answering after
800-5000 ms (uniform; the original plan's LLM latency), on its own ports
(``QACTL_BENCH_PORT_BASE``, default 25000) and state dir; a cluster stack already running there is
used as it is (its gateway restarted with the bench's latency), e.g. the one the cluster tests
leave with ``QACTL_TEST_KEEP_STACK=1`` (``QACTL_BENCH_PORT_BASE=<test base + 500>
QACTL_BENCH_STATE_DIR=/tmp/qactl-test-<test base + 500>``).

1. Throughput, K = 1, 2, 3 llm-consumer replicas (`qactl scale`'s code): a burst of
   ``--questions`` distinct questions through POST /query; questions that reached a terminal state
   per second, first submit to last terminal state. The ideal is K x llm.concurrency / mean latency
   (8 calls per replica, 2.9 s): the figure says which cap it meets -- the LLM concurrency
   (grows with K), the 3 partitions of questions-pending (K > 3 adds nothing), or the 2 cores
   (Flink's scorer and every JVM share them: the rate stops growing with K).
2. A broker killed (SIGKILL) under steady traffic, the leader of questions-pending[0]: accepted,
   refused (not 202), lost or stuck (no terminal state), duplicated (terminal state written
   twice), and the seconds from the kill until its keeper restarted it and until every
   partition's ISR is whole again.
3. Resident memory (RSS) of every process of the stack, by process.
4. Warm start: `down` then `up` of the same state dir (jars, class-data archives and ONNX scorer
   cached), seconds until every component is healthy.

With ``--llm local`` the model server (llama.cpp, SmolLM2-135M) answers instead of the simulator:
the throughput rows then meet the server's own limit (``bench/bench_llm_server.py``: 3.1-4.4
answers/s on these 2 cores with 1-4 slots), which no number of consumer replicas raises.

    python bench/bench_scale.py [--questions 60] [--llm simulated|local] [--skip-kill] [--down]
"""

from __future__ import annotations

import argparse
import os
from signal import SIGKILL
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qactl.client import kafka_admin  # noqa: E402
from qactl.client.api import StorageApiClient  # noqa: E402
from qactl.client.gateway import GatewayClient  # noqa: E402
from qactl.errors import QactlError  # noqa: E402
from qactl.runtime import kafka, topology  # noqa: E402
from qactl.runtime.credentials import with_stored  # noqa: E402
from qactl.runtime.stack import Stack  # noqa: E402
from qactl.runtime.supervisor import Supervisor  # noqa: E402
from services.common import db, topics  # noqa: E402
from services.common.knowledge_base import load_knowledge_base  # noqa: E402
from services.common.settings import QactlSettings  # noqa: E402
from tests.stack import port_layout  # noqa: E402

MIB = 1024 * 1024
SIMULATED_LATENCY = {"latency_ms_min": 800, "latency_ms_max": 5000}  # the original plan's LLM
TERMINAL = ("validated", "low_quality", "failed")
KB = load_knowledge_base()


def bench_settings(llm: str = "simulated") -> QactlSettings:
    base = int(os.environ.get("QACTL_BENCH_PORT_BASE", "25000"))
    values = port_layout(base, os.environ.get("QACTL_BENCH_STATE_DIR", f"/tmp/qactl-bench-scale-{base}"))
    values.update(
        kafka={**values["kafka"], "brokers": 3},
        flink={**values["flink"], "taskmanagers": 2, "taskmanager_slots": 3},
        llm={"backend": llm},
        gateway={**values["gateway"], **(SIMULATED_LATENCY if llm == "simulated" else {})},
        policies={"delay_scale": 0.05},
    )
    return with_stored(topology.apply(QactlSettings.model_validate(values)), create=True)  # as `qactl up`


def question(index: int, tag: str) -> tuple[str, str]:
    entry = KB.entries[index % len(KB.entries)]
    return f"{entry.question} (scale-{tag}-{index})", entry.reference_answer


def terminal_counts(settings: QactlSettings, ids: list[str]) -> dict[str, int]:
    """question id -> terminal records written (responses + failed_questions)."""
    counts = dict.fromkeys(ids, 0)
    with db.connect(settings.postgres.url, timeout=None) as conn, conn.cursor() as cur:
        cur.execute("SELECT question_id FROM responses WHERE question_id = ANY(%s)", (ids,))
        for (qid,) in cur.fetchall():
            counts[qid] += 1
        cur.execute("SELECT question_id FROM failed_questions WHERE question_id = ANY(%s)", (ids,))
        for (qid,) in cur.fetchall():
            counts[qid] += 1
    return counts


def wait_terminal(settings: QactlSettings, ids: list[str], timeout: float) -> tuple[float, dict[str, int]]:
    deadline = time.monotonic() + timeout
    counts = terminal_counts(settings, ids)
    while any(c == 0 for c in counts.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
        counts = terminal_counts(settings, ids)
    return time.monotonic(), counts


def throughput(settings: QactlSettings, replicas: int, count: int) -> QactlSettings:
    settings = topology.scale(settings, "llm-consumer", replicas)
    time.sleep(5)  # the group settles
    tag = f"k{replicas}-{time.time_ns()}"
    gateway = GatewayClient.from_settings(settings)
    calls_before = gateway.stats().total
    with StorageApiClient(settings.api.base_url, timeout=30) as api:
        started = time.monotonic()
        ids = [api.submit(*question(i, tag)).question_id for i in range(count)]
    finished, counts = wait_terminal(settings, ids, timeout=1800)
    calls = gateway.stats().total - calls_before  # first answers, regenerations and retried calls
    done = sum(1 for c in counts.values() if c > 0)
    concurrency = settings.llm.concurrency or 8
    seconds = finished - started
    ideal = f"{replicas * concurrency / 2.9:.2f}" if settings.llm.backend == "simulated" else "server's limit"
    print(
        f"| {replicas} | {count} | {done} | {seconds:.1f} | {done / seconds:.2f} | {calls / seconds:.2f} | {ideal} | "
        f"{min(replicas, topics.QUESTIONS_PENDING.partitions)} of 3 |",
        flush=True,
    )
    return settings


def broker_kill(settings: QactlSettings) -> None:
    stack = Stack(settings)
    leaders = {p.partition: p.leader for p in kafka_admin.partition_replicas(settings.kafka.bootstrap, [topics.QUESTIONS_PENDING.name])}
    victim = kafka.process_name(settings, leaders[0])
    accepted: list[str] = []
    refused: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        tag = f"kill-{time.time_ns()}"
        index = 0
        with StorageApiClient(settings.api.base_url, timeout=30) as api:
            while not stop.is_set():
                try:
                    accepted.append(api.submit(*question(index, tag)).question_id)
                except QactlError as exc:
                    refused.append(str(exc))
                index += 1
                stop.wait(0.1)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    time.sleep(5)
    old_pid = stack.supervisor.state(victim).pid
    names = [t.name for t in topics.all_topics(settings.policies)]
    os.killpg(old_pid, SIGKILL)
    killed = time.monotonic()
    back = isr = None  # seconds after the kill: its keeper restarted it; every ISR whole again
    shrunk = False  # the ISRs dropped the dead broker (until then they still look whole)
    while time.monotonic() - killed < 300 and (isr is None or time.monotonic() - killed < 20):
        state = stack.supervisor.state(victim)
        if back is None and state.running and state.pid != old_pid:
            back = time.monotonic() - killed
        in_sync = _all_in_sync(settings, names)
        shrunk = shrunk or not in_sync
        if shrunk and back is not None and isr is None and in_sync:
            isr = time.monotonic() - killed
        time.sleep(0.2)
    stop.set()  # traffic ran for at least 20 s after the kill
    thread.join(60)
    if isr is None:  # the keeper gave up: `qactl up` brings it back
        Stack(settings, only=["kafka"]).up()
    _, counts = wait_terminal(settings, accepted, timeout=900)
    stuck = sum(1 for c in counts.values() if c == 0)
    twice = sum(1 for c in counts.values() if c > 1)
    print(f"| broker killed | {victim} (led questions-pending[0]) |")
    print(f"| accepted / refused | {len(accepted)} / {len(refused)} |")
    print(f"| lost or stuck / duplicated | {stuck} / {twice} |")
    print(f"| broker back (its keeper restarted it) | {'-' if back is None else f'{back:.1f} s after the kill'} |")
    print(f"| ISR whole again | {'- (not within 300 s)' if isr is None else f'{isr:.1f} s after the kill'} |", flush=True)


def _all_in_sync(settings: QactlSettings, names: list[str]) -> bool:
    try:
        return all(p.whole for p in kafka_admin.partition_replicas(settings.kafka.bootstrap, names))
    except Exception:  # a metadata request while the cluster moves leaders
        return False


def memory(settings: QactlSettings) -> None:
    supervisor = Supervisor(settings)
    total = 0
    rows = []
    for comp in Stack(settings).components:
        for spec in comp.processes():
            state = supervisor.state(spec.name)
            if not state.running or state.pid is None:
                continue
            rss = _tree_rss(state.pid)
            total += rss
            rows.append((spec.name, rss))
    for name, rss in rows:
        print(f"| {name} | {rss / MIB:.0f} MiB |")
    print(f"| **total** | **{total / MIB:.0f} MiB** |", flush=True)


def _tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return 0


def timed_up(settings: QactlSettings) -> float:
    started = time.monotonic()
    Stack(settings).up()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=60)
    parser.add_argument("--llm", choices=("simulated", "local"), default="simulated",
                        help="who answers: the gateway's simulator (800-5000 ms) or the local model server")
    parser.add_argument("--skip-kill", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--down", action="store_true", help="stop the stack at the end")
    args = parser.parse_args()
    settings = bench_settings(args.llm)
    topology.save(settings)
    print(f"first up (cold or warm): {timed_up(settings):.0f} s", flush=True)
    # A stack left running (e.g. the cluster tests' with QACTL_TEST_KEEP_STACK=1): its gateway
    # must answer with this bench's latency.
    Stack(settings, only=["llm-gateway"]).down()
    Stack(settings, only=["llm-gateway"]).up()
    print(f"\nLLM: {args.llm}")
    print("| K | questions | terminal | seconds | questions/s | LLM calls/s | ideal (K x 8 / 2.9 s) | partitions used |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for replicas in () if args.skip_throughput else (1, 2, 3):
        settings = throughput(settings, replicas, args.questions)
    if not args.skip_kill:
        print("\n| broker kill under traffic | |\n|---|---|")
        broker_kill(settings)
    print("\n| process | RSS |\n|---|---|")
    memory(settings)
    Stack(settings).down()
    print(f"\nwarm start, `up` of the cluster profile after `down`: {timed_up(settings):.0f} s", flush=True)
    if args.down:
        Stack(settings).down()


if __name__ == "__main__":
    main()
