"""The keeper: one small process per supervised process, which restarts it when it dies.

``Supervisor.start`` launches ``python -m qactl.runtime.keeper run/<name>.launch.json`` as a
session leader; the keeper runs the real command as its child in a process group of its own
and stays its parent for as long as the process should run:

- it writes ``run/<name>.pid`` (the worker's pid and start time, its own, the restart count, the
  last exit), atomically, whenever one of them changes;
- a worker that dies (non-zero exit or a signal) after the supervisor saw it healthy ("armed",
  SIGUSR1) is restarted after 1 s, 2 s, 4 s ... up to 30 s; a run of ``STABLE_SECONDS`` resets
  the backoff, and after ``GIVE_UP_AFTER`` deaths in a row without such a run it gives up
  (said in the log and in ``qactl status``); a worker that dies before it was armed is not
  restarted: ``qactl up`` reports it with its log;
- exit 0 and a requested stop (``run/<name>.stop`` exists, or SIGTERM to the keeper) end it;
- before a restart and when it ends it kills what is left of the worker's process tree: every
  process marked with this stack's run dir and this process name (``RUN_DIR_ENV`` and
  ``PROCESS_ENV``, inherited by every descendant) and every process re-parented to it (it is a
  child subreaper, so a grandchild that escaped with setsid lands here, not under init).

It imports only the standard library and psutil: one runs per process of the stack.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

RUN_DIR_ENV = "QACTL_STACK_RUN_DIR"  # every process of a stack carries its run dir ...
PROCESS_ENV = "QACTL_STACK_PROCESS"  # ... and the name of the process it belongs to
START_MARKER = "--- qactl starting"  # the line written into the log before each launch

BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
STABLE_SECONDS = 60.0  # a run this long resets the backoff and the give-up count
GIVE_UP_AFTER = 10  # deaths in a row, none after a stable run, before the keeper gives up
PORT_GRACE_SECONDS = 3.0
TICK_SECONDS = 0.5

_HANDLED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


@dataclass(frozen=True)
class RestartPolicy:
    """When a keeper restarts its worker: backoff doubling from ``first_delay`` to ``max_delay``,
    reset by a run of ``stable_seconds``; after ``give_up_after`` deaths in a row it gives up."""

    first_delay: float = BACKOFF_FIRST_SECONDS
    max_delay: float = BACKOFF_MAX_SECONDS
    stable_seconds: float = STABLE_SECONDS
    give_up_after: int = GIVE_UP_AFTER

    def delay(self, deaths: int) -> float:
        """The wait before the restart that follows the ``deaths``-th death in a row."""
        return min(self.max_delay, self.first_delay * 2 ** (deaths - 1))


@dataclass(frozen=True)
class Launch:
    """What the keeper runs; written by the supervisor to ``run/<name>.launch.json``."""

    name: str
    argv: list[str]
    cwd: str
    run_dir: str
    ports: list[list] = field(default_factory=list)  # [host, port] pairs, waited for before a restart
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 30.0
    run_as: str | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)

    @classmethod
    def load(cls, path: Path) -> Launch:
        fields = json.loads(path.read_text())
        return cls(**{**fields, "restart": RestartPolicy(**fields.get("restart", {}))})

    def save(self, path: Path) -> None:
        write_atomically(path, json.dumps(asdict(self)))

    @property
    def pid_file(self) -> Path:
        return Path(self.run_dir) / f"{self.name}.pid"

    @property
    def stop_file(self) -> Path:
        return Path(self.run_dir) / f"{self.name}.stop"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def start_time(pid: int) -> float | None:
    """When a pid started: tells our process from a later one that reused its pid."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def describe_exit(code: int | None) -> str:
    """``Popen.returncode`` style (negative: killed by that signal) in words."""
    if code is None:
        return "unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# --- the processes of a stack, found by their marks ---


