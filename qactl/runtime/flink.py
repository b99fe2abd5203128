"""Flink standalone session cluster from PyFlink's bundled distribution.

PyFlink's wheel carries a Flink distribution (``bin/``, ``lib/``, ``opt/``, ``conf/``). qactl
runs its ``jobmanager.sh`` and ``taskmanager.sh`` in the foreground under the supervisor with:

- ``FLINK_CONF_DIR`` = ``state_dir/flink/conf`` (our ``config.yaml`` and a console-only log4j),
- ``FLINK_LIB_DIR``  = ``state_dir/flink/lib``: links to the bundled ``lib/*.jar`` plus the
  Kafka SQL connector resolved by Maven, so the connector is on the cluster's and the CLI's
  classpath and jobs need no ``pipeline.jars``,
- ``FLINK_LOG_DIR``  = ``state_dir/logs``.

Jobs are submitted with ``flink_cli()`` and ``flink_env()`` (see ``submit_argv``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

from qactl.client.flink_rest import FlinkRest
from qactl.errors import PrerequisiteError
from qactl.runtime import jvm, maven
from qactl.runtime.component import Component, Report
from qactl.runtime.supervisor import Health, Port, ProcessSpec, Supervisor
from services.common.settings import QactlSettings

JOBMANAGER = "flink-jobmanager"
TASKMANAGER = "flink-taskmanager"


def flink_home() -> Path:
    """The Flink distribution inside the installed ``pyflink`` package."""
    spec = importlib.util.find_spec("pyflink")
    if spec is None or spec.origin is None:
        raise PrerequisiteError("PyFlink is not installed in this Python: pip install 'apache-flink==2.2.*'")
    home = Path(spec.origin).parent
    if not (home / "bin" / "jobmanager.sh").exists() or not list((home / "lib").glob("flink-dist*.jar")):
        raise PrerequisiteError(f"PyFlink at {home} has no Flink distribution (bin/, lib/); reinstall apache-flink")
    return home


def base(settings: QactlSettings) -> Path:
    return settings.state_dir / "flink"


def checkpoints_dir(settings: QactlSettings) -> Path:
    """Retained checkpoints of the cluster's jobs: ``<job id>/chk-<n>/_metadata``."""
    return base(settings) / "checkpoints"


def savepoints_dir(settings: QactlSettings) -> Path:
    """Savepoints that `qactl down` takes of the score job: ``savepoint-<id>/_metadata``."""
    return base(settings) / "savepoints"


def conf_dir(settings: QactlSettings) -> Path:
    return base(settings) / "conf"


def lib_dir(settings: QactlSettings) -> Path:
    return base(settings) / "lib"


def connectors_dir(settings: QactlSettings) -> Path:
    return settings.cache_dir / f"flink-connectors-{settings.flink.connector_version}"


def flink_connector_jar(settings: QactlSettings) -> Path:
    """The ``flink-sql-connector-kafka`` jar in the cache (resolved by ``provision``)."""
    return connectors_dir(settings) / f"flink-sql-connector-kafka-{settings.flink.connector_version}.jar"


def flink_python_jar() -> Path:
    found = sorted((flink_home() / "opt").glob("flink-python*.jar"))
    if not found:
        raise PrerequisiteError(f"no flink-python jar in {flink_home() / 'opt'}; reinstall apache-flink")
    return found[0]


def flink_cli() -> Path:
    """The ``flink`` command-line script (``flink run -py job.py`` submits a PyFlink job)."""
    return flink_home() / "bin" / "flink"


def python_executable() -> str:
    """The Python that has PyFlink (qactl's venv): Flink's Python workers must use it too."""
    return sys.executable


SCORER_KNOBS = ("QACTL_SCORER_BACKEND", "QACTL_SCORER_THREADS")


def flink_env(settings: QactlSettings) -> dict[str, str]:
    """Environment for the Flink scripts (cluster and CLI) to use our config, libs and logs."""
    return {
        "FLINK_HOME": str(flink_home()),
        "FLINK_CONF_DIR": str(conf_dir(settings)),
        "FLINK_LIB_DIR": str(lib_dir(settings)),
        "FLINK_LOG_DIR": str(settings.log_dir),
        "PYFLINK_CLIENT_EXECUTABLE": python_executable(),
        # The job's Python workers keep the scorer's exported encoder there (flink/onnx_encoder.py).
        "QACTL_CACHE_DIR": str(settings.cache_dir),
        # The scorer's own knobs (flink/scoring.py), handed on: children inherit no QACTL_* variable.
        **{name: os.environ[name] for name in SCORER_KNOBS if name in os.environ},
        # The bundled scripts take the JVM from JAVA_HOME when set, else `java` on PATH.
        **({"JAVA_HOME": os.environ["JAVA_HOME"]} if "JAVA_HOME" in os.environ else {}),
    }


