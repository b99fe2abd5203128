"""One generic way to run a process of the stack: start, pid file, log file, health, stop.

A component declares what to run (``ProcessSpec``); the supervisor does the rest the same way
for Kafka, Flink, PostgreSQL, Redis and every pipeline service. Processes outlive ``qactl up``
(each in its own session) and are found again through their pid files; nothing restarts them
but the operator.

A process that carries the qactl configuration (``ProcessSpec.settings``) gets all of it from one
file, ``run/<name>.settings.json`` (mode 0600), named by ``QACTL_SETTINGS_FILE``; no child
inherits the caller's ``QACTL_*`` variables.
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

import psutil

from qactl.errors import ComponentFailed, PortInUseError
from services.common.settings import SETTINGS_FILE_ENV, QactlSettings, write_settings_file
from services.common.waiting import Deadline, poll_until


NO_PROBE_GRACE_SECONDS = 1.0


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str
    data: Mapping[str, object] = field(default_factory=dict)


START_MARKER = "--- qactl starting"  # the line ``start`` writes into the log before each launch
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
    settings: QactlSettings | None = None  # handed to the child in its settings file
    # One line saying why the process exited during start, read from its log of this start;
    # None when the log does not say (then the log's last lines are shown instead).
    start_error: Callable[[str], str | None] | None = None


@dataclass(frozen=True)
class ProcessState:
    name: str
    running: bool
    pid: int | None
    exit_code: int | None = None


def _start_time(pid: int) -> float | None:
    """When a pid started: tells our process from a later one that reused its pid."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _same_start(now: float | None, recorded: object) -> bool:
    """psutil derives a start time from the boot time, which the kernel recomputes from the wall
    clock: two reads of one process can differ by a second when the clock was adjusted between
    them. A pid reused within that second is the one case this lets through."""
    return now is not None and isinstance(recorded, (int, float)) and abs(now - recorded) <= 1.0


def _is_alive(pid: int) -> bool:
    """A zombie (exited, not yet reaped) counts as gone."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def child_environment(spec_env: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without its ``QACTL_*`` variables, plus the spec's own: a child's
    qactl configuration comes from its settings file, never from whoever ran ``qactl up``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("QACTL_")}
    return {**inherited, **spec_env}


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

    def settings_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.settings.json"

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
        alive = _same_start(_start_time(pid), record.get("start_time")) and _is_alive(pid)
        return ProcessState(name, running=alive, pid=pid)

    def is_running(self, name: str) -> bool:
        return self.state(name).running

    def check_ports(self, spec: ProcessSpec, grace: float = PORT_GRACE_SECONDS) -> None:
        """Raise ``PortInUseError`` for a port still taken after ``grace`` seconds: a process
        killed a moment ago may hold its listening socket until the kernel has reaped it."""
        deadline = Deadline(grace)
        for port in spec.ports:
            free = poll_until(lambda: port_is_free(port.number, port.host), timeout=deadline.left(), interval=0.1)
            if not free:
                raise PortInUseError(port.number, spec.name, port.setting)

    def start(self, spec: ProcessSpec) -> int:
        """Start ``spec`` unless it already runs; return its pid. Health is the caller's to await."""
        current = self.state(spec.name)
        if current.running:
            return current.pid  # type: ignore[return-value]
        self.check_ports(spec)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file(spec.name), "ab", buffering=0)
        log.write(f"\n{START_MARKER} {spec.name} at {time.strftime('%Y-%m-%dT%H:%M:%S')} ---\n".encode())
        env = child_environment(spec.env)
        if spec.settings is not None:
            env[SETTINGS_FILE_ENV] = str(write_settings_file(spec.settings, self.settings_file(spec.name)))
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
            "start_time": _start_time(proc.pid),
            "argv": list(spec.argv),
            "ports": [p.number for p in spec.ports],
            "started_at": time.time(),
        }
        self.pid_file(spec.name).write_text(json.dumps(record))
        return proc.pid

    def wait_healthy(self, spec: ProcessSpec, on_wait: Callable[[str], None] | None = None) -> Health:
        """Poll ``spec.health`` until ok; fail fast if the process died, with its log's tail."""
        waited = Deadline(spec.start_timeout)

        def probe() -> Health:
            if not self.is_running(spec.name):
                reason = spec.start_error(self.log_of_last_start(spec.name)) if spec.start_error else None
                if reason:
                    log = self.log_file(spec.name)
                    raise ComponentFailed(f"{spec.name} exited during start: {reason} (log: {log})")
                raise ComponentFailed(
                    f"{spec.name} exited during start; last log lines:\n{self.tail(spec.name, 15)}"
                )
            if spec.health is None:
                # No probe: alive after a short grace period is all we can know.
                graced = waited.elapsed() >= NO_PROBE_GRACE_SECONDS
                return Health(True, "running") if graced else Health(False, "starting")
            try:
                return spec.health()
            except Exception as exc:  # a probe that raises is simply not healthy yet
                return Health(False, str(exc) or type(exc).__name__)

        report = None if on_wait is None or spec.health is None else (lambda h: on_wait(h.detail))
        last = poll_until(
            probe,
            timeout=waited.left(),
            interval=0.25 if spec.health is not None else 0.1,
            done=lambda h: h.ok,
            on_wait=report,
        )
        if last.ok:
            return last
        raise ComponentFailed(
            f"{spec.name} not healthy after {spec.start_timeout:.0f}s ({last.detail}); "
            f"log: {self.log_file(spec.name)}\n{self.tail(spec.name, 15)}"
        )

    def stop(self, name: str, stop_signal: int = signal.SIGTERM, timeout: float = 30.0) -> bool:
        """Graceful stop of the whole process group, then forced. True if something was stopped."""
        current = self.state(name)
        if not current.running or current.pid is None:
            self._forget(name)
            return False
        pid = current.pid
        _signal_group(pid, stop_signal)
        group_gone = lambda: not _group_alive(pid)  # noqa: E731
        if not poll_until(group_gone, timeout=timeout, interval=0.1):
            _signal_group(pid, signal.SIGKILL)
            poll_until(group_gone, timeout=10, interval=0.1)
        self._forget(name)
        return True

    def _forget(self, name: str) -> None:
        self.pid_file(name).unlink(missing_ok=True)
        self.settings_file(name).unlink(missing_ok=True)

    def tail(self, name: str, lines: int = 20) -> str:
        return "\n".join(self._log_end(name).splitlines()[-lines:])

    def log_of_last_start(self, name: str) -> str:
        """What the process wrote since ``start`` last launched it (within the log's last 64 KiB)."""
        data = self._log_end(name)
        marker = data.rfind(f"{START_MARKER} {name} ")
        return data if marker < 0 else data[marker:].partition("\n")[2]

    def _log_end(self, name: str) -> str:
        try:
            with open(self.log_file(name), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 64 * 1024))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, sig)


def _group_alive(pid: int) -> bool:
    """True while any process of the group led by ``pid`` is alive (zombies count as gone)."""
    for proc in psutil.process_iter(["status"]):
        if proc.info["status"] in (None, psutil.STATUS_ZOMBIE):
            continue
        try:
            if os.getpgid(proc.pid) == pid:
                return True
        except ProcessLookupError:
            continue
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
