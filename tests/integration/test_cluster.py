"""The cluster topology on real processes: 3 KRaft brokers, 2 TaskManagers, scaling, machine loss.

One stack for the module, started by the same runtime as `qactl up --profile cluster`, with the
simulated LLM, on ports ``QACTL_TEST_PORT_BASE + 500`` (the session's single-node stack may run
beside it). Marked ``cluster``; CI runs the representative subset (replication read back, a
broker killed under traffic); ``QACTL_TEST_CLUSTER_FULL=1`` adds the TaskManager kill and
`qactl scale` under traffic. Each test prints its figures (run with ``-s`` to see them).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from qactl.client import kafka_admin
from qactl.client.api import StorageApiClient
from qactl.client.flink_rest import FlinkRest
from qactl.errors import QactlError
from qactl.runtime import flink, kafka, topology
from qactl.runtime.stack import Stack
from services.common import topics
from services.common.settings import QactlSettings
from services.llm_consumer.consumer import GROUP as LLM_GROUP
from tests.integration.test_pipeline_e2e import assert_each_terminal_exactly_once, tagged
from tests.services.pipeline import wait_terminal
from tests.stack import KEEP_STACKS, port_base, test_settings

FULL = os.environ.get("QACTL_TEST_CLUSTER_FULL") == "1"
full_only = pytest.mark.skipif(not FULL, reason="heavy cluster test: QACTL_TEST_CLUSTER_FULL=1")

pytestmark = [pytest.mark.stack, pytest.mark.cluster]

CLUSTER_OFFSET = 500


def cluster_settings() -> QactlSettings:
    return test_settings(
        port_base() + CLUSTER_OFFSET,
        kafka={"brokers": 3},
        flink={"taskmanagers": 2, "taskmanager_slots": 3},
        llm={"backend": "simulated"},
        gateway={"latency_ms_min": 50, "latency_ms_max": 200},
        policies={"delay_scale": 0.02},
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[QactlSettings]:
    settings = cluster_settings()
    started = time.monotonic()
    try:
        Stack(settings).up()
        print(f"\ncluster up in {time.monotonic() - started:.0f} s")
        with StorageApiClient(settings.api.base_url) as api:  # one question through every stage
            question, reference, _ = tagged(0)
            wait_terminal(api, api.submit(question, reference).question_id, timeout=600)
        yield settings
    except BaseException:
        Stack(topology.apply(settings)).down()
        raise
    if not KEEP_STACKS:
        Stack(topology.apply(settings)).down()


@pytest.fixture
def api(cluster: QactlSettings) -> Iterator[StorageApiClient]:
    with StorageApiClient(cluster.api.base_url, timeout=30.0) as client:
        yield client


@dataclass
class Traffic:
    """Questions sent at a steady pace from a thread; every answer of the API is kept."""

    api: StorageApiClient
    interval: float = 0.1
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            question, reference, _ = tagged(index)
            index += 1
            try:
                self.accepted.append(self.api.submit(question, reference).question_id)
            except QactlError as exc:
                self.refused.append(str(exc))
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def test_three_brokers_replicate_every_topic_three_times_with_min_isr_two(cluster: QactlSettings) -> None:
    names = [t.name for t in topics.all_topics(cluster.policies)]
    partitions = kafka_admin.partition_replicas(cluster.kafka.bootstrap, names)
    assert {p.topic for p in partitions} == set(names)
    assert all(len(p.replicas) == 3 and p.whole for p in partitions), partitions
    configs = kafka_admin.topic_configs(cluster.kafka.bootstrap, names, ["min.insync.replicas"])
    assert {name: c["min.insync.replicas"] for name, c in configs.items()} == dict.fromkeys(names, "2")
    info = kafka_admin.cluster_info(cluster.kafka.bootstrap)
    assert info.broker_ids == (1, 2, 3)
    assert len(cluster.kafka.bootstrap.split(",")) == 3  # every client gets every broker


def test_a_broker_killed_under_traffic_loses_refuses_and_duplicates_nothing(cluster, api) -> None:
    stack = Stack(cluster)
    leaders = {p.partition: p.leader for p in kafka_admin.partition_replicas(cluster.kafka.bootstrap, [topics.QUESTIONS_PENDING.name])}
    victim = kafka.process_name(cluster, leaders[0])  # it leads questions-pending[0]: a failover must happen
    with Traffic(api) as traffic:
        time.sleep(5)
        before = len(traffic.accepted)
        killed = stack.supervisor.state(victim).pid
        os.killpg(killed, signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(20)  # traffic goes on against two brokers (the keeper restarts the third meanwhile)
        during = len(traffic.accepted) - before
    assert stack.supervisor.state(victim).pid != killed  # that broker died
    restart_at = time.monotonic()
    Stack(cluster, only=["kafka"]).up()  # healthy again: the keeper's restart, or this `up`'s
    up_took = time.monotonic() - restart_at
    whole = up_took + _wait_isr_whole(cluster, timeout=300)
    print(
        f"\nbroker kill: {victim} killed; {len(traffic.accepted)} accepted ({during} after the kill), "
        f"{len(traffic.refused)} refused {traffic.refused[:2]}; restarted {restart_at - killed_at:.0f} s after "
        f"the kill, healthy after {up_took:.0f} s, ISR whole {whole:.1f} s after the restart began"
    )
    assert traffic.refused == []
    assert during > 0
    assert_each_terminal_exactly_once(cluster, api, traffic.accepted)


def _wait_isr_whole(settings: QactlSettings, timeout: float) -> float:
    started = time.monotonic()
    names = [t.name for t in topics.all_topics(settings.policies)]
    while time.monotonic() - started < timeout:
        try:
            partitions = kafka_admin.partition_replicas(settings.kafka.bootstrap, names)
            if partitions and all(p.whole for p in partitions):
                return time.monotonic() - started
        except Exception:  # the restarted broker is still joining: ask again
            pass
        time.sleep(0.5)
    raise AssertionError(f"in-sync replicas not whole after {timeout:.0f} s")


@full_only
def test_a_taskmanager_killed_under_traffic_the_job_goes_on_on_the_other(cluster, api) -> None:
    stack = Stack(cluster)
    rest = FlinkRest(cluster.flink.rest)
    # A TaskManager that runs subtasks of the job (after an earlier failover one may run none).
    hosting = _taskmanagers_of_job(cluster)
    (number,) = [n for n in flink.taskmanager_numbers(cluster) if flink.taskmanager_id(cluster, n) in hosting][:1]
    victim = flink.taskmanager_name(cluster, number)
    victim_id = flink.taskmanager_id(cluster, number)
    restored_before = _restored_checkpoint(rest)
    with Traffic(api, interval=0.2) as traffic:
        time.sleep(8)  # some answers scored and checkpointed, others in flight
        # A machine lost: its keeper goes with it, so nothing restarts this TaskManager here.
        state = stack.supervisor.state(victim)
        if state.keeper_pid is not None:
            os.kill(state.keeper_pid, signal.SIGKILL)
        os.killpg(state.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        recovered = _wait_job_on(rest, victim_id, timeout=240)
        time.sleep(5)
    restored = _restored_checkpoint(rest)
    print(
        f"\nTaskManager kill: job running on the other TaskManager {recovered - killed_at:.0f} s after the kill, "
        f"restored checkpoint {restored}; {len(traffic.accepted)} accepted, {len(traffic.refused)} refused"
    )
    assert restored is not None and restored != restored_before
    assert traffic.refused == []
    # Every answer scored while the killed TaskManager is still down.
    assert not stack.supervisor.is_running(victim)
    assert_each_terminal_exactly_once(cluster, api, traffic.accepted)
    Stack(cluster, only=["flink"]).up()


def _wait_job_on(rest: FlinkRest, dead_id: str, timeout: float) -> float:
    """Until the job runs all its tasks without the dead TaskManager; when that was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            registered = {tm.id for tm in rest.taskmanagers()}
            jobs = [j for j in rest.jobs() if j.state == "RUNNING"]
            if dead_id not in registered and jobs and all(j.all_tasks_running for j in jobs):
                return time.monotonic()
        except Exception:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the job did not run again without {dead_id} in {timeout:.0f} s")


