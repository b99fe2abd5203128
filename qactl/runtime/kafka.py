"""Kafka 4.x, single node, KRaft combined broker+controller, on jars resolved by Maven.

Layout: jars in ``cache_dir/kafka-<version>/libs``; config, cluster id and data under
``state_dir/kafka``. The broker logs to stdout (our log4j2 config), which the supervisor
writes to ``state_dir/logs/kafka.log``. Topics are created by ``after_start`` from
``services.common.topics`` with their partition counts; auto-creation is off so that a
misspelt topic name fails loudly instead of making a one-partition topic.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from pathlib import Path

from qactl.client import kafka_admin
from qactl.errors import PrerequisiteError, ProvisionError
from qactl.runtime import jvm, maven
from qactl.runtime.component import Component, Report
from qactl.runtime.supervisor import Health, Port, ProcessSpec, Supervisor, port_is_listening
from services.common.settings import QactlSettings
from services.common.topics import all_topics

NODE_ID = 1


def libs_dir(settings: QactlSettings) -> Path:
    return settings.cache_dir / f"kafka-{settings.kafka.version}" / "libs"


def home(settings: QactlSettings) -> Path:
    return settings.state_dir / "kafka"


def data_dir(settings: QactlSettings) -> Path:
    return home(settings) / "data"


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


def server_properties(settings: QactlSettings) -> str:
    k = settings.kafka
    controller = f"{k.host}:{k.controller_port}"
    lines = {
        "process.roles": "broker,controller",
        "node.id": NODE_ID,
        "controller.quorum.bootstrap.servers": controller,
        "listeners": f"PLAINTEXT://{k.host}:{k.port},CONTROLLER://{controller}",
        "advertised.listeners": f"PLAINTEXT://{k.host}:{k.port},CONTROLLER://{controller}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": data_dir(settings),
        "num.partitions": 1,
        "auto.create.topics.enable": "false",
        # One node: every internal topic has one replica.
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 10,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
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
    path = home(settings) / "cluster-id"
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


def write_config(settings: QactlSettings) -> None:
    base = home(settings)
    base.mkdir(parents=True, exist_ok=True)
    (base / "tmp").mkdir(exist_ok=True)
    (base / "server.properties").write_text(server_properties(settings))
    (base / "log4j2.properties").write_text(LOG4J2)


def _class_path(settings: QactlSettings) -> list[str]:
    """What the broker's class-data archive depends on: the jars (named by their marker)."""
    try:
        marker = (libs_dir(settings) / maven.MARKER).read_text().strip()
    except OSError:
        marker = "unresolved"
    return [str(libs_dir(settings)), marker]


def cds_dir(settings: QactlSettings) -> Path:
    return home(settings) / "cds"


def _java_argv(settings: QactlSettings, main_class: str, *args: str, jvm_flags: tuple[str, ...] = ()) -> list[str]:
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
        f"-Djava.io.tmpdir={home(settings) / 'tmp'}",
        f"-Dlog4j2.configurationFile={home(settings) / 'log4j2.properties'}",
        "-cp",
        f"{libs_dir(settings)}/*",
        main_class,
        *args,
    ]


def format_storage(settings: QactlSettings, report: Report = lambda _: None) -> bool:
    """Format the KRaft log dir on first start; True if it did."""
    if (data_dir(settings) / "meta.properties").exists():
        return False
    report("formatting KRaft storage")
    argv = _java_argv(
        settings,
        "kafka.tools.StorageTool",
        "format",
        "--standalone",
        "--ignore-formatted",
        "--cluster-id",
        cluster_id(settings),
        "--config",
        str(home(settings) / "server.properties"),
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise ProvisionError(f"formatting Kafka storage failed:\n{(done.stdout + done.stderr).strip()[-2000:]}")
    return True


def provision(settings: QactlSettings, report: Report) -> None:
    java(required=True)
    resolve_jars(settings, report)
    write_config(settings)
    format_storage(settings, report)
    jvm.prepare_archives(cds_dir(settings), "kafka", _class_path(settings))


def broker_health(settings: QactlSettings) -> Health:
    """The broker answers metadata requests (topics not required)."""
    if not port_is_listening(settings.kafka.port, settings.kafka.host):
        # Cheap check first: the admin client would spend its whole timeout on a closed port.
        return Health(False, f"waiting for {settings.kafka.bootstrap} to listen")
    info = kafka_admin.cluster_info(settings.kafka.bootstrap, timeout=2.0)
    if info.brokers < 1:
        return Health(False, "no broker in metadata")
    return Health(True, f"{info.brokers} broker", {"brokers": info.brokers})


def health(settings: QactlSettings, supervisor: Supervisor | None = None) -> Health:
    """Broker reachable and every declared topic present with its partitions."""
    if supervisor is not None and not supervisor.is_running("kafka"):
        return Health(False, "kafka process not running")
    try:
        info = kafka_admin.cluster_info(settings.kafka.bootstrap, timeout=3.0)
    except Exception as exc:
        return Health(False, f"broker unreachable at {settings.kafka.bootstrap}: {exc}")
    wanted = all_topics(settings.policies)
    missing = [t.name for t in wanted if t.name not in info.topics]
    data = {"brokers": info.brokers, "topics": info.topics, "missing_topics": missing}
    if info.brokers < 1:
        return Health(False, "no broker in metadata", data)
    present = len(wanted) - len(missing)
    detail = f"{info.brokers} broker, {present}/{len(wanted)} topics"
    if missing:
        return Health(False, f"{detail}; missing: {', '.join(missing)}", data)
    return Health(True, detail, data)


def create_topics(settings: QactlSettings, report: Report) -> bool:
    created = kafka_admin.ensure_topics(settings.kafka.bootstrap, all_topics(settings.policies))
    if created:
        report(f"created topics: {', '.join(created)}")
    return bool(created)


def process(settings: QactlSettings) -> ProcessSpec:
    k = settings.kafka
    return ProcessSpec(
        name="kafka",
        argv=_java_argv(
            settings,
            "kafka.Kafka",
            str(home(settings) / "server.properties"),
            jvm_flags=tuple(jvm.cds_flags(cds_dir(settings), "kafka", _class_path(settings))),
        ),
        ports=(
            Port(k.port, "QACTL_KAFKA__PORT", k.host),
            Port(k.controller_port, "QACTL_KAFKA__CONTROLLER_PORT", k.host),
        ),
        cwd=home(settings),
        # A first stop also writes the class-data archive (jvm.py): give it time before SIGKILL.
        stop_timeout=90.0,
        start_timeout=180.0,
        health=lambda: broker_health(settings),
    )


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
            processes=lambda: [process(settings)],
            provision=lambda report: provision(settings, report),
            after_start=lambda report: create_topics(settings, report),
            endpoint=k.bootstrap,
        )
    ]
