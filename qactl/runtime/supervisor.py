"""One generic way to run a process of the stack: start, pid file, log file, health, stop.

A component declares what to run (``ProcessSpec``); the supervisor does the rest the same way
for Kafka, Flink, PostgreSQL, Redis and every pipeline service. Each process runs under a
keeper (``qactl/runtime/keeper.py``), a small process in a session of its own that outlives
``qactl up``, restarts the process with backoff when it dies after it was healthy, and kills
what the process leaves behind. Both are found again through the pid file the keeper writes.

Every process of the stack, and everything it starts, carries the stack's run dir and its
process name in its environment (``RUN_DIR_ENV``, ``PROCESS_ENV``): ``leftovers()`` finds the
ones no running keeper owns (re-parented to init, or in a session of their own), and ``stop``
and ``qactl down`` kill them.

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
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from qactl.errors import ComponentFailed, PortInUseError
from qactl.runtime.keeper import (
    PROCESS_ENV,
    RUN_DIR_ENV,
    START_MARKER,
    Launch,
    RestartPolicy,
    describe_exit,
    kill_all,
    marked,
    marks,
    port_is_free,
    start_time,
)
from services.common.settings import SETTINGS_FILE_ENV, QactlSettings, write_settings_file
from services.common.waiting import Deadline, poll_until


NO_PROBE_GRACE_SECONDS = 1.0
KEEPER_START_TIMEOUT = 60.0  # for the keeper to launch the worker and write its pid
KEEPER_EXIT_TIMEOUT = 10.0  # for the keeper to clean up and exit once its worker stopped
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the keeper runs this tree's qactl


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
    settings: QactlSettings | None = None  # handed to the child in its settings file
    # One line saying why the process exited during start, read from its log of this start;
    # None when the log does not say (then the log's last lines are shown instead).
    start_error: Callable[[str], str | None] | None = None


@dataclass(frozen=True)
class ProcessState:
    """A process as its pid file tells it, checked against the live processes.

    ``pid`` is the real worker (the broker JVM, redis-server, ...), what a kill -9 targets;
    ``keeper_pid`` its keeper when that is alive. ``phase``: running, restarting (waiting out
    the backoff), gave-up, exited (on its own, or before it was healthy), stopped, unowned
    (running, but its keeper is gone: the next `qactl up` replaces it), down.
    """

    name: str
    running: bool
    pid: int | None
    exit_code: int | None = None  # the last exit of the worker, ``Popen.returncode`` style
    keeper_pid: int | None = None
    restarts: int = 0
    phase: str = "down"

    @property
    def kept(self) -> bool:
        """Running under a live keeper, which will restart it."""
        return self.running and self.keeper_pid is not None

    @property
    def last_exit(self) -> str | None:
        return None if self.exit_code is None else describe_exit(self.exit_code)


@dataclass(frozen=True)
class Leftover:
    """A process of this stack that no running keeper owns."""

    pid: int
    process: str  # the process of the stack it was started for
    command: str


_start_time = start_time


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


def port_is_listening(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Supervisor:
    """Runs ``ProcessSpec``s with pid files under ``run_dir`` and logs under ``log_dir``."""

    def __init__(self, settings: QactlSettings, restart: RestartPolicy | None = None) -> None:
        self.run_dir = settings.run_dir
        self.log_dir = settings.log_dir
        self.restart = restart or RestartPolicy()

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def settings_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.settings.json"

    def stop_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.stop"

    def launch_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.launch.json"

    def _read_pid(self, name: str) -> dict | None:
        try:
            record = json.loads(self.pid_file(name).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def state(self, name: str) -> ProcessState:
        record = self._read_pid(name)
        if record is None:
            return ProcessState(name, running=False, pid=None)
        pid = _live(record, "pid", "start_time")
        keeper = _live(record, "keeper_pid", "keeper_start_time")
        phase = str(record.get("state") or "running")
        if pid is not None and keeper is None:
            phase = "unowned"
        elif keeper is None and phase in ("running", "backoff"):
            phase = "down"  # the keeper was killed with its worker
        elif phase == "backoff" or (phase == "running" and pid is None):
            phase = "restarting"
        recorded = record.get("pid")
        last_exit = record.get("last_exit")
        return ProcessState(
            name,
            running=pid is not None,
            pid=recorded if isinstance(recorded, int) else None,
            exit_code=last_exit if isinstance(last_exit, int) else None,
            keeper_pid=keeper,
            restarts=int(record.get("restarts") or 0),
            phase=phase,
        )

    def is_running(self, name: str) -> bool:
        return self.state(name).running

    def is_kept(self, name: str) -> bool:
        """Running under its keeper: nothing for `qactl up` to do."""
        return self.state(name).kept

    def check_ports(self, spec: ProcessSpec, grace: float = PORT_GRACE_SECONDS) -> None:
        """Raise ``PortInUseError`` for a port still taken after ``grace`` seconds: a process
        killed a moment ago may hold its listening socket until the kernel has reaped it."""
        deadline = Deadline(grace)
        for port in spec.ports:
            free = poll_until(lambda: port_is_free(port.number, port.host), timeout=deadline.left(), interval=0.1)
            if not free:
                raise PortInUseError(port.number, spec.name, port.setting)

    def start(self, spec: ProcessSpec) -> int:
        """Start ``spec`` under a keeper unless it already runs under one; return the worker's pid.

        A worker whose keeper is gone, or a keeper waiting to restart its worker, is stopped and
        started afresh. Health is the caller's to await (``wait_healthy`` also arms the restarts).
        """
        current = self.state(spec.name)
        if current.kept:
            return current.pid  # type: ignore[return-value]
        if current.running or current.keeper_pid is not None or marked(self.run_dir, spec.name):
            self.stop(spec.name, spec.stop_signal, spec.stop_timeout)
        self.check_ports(spec)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file(spec.name), "ab", buffering=0)
        log.write(f"\n{START_MARKER} {spec.name} at {time.strftime('%Y-%m-%dT%H:%M:%S')} ---\n".encode())
        env = child_environment(spec.env)
        if spec.settings is not None:
            env[SETTINGS_FILE_ENV] = str(write_settings_file(spec.settings, self.settings_file(spec.name)))
        env[RUN_DIR_ENV] = str(self.run_dir)
        env[PROCESS_ENV] = spec.name
        launch = Launch(
            name=spec.name,
            argv=list(spec.argv),
            cwd=str(spec.cwd or os.getcwd()),
            run_dir=str(self.run_dir),
            ports=[[p.host, p.number] for p in spec.ports],
            stop_signal=int(spec.stop_signal),
            stop_timeout=spec.stop_timeout,
            run_as=spec.run_as,
            restart=self.restart,
        )
        for stale in (self.pid_file(spec.name), self.stop_file(spec.name)):
            stale.unlink(missing_ok=True)
        launch.save(self.launch_file(spec.name))
        try:
            keeper = subprocess.Popen(
                [sys.executable, "-m", "qactl.runtime.keeper", str(self.launch_file(spec.name))],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=SOURCE_ROOT,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise ComponentFailed(f"{spec.name}: cannot start its keeper: {exc}") from exc
        finally:
            log.close()

        def launched() -> dict | None:
            record = self._read_pid(spec.name)
            if record is not None and record.get("keeper_pid") == keeper.pid:
                return record
            return {"keeper exited": keeper.returncode} if keeper.poll() is not None else None

        record = poll_until(launched, timeout=KEEPER_START_TIMEOUT, interval=0.02, done=bool)
        if record and isinstance(record.get("pid"), int):
            return int(record["pid"])
        if record and record.get("error"):
            raise ComponentFailed(f"{spec.name}: {record['error']}")
        raise ComponentFailed(f"{spec.name}: its keeper did not start it; last log lines:\n{self.tail(spec.name, 15)}")

    def arm(self, name: str) -> bool:
        """Tell the keeper its worker became healthy: from now on it restarts it when it dies.

        Waits for the keeper to say so in the pid file; False if there is no keeper to arm.
        """
        current = self._read_pid(name) or {}
        keeper = _live(current, "keeper_pid", "keeper_start_time")
        if keeper is None:
            return False
        if current.get("armed"):
            return True
        try:
            os.kill(keeper, signal.SIGUSR1)
        except ProcessLookupError:
            return False
        return bool(poll_until(lambda: (self._read_pid(name) or {}).get("armed"), timeout=10, interval=0.02))

    def wait_healthy(self, spec: ProcessSpec, on_wait: Callable[[str], None] | None = None) -> Health:
        """Poll ``spec.health`` until ok; fail fast if the process died, with its log's tail."""
        waited = Deadline(spec.start_timeout)

        def probe() -> Health:
            if not self.is_running(spec.name):
                # Its keeper does not restart it before it was healthy: let it note the exit and end.
                poll_until(lambda: self.state(spec.name).keeper_pid is None, timeout=KEEPER_EXIT_TIMEOUT, interval=0.05)
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
            self.arm(spec.name)
            return last
        raise ComponentFailed(
            f"{spec.name} not healthy after {spec.start_timeout:.0f}s ({last.detail}); "
            f"log: {self.log_file(spec.name)}\n{self.tail(spec.name, 15)}"
        )

    def stop(self, name: str, stop_signal: int = signal.SIGTERM, timeout: float = 30.0) -> bool:
        """Stop a process and everything it started: ``stop_signal`` to the worker's process
        group, SIGKILL after ``timeout``; its keeper exits without restarting it; then whatever
        is still marked with its name is killed. True if something was stopped."""
        record = self._read_pid(name) or {}
        worker = _live(record, "pid", "start_time")
        keeper = _live(record, "keeper_pid", "keeper_start_time")
        strays = marked(self.run_dir, name)
        if worker is None and keeper is None and not strays:
            self._forget(name)
            return False
        if keeper is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.stop_file(name).touch()  # before the signal: the keeper must not restart it
        if worker is not None:
            _signal_group(worker, stop_signal)
            group_gone = lambda: not _group_alive(worker)  # noqa: E731
            if not poll_until(group_gone, timeout=timeout, interval=0.1):
                _signal_group(worker, signal.SIGKILL)
                poll_until(group_gone, timeout=10, interval=0.1)
        if keeper is not None and not poll_until(lambda: not _is_alive(keeper), timeout=KEEPER_EXIT_TIMEOUT, interval=0.05):
            try:
                os.kill(keeper, signal.SIGKILL)
            except ProcessLookupError:
                pass
        kill_all(marked(self.run_dir, name))
        self._forget(name)
        return True

    def _forget(self, name: str) -> None:
        for path in (self.pid_file(name), self.settings_file(name), self.stop_file(name), self.launch_file(name)):
            path.unlink(missing_ok=True)

    def leftovers(self, names: Sequence[str] | None = None) -> list[Leftover]:
        """Processes of this stack (of ``names``, default all) that no running keeper owns.

        Owned: a live keeper and its descendants (orphans of a worker's tree are re-parented to
        its keeper). Anything else marked with this stack's run dir is left over: a worker whose
        keeper was killed, what escaped a killed keeper into init, a process of a stopped one.
        """
        keepers: dict[str, int | None] = {}
        found = []
        for proc in marked(self.run_dir):
            mark = marks(proc)
            if mark is None or (names is not None and mark[1] not in names):
                continue
            name = mark[1]
            if name not in keepers:
                keepers[name] = self.state(name).keeper_pid
            keeper = keepers[name]
            try:
                if keeper is not None and (proc.pid == keeper or keeper in {p.pid for p in proc.parents()}):
                    continue
                command = " ".join(proc.cmdline()) or proc.name()
            except psutil.Error:
                continue
            found.append(Leftover(proc.pid, name, command))
        return found

    def kill_leftovers(self, names: Sequence[str] | None = None) -> list[Leftover]:
        """Kill ``leftovers(names)``; returns what was killed."""
        found = self.leftovers(names)
        procs = []
        for leftover in found:
            try:
                procs.append(psutil.Process(leftover.pid))
            except psutil.Error:
                continue
        kill_all(procs)
        return found

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


def _live(record: Mapping[str, object], pid_key: str, start_key: str) -> int | None:
    """The pid under ``pid_key`` if that process still runs and is the one recorded."""
    pid = record.get(pid_key)
    if not isinstance(pid, int):
        return None
    return pid if _same_start(_start_time(pid), record.get(start_key)) and _is_alive(pid) else None


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
