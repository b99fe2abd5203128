"""The foundation on the real stack: Kafka, Flink, PostgreSQL and Redis started by `qactl up`'s code.

The destructive tests (a killed process, `down`) come last and bring the stack back up, so the
session's stack is whole for the test modules that follow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg2
import pytest
from confluent_kafka import Consumer, Producer

from qactl.client import kafka_admin, pg, redis_client
from qactl.client.flink_rest import FlinkRest
from qactl.errors import QactlError
from qactl.runtime import flink
from qactl.runtime.stack import Stack
from qactl.runtime.supervisor import Supervisor, port_is_listening
from services.common.settings import QactlSettings
from services.common.topics import CONTRACT_TOPICS, Topic, all_topics
from tests.stack import INFRA, test_settings

pytestmark = pytest.mark.stack

JOB = Path(__file__).parent / "jobs" / "copy_topic.py"


def consume_until(bootstrap: str, topic: str, wanted: bytes, timeout: float) -> bytes | None:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4()}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None and message.value() == wanted:
                return message.value()
        return None
    finally:
        consumer.close()


def produce(bootstrap: str, topic: str, value: bytes, key: bytes | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(topic, value, key=key)
    assert producer.flush(30) == 0


# --- Kafka ---


def test_topics_exist_with_their_partition_counts(infra_stack: QactlSettings) -> None:
    info = kafka_admin.cluster_info(infra_stack.kafka.bootstrap)
    assert info.brokers == 1
    for topic in all_topics(infra_stack.policies):
        assert info.topics.get(topic.name) == topic.partitions, topic.name
    assert {t.name: t.partitions for t in CONTRACT_TOPICS} == {
        "questions-pending": 3,
        "llm-responses-success": 3,
        "llm-responses-error-overload": 2,
        "llm-responses-error-quota": 2,
        "validated-responses": 2,
        "low-quality-responses": 1,
        "questions-dead-letter": 1,
    }


def test_produce_consume_round_trip_moves_offsets_and_lag(infra_stack: QactlSettings) -> None:
    bootstrap = infra_stack.kafka.bootstrap
    topic = f"test-round-trip-{uuid.uuid4().hex[:8]}"
    assert kafka_admin.ensure_topics(bootstrap, [Topic(topic, 1, "test")]) == [topic]
    value = f"hello {uuid.uuid4()}".encode()
    produce(bootstrap, topic, value)
    assert kafka_admin.end_offsets(bootstrap, topic) == {0: 1}

    group = f"test-{uuid.uuid4()}"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 60
        message = None
        while message is None and time.monotonic() < deadline:
            message = consumer.poll(1.0)
        assert message is not None and message.error() is None and message.value() == value
        consumer.commit(message, asynchronous=False)
    finally:
        consumer.close()
    assert kafka_admin.consumer_group_lag(bootstrap, group) == {(topic, 0): 0}
    produce(bootstrap, topic, b"one more")
    assert kafka_admin.consumer_group_lag(bootstrap, group) == {(topic, 0): 1}


def test_topic_creation_is_idempotent_and_refuses_a_wrong_partition_count(infra_stack: QactlSettings) -> None:
    bootstrap = infra_stack.kafka.bootstrap
    assert kafka_admin.ensure_topics(bootstrap, all_topics(infra_stack.policies)) == []
    name = f"test-mismatch-{uuid.uuid4().hex[:8]}"
    kafka_admin.ensure_topics(bootstrap, [Topic(name, 2, "test")])
    with pytest.raises(kafka_admin.TopicMismatch, match=f"{name} has 2 partitions, expected 1"):
        kafka_admin.ensure_topics(bootstrap, [Topic(name, 1, "test")])


def test_created_topics_have_their_leaders_when_ensure_topics_returns(infra_stack: QactlSettings) -> None:
    # A topic is recorded before its partitions have a leader; until then list_offsets fails.
    bootstrap = infra_stack.kafka.bootstrap
    names = [f"test-leaders-{uuid.uuid4().hex[:8]}-{i}" for i in range(4)]
    kafka_admin.ensure_topics(bootstrap, [Topic(name, 3, "test") for name in names])
    for name in names:
        assert kafka_admin.end_offsets(bootstrap, name) == {0: 0, 1: 0, 2: 0}


def test_waiting_for_leaders_outlasts_a_topic_the_broker_does_not_know_yet(infra_stack: QactlSettings) -> None:
    # Right after create_topics the broker's metadata may not hold the topic yet, and librdkafka
    # then answers _NOENT ("No leaders found"), and may keep answering it from its cache; a CI
    # run once failed `qactl up` on it. Here the first rounds ask before the topic exists.
    bootstrap = infra_stack.kafka.bootstrap
    topic = Topic(f"test-late-{uuid.uuid4().hex[:8]}", 2, "test")
    creator = threading.Timer(1.0, kafka_admin.ensure_topics, (bootstrap, [topic]))
    creator.start()
    try:
        kafka_admin.wait_for_leaders(kafka_admin.admin(bootstrap), [topic], timeout=30)
    finally:
        creator.join()
    assert kafka_admin.end_offsets(bootstrap, topic.name) == {0: 0, 1: 0}


def test_waiting_for_leaders_of_a_topic_never_created_ends_with_its_name(infra_stack: QactlSettings) -> None:
    name = f"test-never-{uuid.uuid4().hex[:8]}"
    client = kafka_admin.admin(infra_stack.kafka.bootstrap)
    with pytest.raises(QactlError, match=f"not served by a leader after 2 s: {name}"):
        kafka_admin.wait_for_leaders(client, [Topic(name, 1, "test")], timeout=2)


# --- Flink ---


def test_flink_overview_shows_a_taskmanager_with_free_slots(infra_stack: QactlSettings) -> None:
    rest = FlinkRest(infra_stack.flink.rest)
    overview = rest.overview()
    assert overview.taskmanagers >= 1
    assert overview.slots_available >= 1
    assert overview.flink_version.startswith("2.2")
    assert rest.taskmanagers()[0].slots_total == infra_stack.flink.taskmanager_slots


def test_a_pyflink_job_copies_one_kafka_topic_to_another_on_the_cluster(infra_stack: QactlSettings) -> None:
    bootstrap = infra_stack.kafka.bootstrap
    suffix = uuid.uuid4().hex[:8]
    source, sink, name = f"test-copy-in-{suffix}", f"test-copy-out-{suffix}", f"test-copy-{suffix}"
    kafka_admin.ensure_topics(bootstrap, [Topic(source, 1, "test"), Topic(sink, 1, "test")])
    argv = flink.submit_argv(infra_stack, JOB, "--bootstrap", bootstrap, "--input", source, "--output", sink,
                             "--name", name)  # fmt: skip
    shipped = "flink-distributed-cache-*"  # the client's archive of the job's Python files
    in_tmp = set(Path(tempfile.gettempdir()).glob(shipped))
    submitted = subprocess.run(
        argv, env={**os.environ, **flink.flink_env(infra_stack)}, capture_output=True, text=True, timeout=600
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    # The submission's leftovers stay under the state dir (removed by `down --purge`); the
    # archive is named by its content, so an earlier run's may be the same one.
    assert any((infra_stack.state_dir / "flink" / "tmp").glob(shipped))
    assert set(Path(tempfile.gettempdir()).glob(shipped)) == in_tmp
    rest = FlinkRest(infra_stack.flink.rest)
    try:
        (job,) = rest.running_jobs(name)
        value = f"record {suffix}".encode()
        produce(bootstrap, source, value)
        # The Python UDF ran on the task manager: the record arrives marked.
        assert consume_until(bootstrap, sink, b"copied:" + value, timeout=300) is not None
        assert rest.job(job.jid)["state"] == "RUNNING"
    finally:
        for running in rest.running_jobs(name):
            rest.cancel(running.jid)


# --- PostgreSQL ---

TABLES = {"questions", "responses", "failed_questions", "processing_metrics", "score_history", "schema_migrations"}
VIEWS = {"regeneration_analysis", "error_distribution", "latency_by_stage"}


def test_postgres_is_migrated_with_tables_and_views(infra_stack: QactlSettings) -> None:
    facts = pg.info(infra_stack.postgres.url)
    assert facts.migrated and facts.migration_level >= 1
    conn = pg.connect(infra_stack.postgres.url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'public'")
            found = dict(cur.fetchall())
    finally:
        conn.close()
    assert TABLES <= {name for name, kind in found.items() if kind == "BASE TABLE"}
    assert VIEWS <= {name for name, kind in found.items() if kind == "VIEW"}


def test_views_return_rows_for_inserted_data(infra_stack: QactlSettings) -> None:
    conn = pg.connect(infra_stack.postgres.url)
    qid = f"q-test-{uuid.uuid4().hex[:12]}"
    try:
        with conn.cursor() as cur:  # one transaction, rolled back: the store is left as it was
            cur.execute(
                "INSERT INTO questions (question_id, question, state, terminal_at) VALUES (%s, %s, 'validated', now())",
                (qid, "What is  KAFKA?"),
            )
            cur.execute(
                """INSERT INTO responses (question_id, question, answer, score, status, attempt, hops)
                   VALUES (%s, %s, 'a log', 0.81, 'validated', 1, %s)""",
                (qid, "What is  KAFKA?",
                 '[{"stage": "generating", "attempt": 0}, '
                 '{"stage": "retrying-overload", "attempt": 0, "error": {"kind": "overload", "status_code": 503}}]'),
            )  # fmt: skip
            cur.execute(
                "INSERT INTO score_history (question_id, attempt, score) VALUES (%s, 0, 0.6), (%s, 1, 0.81)", (qid, qid)
            )
            cur.execute(
                """INSERT INTO failed_questions (question_id, reason, error_kind, status_code)
                   VALUES (%s, 'quota retries exhausted', 'exhausted', 402)""",
                (qid + "-f",),
            )
            cur.execute(
                """INSERT INTO processing_metrics (question_id, stage, attempt, started_at, ended_at, duration_ms)
                   VALUES (%s, 'test-stage', 0, now(), now(), 100), (%s, 'test-stage', 0, now(), now(), 300)""",
                (qid, qid),
            )
            cur.execute("SELECT normalized_question FROM responses WHERE question_id = %s", (qid,))
            assert cur.fetchone() == ("what is kafka?",)
            cur.execute(
                "SELECT questions, validated, avg_first_score FROM regeneration_analysis "
                "WHERE source = 'pipeline' AND regenerations = 1"
            )
            questions, validated, first_score = cur.fetchone()
            assert questions >= 1 and validated >= 1 and first_score is not None
            cur.execute("SELECT outcome, occurrences FROM error_distribution WHERE status_code IN (402, 503)")
            outcomes = dict(cur.fetchall())
            assert outcomes["recovered"] >= 1 and outcomes["failed"] >= 1
            cur.execute("SELECT samples, p50_ms, p95_ms, p99_ms FROM latency_by_stage WHERE stage = 'test-stage'")
            samples, p50, p95, p99 = cur.fetchone()
            assert samples == 2 and p50 == 200 and 200 < p95 < p99 <= 300
    finally:
        conn.rollback()
        conn.close()


def test_a_terminal_state_needs_its_time(infra_stack: QactlSettings) -> None:
    conn = pg.connect(infra_stack.postgres.url)
    try:
        with conn.cursor() as cur, pytest.raises(psycopg2.errors.CheckViolation):
            cur.execute("INSERT INTO questions (question_id, question, state) VALUES ('q-bad', 'x', 'failed')")
    finally:
        conn.rollback()
        conn.close()


# --- Redis ---


def test_redis_answers(infra_stack: QactlSettings) -> None:
    assert redis_client.ping(infra_stack.redis.connection_url)
    assert redis_client.info(infra_stack.redis.connection_url).version.startswith("7")


# --- the stack as a whole ---


def test_second_up_changes_nothing(infra_stack: QactlSettings) -> None:
    result = Stack(infra_stack, only=INFRA).up()
    assert not result.changed
    assert sorted(result.unchanged) == sorted(INFRA)


def test_status_reports_every_component_healthy(infra_stack: QactlSettings) -> None:
    statuses = {s.name: s for s in Stack(infra_stack, only=INFRA).status()}
    assert all(s.ok for s in statuses.values()), {n: s.health.detail for n, s in statuses.items()}
    assert "11/11 topics" in statuses["kafka"].health.detail
    assert "task manager" in statuses["flink"].health.detail
    assert "migrations" in statuses["postgres"].health.detail
    assert "PONG" in statuses["redis"].health.detail


def test_external_endpoints_are_checked_and_used_but_not_started(infra_stack: QactlSettings, tmp_path: Path) -> None:
    # A second qactl pointed at the session's stack as if it were a remote cluster.
    external = test_settings(
        state_dir=tmp_path / "external",
        kafka={"bootstrap_servers": infra_stack.kafka.bootstrap},
        flink={"rest_url": infra_stack.flink.rest},
        postgres={"dsn": infra_stack.postgres.url},
        redis={"url": infra_stack.redis.connection_url},
    )
    stack = Stack(external, only=INFRA)
    assert all(c.external and not list(c.processes()) for c in stack.components)
    result = stack.up()
    assert not result.changed and sorted(result.unchanged) == sorted(INFRA)
    assert result.endpoints["kafka"] == infra_stack.kafka.bootstrap
    assert all(s.ok for s in stack.status())
    assert not (tmp_path / "external" / "run").exists()  # nothing was started
    assert stack.down() == []


@pytest.mark.parametrize(("component", "process"), [("redis", "redis"), ("flink", flink.TASKMANAGER)])
def test_a_killed_process_turns_health_bad_then_its_keeper_restarts_it(
    infra_stack: QactlSettings, component: str, process: str
) -> None:
    stack = Stack(infra_stack, only=[component])
    supervisor = Supervisor(infra_stack)
    before = supervisor.state(process)
    assert before.kept, before
    os.kill(before.pid, signal.SIGKILL)
    _wait_for(lambda: not supervisor.is_running(process), 10, f"{process} to die")
    (status,) = stack.status()  # within the keeper's first backoff (1 s)
    assert not status.ok and not status.health.ok
    # Its keeper restarts it, and the component is healthy again without `qactl up`.
    after = _wait_for(
        lambda: (s := supervisor.state(process)).running and s.pid != before.pid and s, 60, f"{process} restarted"
    )
    assert after.restarts == before.restarts + 1 and after.exit_code == -signal.SIGKILL
    assert after.keeper_pid == before.keeper_pid
    _wait_for(lambda: stack.status()[0].ok, 300, f"{component} healthy again")
    assert component in stack.up().unchanged  # nothing left for the operator to do
    assert not supervisor.leftovers()


PYTHON_WORKER = ("pyflink-udf-runner", "beam_boot")


def _python_workers(settings: QactlSettings) -> dict[int, str]:
    """The task manager's PyFlink worker processes (the shell runner and its beam_boot)."""
    import psutil

    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        command = " ".join(proc.info["cmdline"] or [])
        if any(word in command for word in PYTHON_WORKER):
            try:
                env = proc.environ()
            except psutil.Error:
                continue
            if env.get("QACTL_STACK_RUN_DIR") == str(settings.run_dir):
                found[proc.pid] = command[:120]
    return found


