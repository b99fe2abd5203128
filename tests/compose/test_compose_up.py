"""compose/ for real: build the images, `up`, every container healthy, a question end to end
through the containers to PostgreSQL, a broker container killed under traffic with the invariant
checked (every accepted question ends exactly once in PostgreSQL), the broker back and its
replicas in sync again, `down -v`; nothing left behind (containers, network, volumes, a dockerd
started here).

Run with QACTL_TEST_COMPOSE=1 as root (Docker needs it). It prints its timings: the first
build downloads and compiles everything (see the README); later runs reuse Docker's cache.
The LLM is the gateway's simulator (the model server's container still runs and is checked).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import psycopg2
import pytest
import redis as redis_lib
from confluent_kafka.admin import ConfigResource, ResourceType

from qactl.client import kafka_admin
from qactl.client.api import StorageApiClient
from qactl.errors import QactlError
from qactl.runtime.stack import Stack
from services.common.settings import QactlSettings
from services.common.topics import all_topics
from services.common.waiting import poll_until
from tests.compose.docker_env import BASE_IMAGE, DOCKER, docker_engine, ensure_base_image, run
from tests.compose.test_compose_files import COMPOSE, COMPOSE_FILE, OFFICIAL, ONE_SHOT, compose
from tests.services.pipeline import terminal_rows, wait_terminal

pytestmark = [
    pytest.mark.compose,
    pytest.mark.timeout(3 * 3600),  # the first build alone takes 12-35 min (README); pytest-timeout's default is 15
    pytest.mark.skipif(os.environ.get("QACTL_TEST_COMPOSE") != "1", reason="QACTL_TEST_COMPOSE=1 runs compose/ in Docker"),
    pytest.mark.skipif(os.geteuid() != 0, reason="Docker needs root"),
]

PROJECT = "qactltest"
BASE = 29000
PORTS = {
    "QACTL_COMPOSE_API_PORT": BASE + 1,
    "QACTL_COMPOSE_FLINK_PORT": BASE + 81,
    "QACTL_COMPOSE_GATEWAY_PORT": BASE + 435,
    "QACTL_COMPOSE_KAFKA1_PORT": BASE + 192,
    "QACTL_COMPOSE_KAFKA2_PORT": BASE + 193,
    "QACTL_COMPOSE_KAFKA3_PORT": BASE + 194,
    "QACTL_COMPOSE_POSTGRES_PORT": BASE + 432,
    "QACTL_COMPOSE_REDIS_PORT": BASE + 379,
}
LONG_RUNNING = sorted(set(compose()["services"]) - ONE_SHOT - OFFICIAL)
CA_COPY = COMPOSE / "ca-certificates" / "host.pem"


def compose_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QACTL_")}
    return {
        **env,
        **{k: str(v) for k, v in PORTS.items()},
        "QACTL_BASE_IMAGE": BASE_IMAGE,
        "QACTL_LLM__BACKEND": "simulated",
        "QACTL_POLICIES__DELAY_SCALE": "0.05",
    }


def dc(*args: str, timeout: float = 600, check: bool = True):
    return run("docker-compose", "-p", PROJECT, "-f", str(COMPOSE_FILE), *args, timeout=timeout, check=check, env=compose_env())


def host_settings(credentials: dict[str, str]) -> QactlSettings:
    """How qactl on this machine sees the compose cluster: every endpoint external (README), with
    the credentials the cluster generated (`qactl container credentials --show`)."""
    pg, redis = quote(credentials["postgres_password"], safe=""), quote(credentials["redis_password"], safe="")
    return QactlSettings.model_validate({
        "state_dir": f"/tmp/qactl-test-{BASE}-compose-client",
        "kafka": {"bootstrap_servers": ",".join(f"127.0.0.1:{PORTS[f'QACTL_COMPOSE_KAFKA{n}_PORT']}" for n in (1, 2, 3))},
        "flink": {"rest_url": f"http://127.0.0.1:{PORTS['QACTL_COMPOSE_FLINK_PORT']}"},
        "postgres": {"dsn": f"postgresql://qactl:{pg}@127.0.0.1:{PORTS['QACTL_COMPOSE_POSTGRES_PORT']}/qactl"},
        "redis": {"url": f"redis://:{redis}@127.0.0.1:{PORTS['QACTL_COMPOSE_REDIS_PORT']}/0"},
        "api": {"port": PORTS["QACTL_COMPOSE_API_PORT"]},
        "llm": {"backend": "simulated"},
    })  # fmt: skip


def refused_without_password() -> None:
    """PostgreSQL and Redis of the cluster refuse a client without the credentials."""
    no_password = f"postgresql://qactl@127.0.0.1:{PORTS['QACTL_COMPOSE_POSTGRES_PORT']}/qactl"
    with pytest.raises(psycopg2.OperationalError, match="password"):
        psycopg2.connect(no_password, connect_timeout=10).close()
    with pytest.raises(redis_lib.AuthenticationError):
        redis_lib.Redis(port=PORTS["QACTL_COMPOSE_REDIS_PORT"], socket_timeout=10).ping()


def container_id(service: str) -> str:
    return dc("ps", "-q", service).stdout.strip()


def states() -> dict[str, str]:
    """service -> health ("healthy", "starting", ...), or "exited N" / the state when it has none."""
    found = {}
    for service in [*LONG_RUNNING, *ONE_SHOT]:
        cid = dc("ps", "-a", "-q", service).stdout.strip()
        if not cid:
            found[service] = "missing"
            continue
        state = json.loads(run(DOCKER, "inspect", "-f", "{{json .State}}", cid).stdout)
        if state.get("Health"):
            found[service] = state["Health"]["Status"]
        elif state["Status"] == "exited":
            found[service] = f"exited {state['ExitCode']}"
        else:
            found[service] = state["Status"]
    return found


def all_ready() -> dict[str, str]:
    """What is not ready yet: long-running not healthy, one-shots not exited 0."""
    current = states()
    waiting = {s: st for s, st in current.items() if s in LONG_RUNNING and st != "healthy"}
    waiting |= {s: st for s, st in current.items() if s in ONE_SHOT and st != "exited 0"}
    failed = {s: st for s, st in current.items() if st.startswith("exited") and st != "exited 0"}
    if failed:
        logs = {s: dc("logs", "--tail", "30", s, check=False).stdout[-2500:] for s in failed}
        raise AssertionError(f"containers failed: {failed}\n{logs}")
    return waiting


def print_memory() -> None:
    """Each container's memory as Docker counts it (its cgroup), and the total: a figure of the README."""
    stats = run(DOCKER, "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}").stdout.split("\n")
    units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    usage = {}
    for line in filter(None, stats):
        name, used = line.split()[0], line.split()[1]
        number = used.rstrip("BKMGi")
        usage[name.removeprefix(f"{PROJECT}_").removesuffix("_1")] = float(number) * units[used[len(number):]]
    print("compose memory (MiB):", {n: round(b / (1 << 20)) for n, b in sorted(usage.items())},
          f"total {sum(usage.values()) / (1 << 20):.0f}")  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QactlSettings]:
    workdir = tmp_path_factory.mktemp("compose")
    timings: dict[str, float] = {}
    copied = False
    with docker_engine(workdir):
        try:
            timings["base image"] = ensure_base_image()
            copied = bool(os.environ.get("PIP_CERT")) and not CA_COPY.exists()
            if copied:  # this machine's TLS-intercepting CA, for pip and Maven (README)
                shutil.copyfile(os.environ["PIP_CERT"], CA_COPY)
            started = time.monotonic()
            # Every service runs this one image (compose/docker-compose.yml's `image`). Built with
            # the docker CLI: docker-compose 1.29 sends the context through docker-py, whose
            # layers the CLI's builds do not reuse (measured), and the CLI's are what a
            # developer here builds by hand.
            run(DOCKER, "build", "-t", "qactl:local", "-f", str(COMPOSE / "Dockerfile"),
                "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", str(COMPOSE.parent), timeout=7200)  # fmt: skip
            timings["build"] = time.monotonic() - started
            started = time.monotonic()
            dc("up", "-d", "--no-build", timeout=1800)
            waiting = poll_until(all_ready, timeout=1800, interval=5, done=lambda w: not w)
            assert not waiting, f"not ready after 30 min: {waiting}"
            timings["up until every container healthy"] = time.monotonic() - started
            print("\ncompose timings (s):", {k: round(v) for k, v in timings.items()})
            print_memory()
            shown = dc("exec", "-T", "storage-api", "qactl", "container", "credentials", "--show").stdout
            yield host_settings(json.loads(shown))
        finally:
            dc("down", "-v", "--remove-orphans", "-t", "30", timeout=600, check=False)
            if copied:
                CA_COPY.unlink(missing_ok=True)
            left = run(DOCKER, "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}", check=False).stdout
            networks = run(DOCKER, "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}", check=False).stdout
            volumes = run(DOCKER, "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}", check=False).stdout
            assert not (left.strip() or networks.strip() or volumes.strip()), (left, networks, volumes)


