"""`qactl doctor`: what the stack needs from the machine, each failing check with its fix.

A pure function of the settings and the environment (``PATH`` above all), so a test can hide a
binary by narrowing ``PATH``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from qactl.errors import QactlError
from services.common.settings import QactlSettings

DISK_WARN_BYTES = 5 * 1024**3
JAVA_MIN = 17


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # ok, but worth the operator's attention


def java_major(version_output: str) -> int | None:
    """Major version from ``java -version`` output: '"17.0.15"' -> 17, '"1.8.0_292"' -> 8."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match[1])
    return int(match[2] or 0) if major == 1 else major


def check_java() -> Check:
    fix = "apt-get install -y openjdk-17-jre-headless"
    java = shutil.which("java")
    if java is None:
        return Check("java", False, "java not found on PATH", fix)
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("java", False, f"{java} -version failed: {exc}", fix)
    output = done.stderr + done.stdout
    major = java_major(output)
    if major is None:
        return Check("java", False, f"cannot read the version of {java}", fix)
    if major < JAVA_MIN:
        return Check("java", False, f"Java {major} at {java}; Kafka 4 and Flink 2 need Java {JAVA_MIN}+", fix)
    return Check("java", True, f"Java {major} ({java})")


def check_maven(settings: QactlSettings) -> Check:
    from qactl.runtime import flink, kafka, maven

    mvn = shutil.which("mvn")
    if mvn is not None:
        return Check("maven", True, mvn)
    kafka_ready = kafka.libs_dir(settings).joinpath(maven.MARKER).exists() or settings.kafka.external
    flink_ready = flink.connectors_dir(settings).joinpath(maven.MARKER).exists() or settings.flink.external
    if kafka_ready and flink_ready:
        return Check("maven", True, "not on PATH, not needed: the jars are in the cache", warning=True)
    return Check("maven", False, "mvn not found on PATH (resolves the Kafka and Flink connector jars)", "apt-get install -y maven")


def check_postgres(settings: QactlSettings) -> Check:
    from qactl.runtime import postgres

    if settings.postgres.external:
        return Check("postgresql", True, "external DSN: not started by qactl")
    found = postgres.bin_dir()
    if found is None:
        return Check("postgresql", False, "initdb / postgres not found", postgres.INSTALL_HINT)
    detail = str(found)
    user = postgres.server_user(settings)
    if user is not None:
        try:
            postgres.check_reachable(_existing(settings.state_dir), user)
        except Exception as exc:
            return Check("postgresql", False, str(exc), "QACTL_STATE_DIR=/var/lib/qactl")
        detail += f" (runs as {user})"
    return Check("postgresql", True, detail)


def check_redis(settings: QactlSettings) -> Check:
    from qactl.runtime import redis

    if settings.redis.external:
        return Check("redis", True, "external URL: not started by qactl")
    found = shutil.which("redis-server")
    if found is None:
        return Check("redis", False, "redis-server not found on PATH", redis.INSTALL_HINT)
    return Check("redis", True, found)


def check_pyflink(settings: QactlSettings) -> Check:
    from qactl.errors import PrerequisiteError
    from qactl.runtime import flink

    if settings.flink.external:
        return Check("pyflink", True, "external Flink cluster: not started by qactl")
    try:
        home = flink.flink_home()
        jar = flink.flink_python_jar()
    except PrerequisiteError as exc:
        return Check("pyflink", False, str(exc), "pip install 'apache-flink==2.2.*'")
    return Check("pyflink", True, f"{home} ({jar.name})")


def check_llm_server(settings: QactlSettings) -> Check:
    """The local model server: built and fetched already, or what building it needs."""
    from qactl.runtime import llama_build, llm_server
    from services.common.backend_choice import resolve_backend_kind

    kind = resolve_backend_kind(settings)
    if kind != "local":
        return Check("llm server", True, f"not needed: llm.backend resolves to {kind}")
    binary, model = llm_server.binary(settings), llm_server.model_file(settings)
    if settings.llm_server.model_path is not None:
        try:
            llama_build.check_gguf(model)
        except QactlError as exc:
            return Check("llm server", False, str(exc), "point llm_server.model_path at a GGUF file, or unset it")
    if binary.is_file():
        cached = "model cached" if model.is_file() else f"model to fetch at the first `qactl up` ({llama_build.SMOLLM2_135M.size / 1e6:.0f} MB)"
        return Check("llm server", True, f"{binary} ({cached})")
    missing = llama_build.build_tools_missing()
    if missing:
        return Check(
            "llm server",
            False,
            f"llama-server is not built and building it needs {', '.join(missing)}",
            "apt-get install -y cmake g++, or run with the simulator: QACTL_LLM__BACKEND=simulated",
        )
    return Check(
        "llm server",
        True,
        f"to build at the first `qactl up` or `qactl llm build` (cmake and a compiler found; about "
        f"{llama_build.BUILD_MINUTES_ON_TWO_CORES} min on 2 cores, once per machine)",
        warning=True,
    )


def check_ports(settings: QactlSettings) -> list[Check]:
    """Every port a managed process binds: free, or held by that very process of ours."""
    from qactl.runtime.stack import declared_components
    from qactl.runtime.supervisor import Supervisor, port_is_free

    supervisor = Supervisor(settings)
    checks = []
    for component in declared_components(settings):
        if component.external:
            continue
        try:
            specs = list(component.processes())
        except Exception as exc:  # a declaration that cannot even be built is a finding too
            checks.append(Check(f"ports of {component.name}", False, f"cannot list its processes: {exc}"))
            continue
        for spec in specs:
            ours = supervisor.is_running(spec.name)
            for port in spec.ports:
                name = f"port {port.number}"
                if ours:
                    checks.append(Check(name, True, f"in use by {spec.name} (ours, running)"))
                elif port_is_free(port.number, port.host):
                    checks.append(Check(name, True, f"free for {spec.name}"))
                else:
                    checks.append(
                        Check(
                            name,
                            False,
                            f"needed by {spec.name}, in use by another program",
                            f"free it or set {port.setting}",
                        )
                    )
    return checks


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (the state dir may not exist yet)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(settings: QactlSettings) -> Check:
    where = _existing(settings.state_dir)
    free = shutil.disk_usage(where).free
    gib = free / 1024**3
    if free < DISK_WARN_BYTES:
        return Check(
            "disk",
            True,
            f"{gib:.1f} GiB free at {where}; Kafka, Flink and PostgreSQL want 5 GiB or more",
            "free space or set QACTL_STATE_DIR to a larger disk",
            warning=True,
        )
    return Check("disk", True, f"{gib:.0f} GiB free at {where}")


def check_state_dir(settings: QactlSettings) -> Check:
    where = _existing(settings.state_dir)
    if not os.access(where, os.W_OK | os.X_OK):
        return Check("state dir", False, f"{where} is not writable", "set QACTL_STATE_DIR to a writable directory")
    return Check("state dir", True, str(settings.state_dir))


def run_checks(settings: QactlSettings) -> list[Check]:
    return [
        check_java(),
        check_maven(settings),
        check_postgres(settings),
        check_redis(settings),
        check_pyflink(settings),
        check_llm_server(settings),
        check_state_dir(settings),
        check_disk(settings),
        *check_ports(settings),
    ]