def _taskmanagers_of_job(settings: QactlSettings) -> set[str]:
    """Resource ids of the TaskManagers that run subtasks of the running job."""
    import httpx

    base = settings.flink.rest
    (jid,) = [j["id"] for j in httpx.get(f"{base}/jobs").json()["jobs"] if j["status"] == "RUNNING"]
    hosting = set()
    for vertex in httpx.get(f"{base}/jobs/{jid}").json()["vertices"]:
        for tm in httpx.get(f"{base}/jobs/{jid}/vertices/{vertex['id']}/taskmanagers").json()["taskmanagers"]:
            hosting.add(tm["taskmanager-id"])
    return hosting


def _restored_checkpoint(rest: FlinkRest) -> object:
    (job,) = [j for j in rest.jobs() if j.state == "RUNNING"]
    latest = rest.checkpoints(job.jid).get("latest", {}) or {}
    restored = latest.get("restored")
    return restored.get("id") if isinstance(restored, dict) else None


@full_only
def test_scale_llm_consumer_up_and_down_under_traffic_loses_nothing(cluster, api) -> None:
    group_sizes = []
    with Traffic(api, interval=0.15) as traffic:
        time.sleep(3)
        three = topology.scale(cluster, "llm-consumer", 3)
        group_sizes.append(_wait_members(three, 3))
        time.sleep(5)
        one = topology.scale(three, "llm-consumer", 1)
        group_sizes.append(_wait_members(one, 1))
        time.sleep(5)
    assert topology.apply(cluster).services.llm_consumer_replicas == 1  # kept for the next `up`
    print(f"\nscale: group members {group_sizes}; {len(traffic.accepted)} accepted, {len(traffic.refused)} refused")
    assert traffic.refused == []
    assert_each_terminal_exactly_once(cluster, api, traffic.accepted)
    topology.scale(one, "llm-consumer", cluster.services.llm_consumer_replicas)


def _wait_members(settings: QactlSettings, count: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    members: list = []
    while time.monotonic() < deadline:
        state, members = kafka_admin.group_members(settings.kafka.bootstrap, LLM_GROUP)
        assigned = sorted(tp for m in members for tp in m.partitions)
        if state == "stable" and len(members) == count and len(assigned) == topics.QUESTIONS_PENDING.partitions:
            return count
        time.sleep(0.5)
    raise AssertionError(f"{LLM_GROUP} has {len(members)} member(s), not {count}, after {timeout:.0f} s")