def test_every_container_is_healthy_and_qactl_sees_the_cluster_as_external(cluster: QactlSettings) -> None:
    assert not all_ready()
    refused_without_password()
    # qactl on the host, every endpoint external: the compose cluster passes its checks.
    stack = Stack(cluster, only=["kafka", "flink", "postgres", "redis", "score-job"])
    statuses = {s.name: s for s in stack.status()}
    assert all(s.external or s.kind == "job" for s in statuses.values())
    assert all(s.health.ok for s in statuses.values()), {n: s.health.detail for n, s in statuses.items()}
    # The topics as the brokers report them (not the settings): replication factor 3, min ISR 2.
    names = [t.name for t in all_topics(cluster.policies)]
    admin = kafka_admin.admin(cluster.kafka.bootstrap)
    metadata = admin.list_topics(timeout=10)
    assert all(len(p.replicas) == 3 for t in names for p in metadata.topics[t].partitions.values())
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, t) for t in names])
    assert {f.result(10)["min.insync.replicas"].value for f in futures.values()} == {"2"}


def test_a_question_goes_through_the_containers_to_postgresql(cluster: QactlSettings) -> None:
    with StorageApiClient(cluster.api.base_url) as api:
        submission = api.submit(f"What is Apache Kafka? [compose {uuid.uuid4().hex[:8]}]", None)
        final = wait_terminal(api, submission.question_id, timeout=600)
    assert terminal_rows(cluster, [submission.question_id])[submission.question_id] == [final.state.value]