def submit_argv(
    settings: QactlSettings, script: Path, *job_args: str, detached: bool = True, restore_from: Path | None = None
) -> list[str]:
    """``flink run`` of a PyFlink script against this cluster; run it with ``flink_env``.

    ``restore_from``: a savepoint's or retained checkpoint's directory to start the job's state from.
    """
    argv = [str(flink_cli()), "run", "-m", rest_address(settings)]
    if detached:
        argv.append("-d")
    if restore_from is not None:
        argv += ["-s", str(restore_from)]
    # -pyfs ships the script's directory, so modules next to it import on the task managers.
    argv += ["-py", str(script), "-pyfs", str(script.parent)]
    return [*argv, *job_args]


def rest_address(settings: QactlSettings) -> str:
    return settings.flink.rest.removeprefix("http://").removeprefix("https://")


def resolve_connector(settings: QactlSettings, report: Report = lambda _: None) -> bool:
    """The Kafka connector jar in the cache; True if Maven had to run."""
    return maven.copy_dependencies(
        maven.asset("flink", "pom.xml"),
        connectors_dir(settings),
        {"flink.connector.kafka.version": settings.flink.connector_version},
        report,
    )


def cluster_config(settings: QactlSettings) -> dict[str, Any]:
    """config.yaml as flat keys: the bundled defaults (its JVM --add-opens) plus ours."""
    f = settings.flink
    bundled = yaml.safe_load((flink_home() / "conf" / "config.yaml").read_text()) or {}
    java_opts = bundled.get("env", {}).get("java", {}).get("opts", {}).get("all", "")
    b = base(settings)
    config: dict[str, Any] = {
        # Every Flink JVM's temporary files under the state dir, not in /tmp: `flink run` zips
        # the job's -pyfs directory there (one flink-distributed-cache-* per submission, never
        # removed), and a killed task manager leaves the native libraries it unpacked (lz4).
        "env.java.opts.all": f"{java_opts} -Djava.io.tmpdir={b / 'tmp'}".strip(),
        "env.pid.dir": str(b / "run"),
        "env.log.dir": str(settings.log_dir),
        "io.tmp.dirs": str(b / "tmp"),
        "web.tmpdir": str(b / "web"),
        "jobmanager.rpc.address": f.host,
        "jobmanager.rpc.port": f.rpc_port,
        "jobmanager.bind-host": f.host,
        "jobmanager.memory.process.size": f"{f.jobmanager_process_mb}m",
        # The job manager only coordinates: the quick C1 compiler alone cuts its start CPU by
        # about a quarter (measured 18-20 -> 14 CPU s) and its RSS; task managers keep C2.
        "env.java.opts.jobmanager": " ".join(["-XX:TieredStopAtLevel=1", *_cds(settings, "jobmanager")]),
        "env.java.opts.taskmanager": " ".join(_cds(settings, "taskmanager")),
        "jobmanager.execution.failover-strategy": "region",
        # Several task managers: a job's subtasks spread over them rather than filling the first.
        "cluster.evenly-spread-out-slots": f.taskmanagers > 1,
        "taskmanager.host": f.host,
        "taskmanager.bind-host": f.host,
        "taskmanager.numberOfTaskSlots": f.taskmanager_slots,
        "taskmanager.memory.process.size": f"{f.taskmanager_process_mb}m",
        # Ports other than REST and JobManager RPC are picked by the OS, so two stacks never clash.
        "taskmanager.rpc.port": "0",
        "taskmanager.data.port": 0,
        "blob.server.port": "0",
        "metrics.internal.query-service.port": "0",
        "rest.address": f.host,
        "rest.bind-address": f.host,
        "rest.port": f.rest_port,
        "parallelism.default": 1,
        # A killed task manager is noticed in 20 s rather than 50 s.
        "heartbeat.timeout": 20000,
        # The score job's state outlives the job: `qactl down` stops it with a savepoint, and a
        # job manager lost without one (kill -9, no HA) leaves its latest checkpoint here, kept
        # on cancellation too; `qactl up` resumes from the newest of them (score_job.py).
        "execution.checkpointing.dir": checkpoints_dir(settings).as_uri(),
        "execution.checkpointing.savepoint-dir": savepoints_dir(settings).as_uri(),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": 1,
        "python.executable": python_executable(),
        "python.client.executable": python_executable(),
    }
    config.update(f.extra_config)
    return config


