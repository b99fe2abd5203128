"""One generic way to run a process of the stack: start, pid file, log file, health, stop.

A component declares what to run (``ProcessSpec``); the supervisor does the rest the same way
for Kafka, Flink, PostgreSQL, Redis and every pipeline service. Processes outlive ``qactl up``
(each in its own session) and are found again through their pid files; nothing restarts them
but the operator.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qactl.errors import ComponentFailed, PortInUseError
from services.common.settings import QactlSettings


NO_PROBE_GRACE_SECONDS = 1.0


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str
    data: Mapping[str, object] = field(default_factory=dict)


PORT_GRACE_SECONDS = 3.0  # how long a port a just-killed process held may stay taken


@dataclass(frozen=True)
class Port:
    number: int
    setting: str  # the setting that moves it, e.g. "QACTL_KAFKA__PORT"
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class ProcessSpec:
    """What one process of a component is: everything the supervisor needs to run it."""

    name: str
    argv: Sequence[str]
    ports: Sequence[Port] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    run_as: str | None = None  # an OS user to drop to when qactl runs as root
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 30.0
    start_timeout: float = 60.0
    health: Callable[[], Health] | None = None


@dataclass(frozen=True)
class ProcessState:
    name: str
    running: bool
    pid: int | None
    exit_code: int | None = None


def _proc_start_time(pid: int) -> str | None:
    """Kernel start time of a pid: tells our process from a later one that reused its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 counts from after the parenthesised command name, which may contain spaces.
    return stat.rsplit(")", 1)[1].split()[19]


def child_environment(spec_env: Mapping[str, str]) -> dict[str, str]:
    """The environment a child inherits. When its spec carries the whole qactl configuration
    (``services.settings_env``), the caller's own ``QACTL_*`` variables are left out: a nested
    one such as ``QACTL_KAFKA__PORT`` would otherwise win over the configuration passed."""
    if "QACTL_STATE_DIR" not in spec_env:
        return dict(os.environ)
    return {k: v for k, v in os.environ.items() if not k.startswith("QACTL_")}


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_is_listening(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Supervisor:
    """Runs ``ProcessSpec``s with pid files under ``run_dir`` and logs under ``log_dir``."""

    def __init__(self, settings: QactlSettings) -> None:
        self.run_dir = settings.run_dir
        self.log_dir = settings.log_dir

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _read_pid(self, name: str) -> dict | None:
        try:
            record = json.loads(self.pid_file(name).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None

    def state(self, name: str) -> ProcessState:
        record = self._read_pid(name)
        if record is None:
            return ProcessState(name, running=False, pid=None)
        pid = int(record["pid"])
        alive = _proc_start_time(pid) == record.get("start_time") and not _is_zombie(pid)
        return ProcessState(name, running=alive, pid=pid)

    def is_running(self, name: str) -> bool:
        return self.state(name).running

    def check_ports(self, spec: ProcessSpec, grace: float = PORT_GRACE_SECONDS) -> None:
        """Raise ``PortInUseError`` for a port still taken after ``grace`` seconds: a process
        killed a moment ago may hold its listening socket until the kernel has reaped it."""
        deadline = time.monotonic() + grace
        for port in spec.ports:
            while not port_is_free(port.number, port.host):
                if time.monotonic() >= deadline:
                    raise PortInUseError(port.number, spec.name, port.setting)
                time.sleep(0.1)

    def start(self, spec: ProcessSpec) -> int:
        """Start ``spec`` unless it already runs; return its pid. Health is the caller's to await."""
        current = self.state(spec.name)
        if current.running:
            return current.pid  # type: ignore[return-value]
        self.check_ports(spec)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file(spec.name), "ab", buffering=0)
        log.write(f"\n--- qactl starting {spec.name} at {time.strftime('%Y-%m-%dT%H:%M:%S')} ---\n".encode())
        env = {**child_environment(spec.env), **spec.env}
        demote = demote_fn(spec.run_as)
        try:
            proc = subprocess.Popen(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=spec.cwd,
                env=env,
                start_new_session=True,
                preexec_fn=demote,
            )
        except OSError as exc:
            raise ComponentFailed(f"{spec.name}: cannot start {spec.argv[0]}: {exc}") from exc
        finally:
            log.close()
        record = {
            "pid": proc.pid,
            "start_time": _proc_start_time(proc.pid),
            "argv": list(spec.argv),
            "ports": [p.number for p in spec.ports],
            "started_at": time.time(),
        }
        self.pid_file(spec.name).write_text(json.dumps(record))
        return proc.pid

    def wait_healthy(self, spec: ProcessSpec, on_wait: Callable[[str], None] | None = None) -> Health:
        """Poll ``spec.health`` until ok; fail fast if the process died, with its log's tail."""
        started = time.monotonic()
        deadline = started + spec.start_timeout
        last = Health(False, "starting")
        while time.monotonic() < deadline:
            if not self.is_running(spec.name):
                raise ComponentFailed(
                    f"{spec.name} exited during start; last log lines:\n{self.tail(spec.name, 15)}"
                )
            if spec.health is None:
                # No probe: alive after a short grace period is all we can know.
                if time.monotonic() - started >= NO_PROBE_GRACE_SECONDS:
                    return Health(True, "running")
                time.sleep(0.1)
                continue
            try:
                last = spec.health()
            except Exception as exc:  # a probe that raises is simply not healthy yet
                last = Health(False, str(exc) or type(exc).__name__)
            if last.ok:
                return last
            if on_wait is not None:
                on_wait(last.detail)
            time.sleep(0.25)
        raise ComponentFailed(
            f"{spec.name} not healthy after {spec.start_timeout:.0f}s ({last.detail}); "
            f"log: {self.log_file(spec.name)}\n{self.tail(spec.name, 15)}"
        )

    def stop(self, name: str, stop_signal: int = signal.SIGTERM, timeout: float = 30.0) -> bool:
        """Graceful stop of the whole process group, then forced. True if something was stopped."""
        current = self.state(name)
        if not current.running or current.pid is None:
            self.pid_file(name).unlink(missing_ok=True)
            return False
        pid = current.pid
        _signal_group(pid, stop_signal)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.1)
        if _group_alive(pid):
            _signal_group(pid, signal.SIGKILL)
            kill_deadline = time.monotonic() + 10
            while time.monotonic() < kill_deadline and _group_alive(pid):
                time.sleep(0.1)
        self.pid_file(name).unlink(missing_ok=True)
        return True

    def tail(self, name: str, lines: int = 20) -> str:
        try:
            with open(self.log_file(name), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 64 * 1024))
                data = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(data.splitlines()[-lines:])


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, sig)


def _group_alive(pid: int) -> bool:
    """True while any process of the group led by ``pid`` is alive (zombies count as gone)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pid and fields[0] != "Z":
            return True
    return False


def demote_fn(user: str | None) -> Callable[[], None] | None:
    """Drop to ``user`` in the child when qactl runs as root (initdb and postgres refuse root)."""
    if user is None or os.geteuid() != 0:
        return None
    record = pwd.getpwnam(user)

    def demote() -> None:
        os.setgroups([])
        os.setgid(record.pw_gid)
        os.setuid(record.pw_uid)

    return demote
