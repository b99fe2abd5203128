"""Kafka 4.x in KRaft mode, one node or several, on jars resolved by Maven.

Every node is a combined broker and controller (``process.roles=broker,controller``): with three
nodes the controller quorum has three voters and survives the loss of any one, exactly like the
brokers' data at replication factor 3 and min ISR 2, at the price of one JVM per node instead of
six. Separate controllers would add three JVMs (some 300 MB and a core's worth of start-up on
this 2-core box) for an isolation that only matters for big clusters.

- One node (``kafka.brokers = 1``, the default): process ``kafka``, config, cluster id and data
  under ``state_dir/kafka``, a dynamic quorum formatted ``--standalone``.
- N nodes: processes ``kafka-1..N``, node n under ``state_dir/kafka-cluster/broker-n``, listening
  on ``port + 2(n-1)`` (controller ``controller_port + 2(n-1)``); a static quorum of the N
  controllers (``controller.quorum.voters``), every node formatted with the same cluster id.

Jars in ``cache_dir/kafka-<version>/libs``. A broker logs to stdout (our log4j2 config), which the
supervisor writes to ``state_dir/logs/<process>.log``. Topics are created by ``after_start`` from
``services.common.topics`` with their partition counts and replication
(``topics.Replication``); auto-creation is off so that a misspelt topic name fails loudly instead
of making a one-partition topic.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

from qactl.client import kafka_admin
from qactl.errors import PrerequisiteError, ProvisionError
from qactl.runtime import jvm, maven
from qactl.runtime.component import Component, Report
from qactl.runtime.supervisor import Health, Port, ProcessSpec, Supervisor, port_is_listening
from services.common.settings import QactlSettings
from services.common.topics import Replication, all_topics

NODE_ID = 1


def libs_dir(settings: QactlSettings) -> Path:
    return settings.cache_dir / f"kafka-{settings.kafka.version}" / "libs"


def node_ids(settings: QactlSettings) -> list[int]:
    return list(range(1, settings.kafka.brokers + 1))


def process_name(settings: QactlSettings, node: int = NODE_ID) -> str:
    """``kafka`` for the single node; ``kafka-<n>`` for node n of several."""
    return "kafka" if settings.kafka.brokers == 1 else f"kafka-{node}"


def process_names(settings: QactlSettings) -> list[str]:
    return [process_name(settings, n) for n in node_ids(settings)]


def cluster_home(settings: QactlSettings) -> Path:
    """Where the cluster id lives: the single node's home, or the parent of the nodes' homes."""
    return settings.state_dir / ("kafka" if settings.kafka.brokers == 1 else "kafka-cluster")


def home(settings: QactlSettings, node: int = NODE_ID) -> Path:
    if settings.kafka.brokers == 1:
        return cluster_home(settings)
    return cluster_home(settings) / f"broker-{node}"


def data_dir(settings: QactlSettings, node: int = NODE_ID) -> Path:
    return home(settings, node) / "data"


def replication(settings: QactlSettings) -> Replication:
    return Replication.for_brokers(settings.kafka.brokers)


def java(required: bool = False) -> str:
    found = shutil.which("java")
    if found is None and required:
        raise PrerequisiteError("Java 17+ is not installed: apt-get install -y openjdk-17-jre-headless")
    return found or "java"


def resolve_jars(settings: QactlSettings, report: Report = lambda _: None) -> bool:
    """Jars of Kafka ``settings.kafka.version`` in the cache; True if Maven had to run."""
    return maven.copy_dependencies(
        maven.asset("kafka", "pom.xml"), libs_dir(settings), {"kafka.version": settings.kafka.version}, report
    )


def server_properties(settings: QactlSettings, node: int = NODE_ID) -> str:
    k = settings.kafka
    controller = f"{k.host}:{k.broker_controller_port(node)}"
    broker = f"{k.host}:{k.broker_port(node)}"
    if k.brokers == 1:
        quorum: dict[str, object] = {"controller.quorum.bootstrap.servers": controller}
    else:
        voters = ",".join(f"{n}@{k.host}:{k.broker_controller_port(n)}" for n in node_ids(settings))
        quorum = {"controller.quorum.voters": voters}
    rep = replication(settings)
    failover: dict[str, object] = {}
    if k.brokers > 1:
        # A broker killed outright is fenced after this session timeout, and only then do its
        # partitions get a new leader: 9 s by default, longer than the storage API waits for an
        # acknowledgement (5 s) before it answers 503. 3 s with a heartbeat every 0.5 s keeps a
        # failover inside it; the quorum notices a dead controller as quickly.
        failover = {
            "broker.session.timeout.ms": 3000,
            "broker.heartbeat.interval.ms": 500,
            "controller.quorum.fetch.timeout.ms": 1500,
            "controller.quorum.election.timeout.ms": 750,
        }
    lines = {
        "process.roles": "broker,controller",
        "node.id": node,
        **quorum,
        "listeners": f"PLAINTEXT://{broker},CONTROLLER://{controller}",
        "advertised.listeners": f"PLAINTEXT://{broker},CONTROLLER://{controller}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": data_dir(settings, node),
        "num.partitions": 1,
        "auto.create.topics.enable": "false",
        # Internal topics replicated like ours (one replica on one node; 3, min ISR 2 on three).
        "default.replication.factor": rep.factor,
        "min.insync.replicas": rep.min_insync,
        "offsets.topic.replication.factor": rep.factor,
        "offsets.topic.num.partitions": 10,
        "transaction.state.log.replication.factor": rep.factor,
        "transaction.state.log.min.isr": rep.min_insync,
        "share.coordinator.state.topic.replication.factor": rep.factor,
        "share.coordinator.state.topic.min.isr": rep.min_insync,
        # A broker back from a crash takes its partitions' leadership back once in sync.
        "auto.leader.rebalance.enable": "true",
        "leader.imbalance.check.interval.seconds": 30,
        **failover,
        # Consumers of a fresh group start at once instead of waiting 3 s for more members.
        "group.initial.rebalance.delay.ms": 0,
        "log.retention.hours": 168,
        "log.segment.bytes": 64 * 1024 * 1024,
        "num.network.threads": 2,
        "num.io.threads": 4,
    }
    return "".join(f"{key}={value}\n" for key, value in lines.items())


LOG4J2 = """\
# Everything to stdout: the qactl supervisor writes it to state_dir/logs/kafka.log.
# WARN by default (INFO would log every partition load and group rebalance); start, stop and
# the controller's topic changes stay at INFO.
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.raftserver.name = kafka.server.KafkaRaftServer
logger.raftserver.level = INFO
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = INFO
logger.controllerserver.name = kafka.server.ControllerServer
logger.controllerserver.level = INFO
logger.replication.name = org.apache.kafka.controller.ReplicationControlManager
logger.replication.level = INFO
"""


def cluster_id(settings: QactlSettings) -> str:
    """The cluster id, generated once and kept in the state dir (format needs it)."""
    path = cluster_home(settings) / "cluster-id"
    if path.exists():
        return path.read_text().strip()
    while True:
        # Kafka's Uuid: 16 random bytes, URL-safe base64 without padding, never starting with "-".
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not candidate.startswith("-"):
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(candidate + "\n")
    return candidate


def write_config(settings: QactlSettings, node: int = NODE_ID) -> None:
    base = home(settings, node)
    base.mkdir(parents=True, exist_ok=True)
    (base / "tmp").mkdir(exist_ok=True)
    (base / "server.properties").write_text(server_properties(settings, node))
    (base / "log4j2.properties").write_text(LOG4J2)


def _class_path(settings: QactlSettings) -> list[str]:
    """What the broker's class-data archive depends on: the jars (named by their marker)."""
    try:
        marker = (libs_dir(settings) / maven.MARKER).read_text().strip()
    except OSError:
        marker = "unresolved"
    return [str(libs_dir(settings)), marker]