def test_kill_9_of_the_taskmanager_leaves_no_python_worker_after_the_restart_nor_after_down(
    infra_stack: QactlSettings,
) -> None:
    bootstrap = infra_stack.kafka.bootstrap
    suffix = uuid.uuid4().hex[:8]
    source, sink, name = f"test-tm-in-{suffix}", f"test-tm-out-{suffix}", f"test-tm-{suffix}"
    kafka_admin.ensure_topics(bootstrap, [Topic(source, 1, "test"), Topic(sink, 1, "test")])
    argv = flink.submit_argv(infra_stack, JOB, "--bootstrap", bootstrap, "--input", source, "--output", sink,
                             "--name", name)  # fmt: skip
    submitted = subprocess.run(
        argv, env={**os.environ, **flink.flink_env(infra_stack)}, capture_output=True, text=True, timeout=600
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    supervisor = Supervisor(infra_stack)
    flink_only = Stack(infra_stack, only=["flink"])
    try:
        produce(bootstrap, source, b"before")
        assert consume_until(bootstrap, sink, b"copied:before", timeout=300) is not None
        workers = _python_workers(infra_stack)  # the job's Python UDF runs in them
        assert workers, "no PyFlink worker process on the task manager"
        taskmanager = supervisor.state(flink.TASKMANAGER)
        os.kill(taskmanager.pid, signal.SIGKILL)  # the JVM alone, as the kernel's OOM killer would

        _wait_for(
            lambda: (s := supervisor.state(flink.TASKMANAGER)).running and s.pid != taskmanager.pid, 60, "the restart"
        )
        still = {pid: cmd for pid, cmd in _python_workers(infra_stack).items() if pid in workers}
        assert not still, f"the dead task manager's Python worker survived its restart: {still}"
        assert not supervisor.leftovers()
        assert "left by the worker" in supervisor.log_file(flink.TASKMANAGER).read_text()

        # The job comes back on the restarted task manager, with a Python worker of its own ...
        _wait_for(lambda: flink_only.status()[0].ok, 300, "flink healthy again")
        produce(bootstrap, source, b"after")
        assert consume_until(bootstrap, sink, b"copied:after", timeout=300) is not None
        assert _python_workers(infra_stack)
    finally:
        # ... which `down` ends with the rest of the task manager's tree.
        flink_only.down()
    assert not _python_workers(infra_stack) and not supervisor.leftovers()
    flink_only.up()


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _group_listening_ports(pgid: int) -> set[int]:
    """TCP ports in LISTEN state held by any process of the group ``pgid``."""
    inodes: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_down_leaves_no_process_and_no_port_then_up_restores(infra_stack: QactlSettings) -> None:
    supervisor = Supervisor(infra_stack)
    stack = Stack(infra_stack, only=INFRA)
    names = [spec.name for comp in stack.components for spec in comp.processes()]
    pids = {name: supervisor.state(name).pid for name in names}
    assert all(pids.values()), pids
    ports = set().union(*(_group_listening_ports(pid) for pid in pids.values() if pid))
    fixed = {infra_stack.kafka.port, infra_stack.flink.rest_port, infra_stack.postgres.port, infra_stack.redis.port}
    assert fixed <= ports

    stopped = stack.down()

    assert sorted(stopped) == sorted(names)
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"{name} (pid {pid}) still runs"
        assert not _group_listening_ports(pid), name
    # Flink's OS-chosen ports were checked per process group above; a random port may be reused
    # by another program at any time, so only the fixed ones are probed from outside.
    assert not [port for port in fixed if port_is_listening(port)]
    assert not list(supervisor.run_dir.glob("*.pid"))
    assert not supervisor.leftovers()  # nothing of the stack's process trees either

    result = stack.up()  # warm start, leaving the stack up for the modules that follow
    assert sorted(result.started) == sorted(INFRA)
    assert all(s.ok for s in stack.status())


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