def _class_path(settings: QactlSettings) -> list[str]:
    return [str(lib_dir(settings)), *(str(jar) for jar in sorted((flink_home() / "lib").glob("*.jar")))]


def _cds(settings: QactlSettings, role: str) -> list[str]:
    """Class-data sharing flags of the job or task manager JVM (see ``qactl.runtime.jvm``)."""
    return jvm.cds_flags(base(settings) / "cds", role, [*_class_path(settings), flink_connector_jar(settings)])


LOG4J_CONSOLE = """\
# Console only: the qactl supervisor writes stdout to state_dir/logs/<process>.log.
monitorInterval = 30
rootLogger.level = INFO
rootLogger.appenderRef.console.ref = ConsoleAppender
logger.pekko.name = org.apache.pekko
logger.pekko.level = WARN
logger.kafka.name = org.apache.kafka
logger.kafka.level = WARN
logger.netty.name = org.jboss.netty.channel.DefaultChannelPipeline
logger.netty.level = OFF
appender.console.name = ConsoleAppender
appender.console.type = CONSOLE
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yyyy-MM-dd HH:mm:ss,SSS} %-5p %-60c %x - %m%n
"""


def write_config(settings: QactlSettings) -> None:
    conf = conf_dir(settings)
    conf.mkdir(parents=True, exist_ok=True)
    for name in ("run", "tmp", "web", "checkpoints", "savepoints"):
        (base(settings) / name).mkdir(parents=True, exist_ok=True)
    for bundled in (flink_home() / "conf").iterdir():
        if bundled.is_file() and bundled.name not in ("config.yaml", "log4j-console.properties"):
            shutil.copyfile(bundled, conf / bundled.name)
    (conf / "log4j-console.properties").write_text(LOG4J_CONSOLE)
    (conf / "config.yaml").write_text(yaml.safe_dump(cluster_config(settings), sort_keys=True, width=10_000))


def link_libs(settings: QactlSettings) -> None:
    """Our lib dir: the distribution's jars plus the connector, as symlinks.

    Left alone when already right: a running cluster opens some jars lazily.
    """
    lib = lib_dir(settings)
    wanted = {jar.name: jar for jar in [*sorted((flink_home() / "lib").glob("*.jar")), flink_connector_jar(settings)]}
    if lib.is_dir():
        current = {link.name: Path(os.readlink(link)) for link in lib.iterdir() if link.is_symlink()}
        if current == wanted and len(list(lib.iterdir())) == len(wanted):
            return
        shutil.rmtree(lib)
    lib.mkdir(parents=True)
    for name, jar in wanted.items():
        (lib / name).symlink_to(jar)


def taskmanager_numbers(settings: QactlSettings) -> list[int]:
    return list(range(1, settings.flink.taskmanagers + 1))


def taskmanager_name(settings: QactlSettings, number: int = 1) -> str:
    """``flink-taskmanager`` for the only one; ``flink-taskmanager-<n>`` for several."""
    return TASKMANAGER if settings.flink.taskmanagers == 1 else f"{TASKMANAGER}-{number}"


def process_names(settings: QactlSettings) -> list[str]:
    return [JOBMANAGER, *(taskmanager_name(settings, n) for n in taskmanager_numbers(settings))]


def job_parallelism(settings: QactlSettings) -> int:
    """The score job's parallelism: 1 on one task manager; with several, one subtask per
    partition of llm-responses-success (each task manager needs that many slots to take the
    whole job over when another is lost)."""
    from services.common.topics import LLM_SUCCESS

    f = settings.flink
    if f.job_parallelism is not None:
        return f.job_parallelism
    return 1 if f.taskmanagers == 1 else LLM_SUCCESS.partitions


def taskmanager_id_file(settings: QactlSettings, number: int = 1) -> Path:
    suffix = "" if settings.flink.taskmanagers == 1 else f"-{number}"
    return base(settings) / f"taskmanager{suffix}-id"


def taskmanager_id(settings: QactlSettings, number: int = 1) -> str:
    """Resource id of task manager ``number`` as started last.

    A new one for every start: after a crash the job manager still lists the dead task manager
    until its heartbeat times out, and only the id tells the new registration from the old.
    """
    try:
        return taskmanager_id_file(settings, number).read_text().strip()
    except OSError:
        return f"qactl-taskmanager-{number}"


def _new_taskmanager_ids(settings: QactlSettings) -> None:
    supervisor = Supervisor(settings)
    for number in taskmanager_numbers(settings):
        if not supervisor.is_running(taskmanager_name(settings, number)):
            taskmanager_id_file(settings, number).write_text(f"qactl-tm{number}-{uuid.uuid4().hex[:8]}\n")