def cds_dir(settings: QactlSettings, node: int = NODE_ID) -> Path:
    return home(settings, node) / "cds"


def _java_argv(
    settings: QactlSettings, main_class: str, *args: str, jvm_flags: tuple[str, ...] = (), node: int = NODE_ID
) -> list[str]:
    heap = settings.kafka.heap_mb
    return [
        java(),
        *jvm_flags,
        f"-Xmx{heap}m",
        f"-Xms{min(heap, 256)}m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        # Native libraries (lz4, zstd, snappy) are unpacked there; a killed broker leaves them.
        f"-Djava.io.tmpdir={home(settings, node) / 'tmp'}",
        f"-Dlog4j2.configurationFile={home(settings, node) / 'log4j2.properties'}",
        "-cp",
        f"{libs_dir(settings)}/*",
        main_class,
        *args,
    ]


def format_storage(settings: QactlSettings, report: Report = lambda _: None, node: int = NODE_ID) -> bool:
    """Format the KRaft log dir on first start; True if it did."""
    if (data_dir(settings, node) / "meta.properties").exists():
        return False
    report(f"formatting KRaft storage of {process_name(settings, node)}")
    # One node: a dynamic quorum of itself. Several: the static voters of server.properties.
    standalone = ["--standalone"] if settings.kafka.brokers == 1 else []
    argv = _java_argv(
        settings,
        "kafka.tools.StorageTool",
        "format",
        *standalone,
        "--ignore-formatted",
        "--cluster-id",
        cluster_id(settings),
        "--config",
        str(home(settings, node) / "server.properties"),
        node=node,
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise ProvisionError(f"formatting Kafka storage failed:\n{(done.stdout + done.stderr).strip()[-2000:]}")
    return True


def provision(settings: QactlSettings, report: Report) -> None:
    java(required=True)
    resolve_jars(settings, report)
    for node in node_ids(settings):
        write_config(settings, node)
        format_storage(settings, report, node)
        jvm.prepare_archives(cds_dir(settings, node), "kafka", _class_path(settings))


def broker_health(settings: QactlSettings, node: int = NODE_ID) -> Health:
    """This node answers metadata requests and is a registered broker (topics not required)."""
    k = settings.kafka
    address = f"{k.host}:{k.broker_port(node)}"
    if not port_is_listening(k.broker_port(node), k.host):
        # Cheap check first: the admin client would spend its whole timeout on a closed port.
        return Health(False, f"waiting for {address} to listen")
    info = kafka_admin.cluster_info(address, timeout=2.0)
    if info.brokers < 1:
        return Health(False, "no broker in metadata")
    if k.brokers > 1 and node not in info.broker_ids:
        return Health(False, f"node {node} not registered yet ({info.brokers} brokers)")
    return Health(True, f"{info.brokers} broker", {"brokers": info.brokers})


def health(settings: QactlSettings, supervisor: Supervisor | None = None) -> Health:
    """Brokers reachable and every declared topic present with its partitions.

    With several brokers, one not running is unhealthy (the pipeline goes on, under-replicated,
    and `qactl up` starts it again); partitions whose in-sync replicas are not whole yet (a broker
    catching up) are counted in the detail line without making the cluster unhealthy.
    """
    down = [name for name in process_names(settings) if supervisor is not None and not supervisor.is_running(name)]
    if supervisor is not None and len(down) == settings.kafka.brokers:
        return Health(False, f"{', '.join(down)} not running")
    try:
        info = kafka_admin.cluster_info(settings.kafka.bootstrap, timeout=3.0)
    except Exception as exc:
        return Health(False, f"broker unreachable at {settings.kafka.bootstrap}: {exc}")
    wanted = all_topics(settings.policies)
    missing = [t.name for t in wanted if t.name not in info.topics]
    data: dict[str, object] = {"brokers": info.brokers, "topics": info.topics, "missing_topics": missing}
    if info.brokers < 1:
        return Health(False, "no broker in metadata", data)
    present = len(wanted) - len(missing)
    detail = f"{info.brokers} broker{'s' if info.brokers > 1 else ''}, {present}/{len(wanted)} topics"
    if missing:
        return Health(False, f"{detail}; missing: {', '.join(missing)}", data)
    if info.brokers > 1 or settings.kafka.brokers > 1:
        rep = replication(settings) if not settings.kafka.external else None
        try:
            partitions = kafka_admin.partition_replicas(settings.kafka.bootstrap, [t.name for t in wanted], timeout=3.0)
        except Exception as exc:
            return Health(False, f"{detail}; replicas unknown: {exc}", data)
        short = [p for p in partitions if not p.whole]
        data["under_replicated"] = len(short)
        detail += f", RF {rep.factor} min ISR {rep.min_insync}" if rep else ""
        if down:
            return Health(False, f"{detail}; not running: {', '.join(down)}", data)
        if short:
            return Health(True, f"{detail}; {len(short)} partition(s) catching up", data)
    return Health(True, detail, data)


def create_topics(settings: QactlSettings, report: Report) -> bool:
    # Ours: the replication of the brokers we run; external: from the brokers the cluster has.
    rep = None if settings.kafka.external else replication(settings)
    created = kafka_admin.ensure_topics(settings.kafka.bootstrap, all_topics(settings.policies), replication=rep)
    if created:
        report(f"created topics: {', '.join(created)}")
    return bool(created)


def process(settings: QactlSettings, node: int = NODE_ID) -> ProcessSpec:
    k = settings.kafka
    return ProcessSpec(
        name=process_name(settings, node),
        argv=_java_argv(
            settings,
            "kafka.Kafka",
            str(home(settings, node) / "server.properties"),
            jvm_flags=tuple(jvm.cds_flags(cds_dir(settings, node), "kafka", _class_path(settings))),
            node=node,
        ),
        ports=(
            Port(k.broker_port(node), "QACTL_KAFKA__PORT", k.host),
            Port(k.broker_controller_port(node), "QACTL_KAFKA__CONTROLLER_PORT", k.host),
        ),
        cwd=home(settings, node),
        # A first stop also writes the class-data archive (jvm.py): give it time before SIGKILL.
        stop_timeout=90.0,
        start_timeout=180.0,
        health=lambda: broker_health(settings, node),
    )


def processes(settings: QactlSettings) -> list[ProcessSpec]:
    return [process(settings, node) for node in node_ids(settings)]


def stop_together(settings: QactlSettings, supervisor: Supervisor, report: Report) -> None:
    """SIGTERM to every broker at once before `down` waits for each in turn.

    One after the other, each controlled shutdown waits for a quorum that the previous stops
    have thinned out (about a minute each on this box); together they take one such wait.
    """
    if settings.kafka.brokers == 1:
        return
    running = [name for name in process_names(settings) if supervisor.is_running(name)]
    for name in running:
        pid = supervisor.state(name).pid
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGTERM)  # its own session: the broker's group is its pid
            except ProcessLookupError:
                continue
    if running:
        report(f"stopping {', '.join(running)} together")


def components(settings: QactlSettings) -> list[Component]:
    k = settings.kafka
    if k.external:
        return [
            Component(
                name="kafka",
                health=lambda: health(settings),
                after_start=lambda report: create_topics(settings, report),
                external=True,
                endpoint=k.bootstrap,
            )
        ]
    supervisor = Supervisor(settings)
    return [
        Component(
            name="kafka",
            health=lambda: health(settings, supervisor),
            processes=lambda: processes(settings),
            provision=lambda report: provision(settings, report),
            after_start=lambda report: create_topics(settings, report),
            before_stop=lambda report: stop_together(settings, supervisor, report),
            endpoint=k.bootstrap,
        )
    ]