def test_a_broker_container_killed_under_traffic_loses_and_duplicates_nothing(cluster: QactlSettings) -> None:
    accepted: list[str] = []
    refused: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        with StorageApiClient(cluster.api.base_url, timeout=30) as api:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    accepted.append(api.submit(f"What is Apache Flink? [kill {uuid.uuid4().hex[:8]} {n}]", None).question_id)
                except (QactlError, httpx.HTTPError) as exc:
                    refused.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.5)

    sender = threading.Thread(target=traffic, name="traffic")
    sender.start()
    try:
        assert poll_until(lambda: len(accepted), timeout=120, interval=0.5, done=lambda n: n >= 5) >= 5
        killed_at = len(accepted)
        run(DOCKER, "kill", "--signal", "KILL", container_id("kafka-2"))
        time.sleep(30)  # traffic goes on with one broker of three gone
    finally:
        stop.set()
        sender.join(60)
    assert len(accepted) > killed_at + 10, "the API stopped accepting after the broker died"
    started = time.monotonic()
    with StorageApiClient(cluster.api.base_url) as api:
        for question_id in accepted:
            wait_terminal(api, question_id, timeout=900)
    rows = terminal_rows(cluster, accepted)
    lost = [q for q, found in rows.items() if not found]
    duplicated = {q: found for q, found in rows.items() if len(found) > 1}
    print(f"\nbroker kill: {len(accepted)} accepted, {len(refused)} refused, {len(lost)} lost, "
          f"{len(duplicated)} duplicated; all terminal {time.monotonic() - started:.0f} s after the traffic")  # fmt: skip
    assert not refused and not lost and not duplicated, (refused[:3], lost[:3], duplicated)

    # The broker comes back and catches up: every partition's replicas in sync again.
    run(DOCKER, "start", container_id("kafka-2"))
    back = time.monotonic()
    names = [t.name for t in all_topics(cluster.policies)]

    def out_of_sync() -> int:
        metadata = kafka_admin.admin(cluster.kafka.bootstrap).list_topics(timeout=10)
        return sum(set(p.isrs) != set(p.replicas) for t in names for p in metadata.topics[t].partitions.values())

    assert poll_until(out_of_sync, timeout=600, interval=2, done=lambda n: n == 0) == 0
    print(f"kafka-2 back: ISR whole again after {time.monotonic() - back:.0f} s")


HOST_SERVICES = ["llm-gateway", "storage-api", "persister", "retry-overload", "retry-quota", "llm-consumer"]


def test_qactl_on_the_host_runs_the_pipeline_against_the_cluster_as_external_services(cluster: QactlSettings) -> None:
    """The services started natively by qactl on this machine (the same `Stack` as `qactl up`),
    with Kafka, Flink, PostgreSQL and Redis the compose cluster's, given as external endpoints:
    questions asked at the host's storage API end once each in the cluster's PostgreSQL."""
    host = cluster.model_copy(update={
        "api": cluster.api.model_copy(update={"port": BASE + 601}),
        "gateway": cluster.gateway.model_copy(update={"port": BASE + 602}),
        "services": cluster.services.model_copy(update={"metrics_base_port": BASE + 700}),
    })  # fmt: skip
    stack = Stack(host, only=HOST_SERVICES)
    try:
        stack.up()
        statuses = {s.name: s for s in Stack(host).status()}
        assert all(statuses[n].external for n in ("kafka", "flink", "postgres", "redis"))
        assert all(statuses[n].health.ok for n in HOST_SERVICES), {n: statuses[n].health.detail for n in HOST_SERVICES}
        with StorageApiClient(host.api.base_url) as api:
            ids = [api.submit(f"What is Apache Flink? [host {uuid.uuid4().hex[:8]} {i}]", None).question_id for i in range(6)]
            finals = {qid: wait_terminal(api, qid, timeout=600).state.value for qid in ids}
        assert terminal_rows(host, ids) == {qid: [state] for qid, state in finals.items()}
    finally:
        stack.down()
    assert not stack.supervisor.leftovers()
