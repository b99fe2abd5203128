"""One component of the stack per container: the runtime's own ``ProcessSpec``, run in the foreground.

``compose/`` runs every process of the stack in a container of its own. Each container runs
``qactl container run NAME``, which provisions NAME the way ``qactl up`` does (config files,
initdb, KRaft format) and then *becomes* the process (``execve`` of the spec's argv, with the
spec's environment and settings file), so the container's main process is the same command line
``qactl up`` would supervise. Settings come from ``QACTL_*`` variables of the container.

What only a container needs:

- Kafka runs as a 3-node KRaft quorum (every node broker + controller, static voters), so
  ``kafka-N`` gets its node id from its name, the voters from ``QACTL_CONTAINER_KAFKA_VOTERS``
  and one cluster id for all from ``QACTL_CONTAINER_KAFKA_CLUSTER_ID``; topics and internal
  topics are replicated 3 times with ``min.insync.replicas`` 2.
- PostgreSQL accepts the compose network (``samenet``), with passwords as on loopback natively.
- The credentials are the stack's own (``credentials.py``), generated once by the one-shot
  ``qactl container credentials`` into a volume that every container mounts at
  ``<state dir>/secrets``.
- A container's own infrastructure component is never "external", whatever the shared
  environment says about where the others find it.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from qactl.errors import ConfigError, ProvisionError
from qactl.runtime import flink, kafka, llm_server, postgres, redis, score_job, services
from qactl.runtime.component import Report
from qactl.runtime.supervisor import Health, ProcessSpec, child_environment, demote_fn
from services.common.settings import SETTINGS_FILE_ENV, QactlSettings, write_settings_file

KAFKA_VOTERS_ENV = "QACTL_CONTAINER_KAFKA_VOTERS"  # "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
KAFKA_CLUSTER_ID_ENV = "QACTL_CONTAINER_KAFKA_CLUSTER_ID"
# Optional "HOST:PORT" clients outside the compose network reach this broker at (a published
# port); the broker then also listens on 0.0.0.0:PORT and advertises HOST:PORT there.
KAFKA_EXTERNAL_ENV = "QACTL_CONTAINER_KAFKA_EXTERNAL"
KAFKA_NAME = re.compile(r"^kafka-(\d+)$")
PG_HBA_LINE = "host all all samenet scram-sha-256  # qactl container: the compose network\n"


@dataclass(frozen=True)
class Runnable:
    """What ``run`` needs of a component: its process and how to prepare it."""

    spec: ProcessSpec
    provision: Callable[[Report], object]


def _own(settings: QactlSettings, section: str, **fields: object) -> QactlSettings:
    """``settings`` with one section changed (e.g. its endpoint made local again)."""
    current = getattr(settings, section)
    return settings.model_copy(update={section: current.model_copy(update=fields)})


def runnable(name: str, settings: QactlSettings) -> Runnable:
    """The process called ``name`` with the runtime's declaration of it."""
    if match := KAFKA_NAME.match(name):
        return _kafka_node(int(match.group(1)), _own(settings, "kafka", bootstrap_servers=None))
    if name in (flink.JOBMANAGER, flink.TASKMANAGER) or name.startswith(flink.TASKMANAGER + "-"):
        own = _own(settings, "flink", rest_url=None)
        role = flink.JOBMANAGER if name == flink.JOBMANAGER else flink.TASKMANAGER
        spec = next(s for s in flink.processes(own) if s.name == role)
        return Runnable(spec, lambda report: flink.provision(own, report))
    if name == "postgres":
        own = _own(settings, "postgres", dsn=None)
        return Runnable(postgres.process(own), lambda report: _provision_postgres(own, report))
    if name == "redis":
        own = _own(settings, "redis", url=None)
        return Runnable(redis.process(own), lambda report: redis.provision(own, report))
    if name == llm_server.NAME:
        return Runnable(llm_server.process(settings), lambda report: llm_server.provision(settings, report))
    for component in services.components(settings):
        for spec in component.processes():
            if spec.name == name:
                return Runnable(spec, lambda report: None)
    raise ConfigError(f"no process called {name!r} in the stack ({', '.join(names(settings))})")


def names(settings: QactlSettings) -> list[str]:
    """The processes a container can run (kafka-N for every N)."""
    found = ["kafka-N", flink.JOBMANAGER, flink.TASKMANAGER, "postgres", "redis", llm_server.NAME]
    return found + [spec.name for c in services.components(settings) for spec in c.processes()]


def run(name: str, settings: QactlSettings, report: Report) -> None:
    """Provision ``name`` and replace this process with it (never returns)."""
    runnable(name, settings).provision(report)
    # Declared again: provisioning decides part of it (a TaskManager's resource id, new at each
    # start and read from its file: declared before, both TaskManagers had the default one and
    # took each other's registration at the JobManager).
    spec = runnable(name, settings).spec
    env = child_environment(spec.env)
    if spec.settings is not None:
        path = settings.run_dir / f"{spec.name}.settings.json"
        env[SETTINGS_FILE_ENV] = str(write_settings_file(spec.settings, path))
    if spec.cwd is not None:
        os.chdir(spec.cwd)
    demote = demote_fn(spec.run_as)
    if demote is not None:
        demote()
    report(f"exec {spec.argv[0]} ({spec.name})")
    os.execvpe(spec.argv[0], list(spec.argv), env)