def provision(settings: QactlSettings, report: Report) -> None:
    if shutil.which("java") is None:
        raise PrerequisiteError("Java 17+ is not installed: apt-get install -y openjdk-17-jre-headless")
    resolve_connector(settings, report)
    for role in ("jobmanager", "taskmanager"):
        jvm.prepare_archives(base(settings) / "cds", role, [*_class_path(settings), flink_connector_jar(settings)])
    write_config(settings)
    link_libs(settings)
    _new_taskmanager_ids(settings)


def _script(name: str, *dynamic: str) -> list[str]:
    try:
        return ["bash", str(flink_home() / "bin" / name), "start-foreground", *dynamic]
    except PrerequisiteError:
        return ["false"]  # `qactl status` and `down` must work without PyFlink; start would fail


def _env(settings: QactlSettings) -> dict[str, str]:
    try:
        return flink_env(settings)
    except PrerequisiteError:
        return {}


def rest(settings: QactlSettings) -> FlinkRest:
    return FlinkRest(settings.flink.rest, timeout=3.0)


def jobmanager_health(settings: QactlSettings) -> Health:
    overview = rest(settings).overview()
    return Health(True, f"REST up, Flink {overview.flink_version}")


def taskmanager_health(settings: QactlSettings, number: int | None = None) -> Health:
    """Our task manager ``number`` (default: all of ours), by this start's resource id, is
    registered with the job manager."""
    numbers = taskmanager_numbers(settings) if number is None else [number]
    wanted = [taskmanager_id(settings, n) for n in numbers]
    registered = [tm.id for tm in rest(settings).taskmanagers()]
    missing = [w for w in wanted if w not in registered]
    if not missing:
        return Health(True, f"task manager {', '.join(wanted)} registered")
    return Health(False, f"task manager {', '.join(missing)} not registered yet ({len(registered)} registered)")


def processes(settings: QactlSettings) -> list[ProcessSpec]:
    f = settings.flink
    env = _env(settings)
    return [
        ProcessSpec(
            name=JOBMANAGER,
            argv=_script("jobmanager.sh"),
            ports=(
                Port(f.rest_port, "QACTL_FLINK__REST_PORT", f.host),
                Port(f.rpc_port, "QACTL_FLINK__RPC_PORT", f.host),
            ),
            env=env,
            cwd=base(settings),
            start_timeout=300.0,
            stop_timeout=90.0,  # a first stop also writes the class-data archive (jvm.py)
            health=lambda: jobmanager_health(settings),
        ),
        *(
            ProcessSpec(
                name=taskmanager_name(settings, number),
                argv=_script("taskmanager.sh", "-D", f"taskmanager.resource-id={taskmanager_id(settings, number)}"),
                env=env,
                cwd=base(settings),
                start_timeout=300.0,
                stop_timeout=90.0,  # a first stop also writes the class-data archive (jvm.py)
                health=lambda number=number: taskmanager_health(settings, number),
            )
            for number in taskmanager_numbers(settings)
        ),
    ]


def health(settings: QactlSettings, supervisor: Supervisor | None = None) -> Health:
    """Task managers registered, free slots and running jobs, from REST /overview."""
    if supervisor is not None:
        down = [name for name in process_names(settings) if not supervisor.is_running(name)]
        if down:
            return Health(False, f"not running: {', '.join(down)}")
    try:
        overview = rest(settings).overview()
    except Exception as exc:
        return Health(False, f"REST unreachable at {settings.flink.rest}: {exc}")
    data = {
        "taskmanagers": overview.taskmanagers,
        "slots_total": overview.slots_total,
        "slots_available": overview.slots_available,
        "jobs_running": overview.jobs_running,
        "flink_version": overview.flink_version,
    }
    detail = (
        f"{overview.taskmanagers} task manager(s), {overview.slots_available}/{overview.slots_total} "
        f"slots free, {overview.jobs_running} job(s) running"
    )
    if supervisor is not None:  # ours: the task manager we started must be the one registered
        ours = taskmanager_health(settings)
        if not ours.ok:
            return Health(False, f"{detail}; {ours.detail}", data)
    return Health(overview.taskmanagers >= 1, detail, data)


def components(settings: QactlSettings) -> list[Component]:
    f = settings.flink
    if f.external:
        return [Component(name="flink", health=lambda: health(settings), external=True, endpoint=f.rest)]
    supervisor = Supervisor(settings)
    return [
        Component(
            name="flink",
            health=lambda: health(settings, supervisor),
            processes=lambda: processes(settings),
            provision=lambda report: provision(settings, report),
            endpoint=f.rest,
        )
    ]