def marks(proc: psutil.Process) -> tuple[str, str] | None:
    """(run dir, process name) a process was started under, or None for any other process."""
    try:
        env = proc.environ()
    except (psutil.Error, OSError):
        return None
    run_dir = env.get(RUN_DIR_ENV)
    return (run_dir, env.get(PROCESS_ENV, "")) if run_dir else None


def marked(run_dir: str | Path, name: str | None = None) -> list[psutil.Process]:
    """Live processes (zombies excluded) marked with ``run_dir`` (and ``name`` when given)."""
    found = []
    for proc in psutil.process_iter():
        mark = marks(proc)
        if mark is None or mark[0] != str(run_dir) or (name is not None and mark[1] != name):
            continue
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def kill_all(procs: Iterable[psutil.Process], timeout: float = 10.0) -> list[psutil.Process]:
    """SIGKILL every process and wait for them to be gone (or zombies); returns those signalled."""
    procs = [p for p in procs if p.pid != os.getpid()]
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    _reap()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in procs):
        time.sleep(0.05)
        _reap()
    return procs


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _reap() -> dict[int, int]:
    """Reap every exited child (adopted orphans included); returns pid -> wait status."""
    reaped = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped[pid] = status


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        try:
            os.kill(pgid, sig)
        except ProcessLookupError:
            return


# --- the keeper ---