def health(name: str, settings: QactlSettings) -> Health:
    """The runtime's health probe of ``name`` (what `qactl up` waits for)."""
    spec = runnable(name, settings).spec
    if spec.health is None:
        return Health(True, "no probe")
    try:
        return spec.health()
    except Exception as exc:  # a probe that raises is simply not healthy
        return Health(False, str(exc) or type(exc).__name__)


# --- Kafka: one node of a KRaft quorum -------------------------------------------------------


def _kafka_node(node_id: int, settings: QactlSettings) -> Runnable:
    return Runnable(kafka.process(settings), lambda report: _provision_kafka_node(node_id, settings, report))


def kafka_node_properties(settings: QactlSettings, node_id: int, voters: str, external: str | None = None) -> str:
    """The single node's server.properties with what a node of a replicated quorum changes."""
    single = dict(line.split("=", 1) for line in kafka.server_properties(settings).splitlines() if "=" in line)
    changed = {
        "node.id": str(node_id),
        "controller.quorum.voters": voters,
        "offsets.topic.replication.factor": "3",
        "transaction.state.log.replication.factor": "3",
        "transaction.state.log.min.isr": "2",
        "share.coordinator.state.topic.replication.factor": "3",
        "share.coordinator.state.topic.min.isr": "2",
        # Topics that qactl creates take the cluster's default (replication_factor=-1).
        "default.replication.factor": "3",
        "min.insync.replicas": "2",
        "num.partitions": "1",
        # A broker killed outright is fenced after the session timeout, and only then are its
        # partitions led again: 9 s by default, longer than the storage API waits for an
        # acknowledgement before it answers 503. The native cluster uses the same values.
        "broker.session.timeout.ms": "3000",
        "broker.heartbeat.interval.ms": "500",
        "controller.quorum.fetch.timeout.ms": "1500",
        "controller.quorum.election.timeout.ms": "750",
    }
    if external:
        port = external.rpartition(":")[2]
        changed["listeners"] = f"{single['listeners']},EXTERNAL://0.0.0.0:{port}"
        changed["advertised.listeners"] = f"{single['advertised.listeners']},EXTERNAL://{external}"
        changed["listener.security.protocol.map"] = f"{single['listener.security.protocol.map']},EXTERNAL:PLAINTEXT"
    dropped = {"controller.quorum.bootstrap.servers"}  # a dynamic quorum's; ours is static
    lines = []
    for line in kafka.server_properties(settings).splitlines():
        key = line.partition("=")[0]
        if key in dropped or key in changed:
            continue
        lines.append(line)
    lines += [f"{key}={value}" for key, value in changed.items()]
    return "\n".join(lines) + "\n"


def _provision_kafka_node(node_id: int, settings: QactlSettings, report: Report) -> None:
    voters = os.environ.get(KAFKA_VOTERS_ENV)
    cluster_id = os.environ.get(KAFKA_CLUSTER_ID_ENV)
    if not voters or not cluster_id:
        raise ConfigError(f"kafka-{node_id} needs {KAFKA_VOTERS_ENV} and {KAFKA_CLUSTER_ID_ENV}")
    kafka.java(required=True)
    kafka.resolve_jars(settings, report)
    kafka.write_config(settings)
    home = kafka.home(settings)
    (home / "cluster-id").write_text(cluster_id + "\n")
    properties = kafka_node_properties(settings, node_id, voters, os.environ.get(KAFKA_EXTERNAL_ENV) or None)
    (home / "server.properties").write_text(properties)
    if not (kafka.data_dir(settings) / "meta.properties").exists():
        report(f"formatting KRaft storage of node {node_id}")
        argv = [
            kafka.java(), "-cp", f"{kafka.libs_dir(settings)}/*",
            f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
            "kafka.tools.StorageTool", "format", "--ignore-formatted",
            "--cluster-id", cluster_id, "--config", str(home / "server.properties"),
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise ProvisionError(f"formatting Kafka storage failed:\n{(done.stdout + done.stderr).strip()[-2000:]}")
    kafka.cds_dir(settings).mkdir(parents=True, exist_ok=True)  # the JVM's class-data archive (jvm.py)


# --- PostgreSQL: the compose network as its loopback, with passwords ---------------------------


def _provision_postgres(settings: QactlSettings, report: Report) -> None:
    postgres.provision(settings, report)
    hba = postgres.data_dir(settings) / "pg_hba.conf"
    if PG_HBA_LINE not in hba.read_text():
        with hba.open("a") as fh:
            fh.write(PG_HBA_LINE)


# --- one-shot jobs: what `qactl up` does after the processes are healthy ---------------------


def setup(settings: QactlSettings, report: Report) -> None:
    """Topics on the cluster, the database and its migrations (idempotent)."""
    kafka.create_topics(settings, report)
    postgres.setup(_own(settings, "postgres", dsn=None), report, create_database=True)


def submit_job(settings: QactlSettings, report: Report) -> bool:
    """The score job on the compose Flink cluster, unless it already runs (idempotent)."""
    own = _own(settings, "flink", rest_url=None)
    flink.write_config(own)
    flink.resolve_connector(own, report)
    flink.link_libs(own)
    return score_job.submit(own, report)


def provision_image(settings: QactlSettings, report: Report) -> None:
    """What an image needs before it runs anything: the jars and the scorer's ONNX export."""
    kafka.resolve_jars(settings, report)
    flink.resolve_connector(settings, report)
    score_job.prepare_scorer_model(settings, report)