class Keeper:
    def __init__(self, launch: Launch) -> None:
        self.launch = launch
        self.restarts = 0
        self.last_exit: int | None = None
        self.armed = False
        self.stopping = False
        self.worker: subprocess.Popen | None = None
        self.worker_start: float | None = None
        self.worker_started_at: float | None = None

    def run(self) -> int:
        deaths = 0  # in a row, without a stable run between them
        while True:
            self._wait_ports()
            try:
                self._launch_worker()
            except OSError as exc:
                self.say(f"cannot start {self.launch.argv[0]}: {exc}")
                self.write("failed", error=f"cannot start {self.launch.argv[0]}: {exc}")
                return 127
            began = time.monotonic()
            self.write("running")
            self.last_exit = self._wait_worker()
            self._kill_tree()
            if self.stopping:
                self.write("stopped")
                return 0
            if self.last_exit == 0:
                self.say("exited with status 0: not restarted")
                self.write("exited")
                return 0
            if not self.armed:
                self.say(f"{describe_exit(self.last_exit)} before it was healthy: not restarted")
                self.write("exited")
                return 1
            policy = self.launch.restart
            deaths = 1 if time.monotonic() - began >= policy.stable_seconds else deaths + 1
            if deaths > policy.give_up_after:
                self.say(f"{describe_exit(self.last_exit)}; gave up after {deaths - 1} restarts in a row")
                self.write("gave-up")
                return 1
            delay = policy.delay(deaths)
            self.say(f"{describe_exit(self.last_exit)}; restart {self.restarts + 1} in {delay:g} s")
            self.write("backoff", next_start_at=time.time() + delay)
            if not self._sleep(delay):
                self.write("stopped")
                return 0
            self.restarts += 1

    def _launch_worker(self) -> None:
        launch = self.launch
        with open(os.devnull, "rb") as devnull:
            if self.restarts:  # the supervisor wrote the first start's line
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
                print(f"\n{START_MARKER} {launch.name} at {stamp} (restart {self.restarts}) ---", flush=True)
            self.worker = subprocess.Popen(
                launch.argv,
                stdin=devnull,
                stdout=sys.stdout,
                stderr=subprocess.STDOUT,
                cwd=launch.cwd,
                process_group=0,  # its own group: a stop signals the worker's group, not the keeper
                preexec_fn=_child_setup(launch.run_as),
            )
        self.worker_start = start_time(self.worker.pid)
        self.worker_started_at = time.time()

    def _wait_worker(self) -> int:
        """Wait for the worker to exit, answering signals meanwhile; returns its exit code."""
        worker = self.worker
        assert worker is not None
        while True:
            info = signal.sigtimedwait(_HANDLED, TICK_SECONDS)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self._stop_worker()
                if worker.returncode is not None:
                    return worker.returncode
            elif info is not None and info.si_signo == signal.SIGUSR1 and not self.armed:
                self.armed = True
                self.write("running")
            if not self.stopping and self.launch.stop_file.exists():
                self.stopping = True  # the supervisor signals the worker itself
            status = _reap().get(worker.pid)
            if status is not None:
                worker.returncode = os.waitstatus_to_exitcode(status)
                return worker.returncode

    def _stop_worker(self) -> None:
        """SIGTERM to the keeper: the stop signal to the worker's group, forced after the timeout."""
        self.stopping = True
        worker = self.worker
        assert worker is not None
        signal_group(worker.pid, self.launch.stop_signal)
        deadline = time.monotonic() + self.launch.stop_timeout
        while time.monotonic() < deadline:
            status = _reap().get(worker.pid)
            if status is not None:
                worker.returncode = os.waitstatus_to_exitcode(status)
                return
            signal.sigtimedwait(_HANDLED, 0.1)
        signal_group(worker.pid, signal.SIGKILL)

    def _kill_tree(self) -> None:
        """Whatever the worker left: marked processes of this name, and children re-parented here."""
        try:
            me = psutil.Process()
            left = {p.pid: p for p in me.children(recursive=True)}
        except psutil.Error:
            left = {}
        left.update({p.pid: p for p in marked(self.launch.run_dir, self.launch.name)})
        left.pop(os.getpid(), None)
        alive = [p for p in left.values() if _alive(p)]
        if alive:
            names = ", ".join(sorted({_name(p) for p in alive}))
            self.say(f"killing {len(alive)} process(es) left by the worker: {names}")
            kill_all(alive)

    def _sleep(self, seconds: float) -> bool:
        """The backoff wait; False when a stop was requested during it."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            info = signal.sigtimedwait(_HANDLED, min(TICK_SECONDS, max(0.0, deadline - time.monotonic())))
            _reap()
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                return False
            if self.launch.stop_file.exists():
                return False
        return True

    def _wait_ports(self) -> None:
        """A port the dead worker held may stay taken a moment; a restart waits a little for it."""
        if not self.restarts:
            return
        deadline = time.monotonic() + PORT_GRACE_SECONDS
        while time.monotonic() < deadline and not all(port_is_free(p, h) for h, p in self.launch.ports):
            time.sleep(0.1)

    def write(self, state: str, **extra: object) -> None:
        worker = self.worker
        record = {
            "pid": worker.pid if worker is not None else None,
            "start_time": self.worker_start,
            "argv": self.launch.argv,
            "ports": [p for _, p in self.launch.ports],
            "started_at": self.worker_started_at,
            "keeper_pid": os.getpid(),
            "keeper_start_time": start_time(os.getpid()),
            "state": state,
            "armed": self.armed,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            **extra,
        }
        try:
            write_atomically(self.launch.pid_file, json.dumps(record))
        except OSError:
            pass  # the run dir was removed (down --purge): nothing left to tell

    def say(self, line: str) -> None:
        print(f"qactl keeper: {self.launch.name}: {line}", flush=True)


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return str(proc.pid)


def _child_setup(user: str | None):
    """In the worker before exec: unblock the keeper's signals, drop to ``user`` when root."""
    record = None
    if user is not None and os.geteuid() == 0:
        import pwd

        record = pwd.getpwnam(user)

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        if record is not None:
            os.setgroups([])
            os.setgid(record.pw_gid)
            os.setuid(record.pw_uid)

    return setup


def _become_subreaper() -> None:
    """Orphans of the worker's tree are re-parented to the keeper instead of init (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    launch = Launch.load(Path(args[0]))
    signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
    _become_subreaper()
    return Keeper(launch).run()


if __name__ == "__main__":
    sys.exit(main())
