"""The supervisor on real processes: start, pid file, log, stop graceful then forced, port clash."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from qactl.errors import ComponentFailed, PortInUseError
from qactl.runtime.keeper import RestartPolicy
from qactl.runtime.supervisor import Health, Port, ProcessSpec, Supervisor, port_is_free
from services.common.settings import QactlSettings, load_settings

SLEEPER = "import time; print('sleeper up', flush=True); time.sleep(600)"
# Ignores SIGTERM, so only the forced stop (SIGKILL) ends it.
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('stubborn up', flush=True); time.sleep(600)"
)


@pytest.fixture
def settings(isolated_env: Path) -> QactlSettings:
    return load_settings(state_dir=isolated_env)


@pytest.fixture
def supervisor(settings: QactlSettings):
    sup = Supervisor(settings)
    yield sup
    for pid_file in sup.run_dir.glob("*.pid"):  # never leave a sleeper behind
        sup.stop(pid_file.stem, signal.SIGKILL, timeout=5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_start_writes_pid_file_and_log_and_is_idempotent(supervisor: Supervisor) -> None:
    spec = ProcessSpec("sleeper", [sys.executable, "-c", SLEEPER])
    pid = supervisor.start(spec)
    record = json.loads(supervisor.pid_file("sleeper").read_text())
    assert record["pid"] == pid and alive(pid)
    assert supervisor.state("sleeper").running
    assert supervisor.start(spec) == pid  # already running: not started twice
    deadline = time.monotonic() + 10
    while "sleeper up" not in supervisor.tail("sleeper") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "sleeper up" in supervisor.log_file("sleeper").read_text()


def test_graceful_stop_removes_pid_file(supervisor: Supervisor) -> None:
    pid = supervisor.start(ProcessSpec("sleeper", [sys.executable, "-c", SLEEPER]))
    started = time.monotonic()
    assert supervisor.stop("sleeper", signal.SIGTERM, timeout=10)
    assert time.monotonic() - started < 10  # SIGTERM was enough, no wait for the forced stop
    assert not alive(pid)
    assert not supervisor.pid_file("sleeper").exists()
    assert not supervisor.stop("sleeper")  # nothing left to stop


def test_stop_forces_a_process_that_ignores_sigterm(supervisor: Supervisor) -> None:
    pid = supervisor.start(ProcessSpec("stubborn", [sys.executable, "-c", STUBBORN]))
    deadline = time.monotonic() + 10
    while "stubborn up" not in supervisor.tail("stubborn") and time.monotonic() < deadline:
        time.sleep(0.05)  # the handler must be installed before we signal
    assert supervisor.stop("stubborn", signal.SIGTERM, timeout=1)
    assert not alive(pid)


def test_stop_ends_the_whole_process_group(supervisor: Supervisor, tmp_path: Path) -> None:
    # A shell that starts a child, like Flink's scripts or postgres's backends.
    child_pid_file = tmp_path / "child.pid"
    child_script = f"{sys.executable} -c 'import time; time.sleep(600)' & echo $! > {child_pid_file}; wait"
    supervisor.start(ProcessSpec("parent", ["bash", "-c", child_script]))
    deadline = time.monotonic() + 10
    while not child_pid_file.exists() or not child_pid_file.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(child_pid_file.read_text())
    supervisor.stop("parent", timeout=5)
    assert not alive(child)


def test_a_dead_process_is_not_running_and_fails_the_health_wait(supervisor: Supervisor) -> None:
    spec = ProcessSpec("crasher", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"], start_timeout=10)
    supervisor.start(spec)
    with pytest.raises(ComponentFailed, match="exited during start") as caught:
        supervisor.wait_healthy(spec)
    assert "boom" in str(caught.value)
    state = supervisor.state("crasher")
    assert not state.running and state.keeper_pid is None  # its keeper did not restart it
    assert state.restarts == 0 and state.exit_code == 3 and state.phase == "exited"


def test_a_process_that_says_why_it_exited_fails_in_one_line_about_this_start(supervisor: Supervisor) -> None:
    def first_error(log: str) -> str | None:
        return next((line for line in log.splitlines() if line.startswith("ERROR")), None)

    earlier = ProcessSpec("crasher", [sys.executable, "-c", "print('ERROR an earlier start')"], start_error=first_error)
    supervisor.start(earlier)
    with pytest.raises(ComponentFailed):
        supervisor.wait_healthy(earlier)
    script = "print('loading'); print('ERROR the model is truncated'); raise SystemExit(1)"
    spec = ProcessSpec("crasher", [sys.executable, "-c", script], start_timeout=10, start_error=first_error)
    supervisor.start(spec)
    with pytest.raises(ComponentFailed) as caught:
        supervisor.wait_healthy(spec)
    assert str(caught.value) == (
        f"crasher exited during start: ERROR the model is truncated (log: {supervisor.log_file('crasher')})"
    )


def test_wait_healthy_polls_the_probe_until_ok(supervisor: Supervisor) -> None:
    calls = []

    def probe() -> Health:
        calls.append(1)
        return Health(len(calls) >= 3, f"call {len(calls)}")

    spec = ProcessSpec("sleeper", [sys.executable, "-c", SLEEPER], health=probe)
    supervisor.start(spec)
    assert supervisor.wait_healthy(spec).detail == "call 3"


def test_port_in_use_names_the_port_and_the_setting(supervisor: Supervisor) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        spec = ProcessSpec("needs-port", [sys.executable, "-c", SLEEPER], ports=[Port(port, "QACTL_REDIS__PORT")])
        with pytest.raises(PortInUseError) as caught:
            supervisor.start(spec)
    message = str(caught.value)
    assert str(port) in message and "QACTL_REDIS__PORT" in message
    assert not supervisor.pid_file("needs-port").exists()
    assert port_is_free(port)



def test_a_port_freed_within_the_grace_period_does_not_fail_the_start(supervisor: Supervisor) -> None:
    # As after kill -9: the old listener lingers a moment, then the port is free again.
    import threading

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    threading.Timer(0.5, holder.close).start()
    spec = ProcessSpec("needs-port", [sys.executable, "-c", SLEEPER], ports=[Port(port, "QACTL_REDIS__PORT")])
    started = time.monotonic()
    assert alive(supervisor.start(spec))
    assert time.monotonic() - started >= 0.4  # it did wait for the port

def test_a_reused_pid_is_not_mistaken_for_ours(supervisor: Supervisor) -> None:
    # A pid file whose pid now belongs to another process (different start time) is stale.
    supervisor.run_dir.mkdir(parents=True, exist_ok=True)
    supervisor.pid_file("ghost").write_text(json.dumps({"pid": os.getpid(), "start_time": "1"}))
    assert not supervisor.state("ghost").running
    assert not supervisor.stop("ghost")
    assert alive(os.getpid())


def test_a_start_time_read_a_moment_apart_is_still_ours(supervisor: Supervisor) -> None:
    # The boot time behind psutil's start time moves with the wall clock: a second apart is ours.
    import psutil

    started = psutil.Process(os.getpid()).create_time()
    supervisor.run_dir.mkdir(parents=True, exist_ok=True)
    supervisor.pid_file("me").write_text(json.dumps({"pid": os.getpid(), "start_time": started - 0.9}))
    assert supervisor.state("me").running
    supervisor.pid_file("me").write_text(json.dumps({"pid": os.getpid(), "start_time": started - 60}))
    assert not supervisor.state("me").running


def test_a_service_sees_the_configuration_it_is_given_not_the_callers_variables(
    supervisor: Supervisor, settings: QactlSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The caller's shell has a nested variable for a port the configuration sets otherwise.
    monkeypatch.setenv("QACTL_KAFKA__PORT", "1")
    monkeypatch.setenv("UNRELATED_VARIABLE", "kept")
    configured = load_settings(state_dir=settings.state_dir, kafka={"port": 45678})
    show = (
        "import os; from services.common.settings import get_settings; "
        "print('port', get_settings().kafka.port, os.environ.get('UNRELATED_VARIABLE'), "
        "os.environ.get('QACTL_KAFKA__PORT'), flush=True); "
        "import time; time.sleep(600)"
    )
    spec = ProcessSpec("shows-settings", [sys.executable, "-c", show], settings=configured, cwd=Path.cwd())
    supervisor.start(spec)
    _wait_for_line(supervisor, "shows-settings", "port")
    assert "port 45678 kept None" in supervisor.tail("shows-settings")
    handed = supervisor.settings_file("shows-settings")
    assert handed.stat().st_mode & 0o777 == 0o600
    supervisor.stop("shows-settings", signal.SIGKILL, timeout=5)
    assert not handed.exists()  # the secrets do not outlive the process


def test_no_child_inherits_the_callers_qactl_variables(
    supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QACTL_POLICIES__DELAY_SCALE", "0.05")
    show = (
        "import os; print('inherited', sorted(k for k in os.environ if k.startswith('QACTL_')), flush=True); "
        "import time; time.sleep(600)"
    )
    spec = ProcessSpec("shows-env", [sys.executable, "-c", show], env={"QACTL_SERVICE_SLOT": "3"})
    supervisor.start(spec)
    _wait_for_line(supervisor, "shows-env", "inherited")
    # Only the spec's own, and the marks every process of the stack carries (found by leftovers()).
    assert "inherited ['QACTL_SERVICE_SLOT', 'QACTL_STACK_PROCESS', 'QACTL_STACK_RUN_DIR']" in supervisor.tail(
        "shows-env"
    )


def _wait_for_line(supervisor: Supervisor, name: str, text: str) -> None:
    deadline = time.monotonic() + 20
    while text not in supervisor.tail(name) and time.monotonic() < deadline:
        time.sleep(0.05)


# --- the keeper: restarts with backoff, and owns the whole process tree ---

# Starts a grandchild that escapes into a session of its own (double fork + setsid), like a
# daemonising helper; the grandchild writes its pid to the file named by argv[1].
ESCAPER = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(sys.argv[1] + '.tmp', 'w') as fh:
            fh.write(str(os.getpid()))
        os.replace(sys.argv[1] + '.tmp', sys.argv[1])
        time.sleep(600)
    os._exit(0)
print('escaper up', flush=True)
time.sleep(600)
"""


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _restarted(supervisor: Supervisor, name: str, old_pid: int, restarts: int):
    def check():
        state = supervisor.state(name)
        return state if state.running and state.pid != old_pid and state.restarts == restarts else None

    return check


def _grandchild(pid_file: Path, not_pid: int | None = None) -> int:
    def read() -> int | None:
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if pid != not_pid and alive(pid) else None

    return _wait(read, 20, "the escaped grandchild")


@pytest.fixture
def quick_restarts(settings: QactlSettings):
    sup = Supervisor(settings, RestartPolicy(first_delay=0.5, max_delay=4.0, stable_seconds=60, give_up_after=3))
    yield sup
    for pid_file in sup.run_dir.glob("*.pid"):
        sup.stop(pid_file.stem, signal.SIGKILL, timeout=5)
    sup.kill_leftovers()


def test_a_killed_process_is_restarted_with_backoff(quick_restarts: Supervisor) -> None:
    supervisor = quick_restarts
    spec = ProcessSpec("sleeper", [sys.executable, "-c", SLEEPER])
    first = supervisor.start(spec)
    supervisor.wait_healthy(spec)  # healthy: from now on its keeper restarts it
    keeper = supervisor.state("sleeper").keeper_pid
    assert keeper is not None and alive(keeper) and keeper != first

    os.kill(first, signal.SIGKILL)
    second = _wait(_restarted(supervisor, "sleeper", first, 1), 20, "the first restart")
    assert second.exit_code == -signal.SIGKILL and second.last_exit == "killed by SIGKILL"
    assert second.keeper_pid == keeper and second.phase == "running"

    os.kill(second.pid, signal.SIGTERM)  # a signal from anyone but the supervisor is a death too
    third = _wait(_restarted(supervisor, "sleeper", second.pid, 2), 20, "the second restart")
    assert third.exit_code == -signal.SIGTERM
    log = supervisor.log_file("sleeper").read_text()
    # The wait doubles: 0.5 s, then 1 s (the second death came within the stable period).
    assert "killed by SIGKILL; restart 1 in 0.5 s" in log and "killed by SIGTERM; restart 2 in 1 s" in log
    record = json.loads(supervisor.pid_file("sleeper").read_text())
    assert record["pid"] == third.pid and record["restarts"] == 2
    _wait(lambda: supervisor.log_of_last_start("sleeper").startswith("sleeper up"), 20, "the restart's log")


def test_a_process_that_keeps_dying_is_given_up_visibly(quick_restarts: Supervisor, tmp_path: Path) -> None:
    supervisor = quick_restarts
    broken = tmp_path / "broken"
    script = f"import os, sys, time; os.path.exists({str(broken)!r}) and sys.exit(2); print('up', flush=True); time.sleep(600)"
    spec = ProcessSpec("flaky", [sys.executable, "-c", script])
    pid = supervisor.start(spec)
    supervisor.wait_healthy(spec)
    broken.touch()  # from now on every restart exits at once
    os.kill(pid, signal.SIGKILL)
    def given_up():
        state = supervisor.state("flaky")
        return state.phase == "gave-up" and state.keeper_pid is None and state  # said so, and ended

    state = _wait(given_up, 60, "the keeper to give up")
    assert not state.running and state.keeper_pid is None
    assert state.restarts == 3 and state.exit_code == 2
    assert "exit 2; gave up after 3 restarts in a row" in supervisor.log_file("flaky").read_text()
    broken.unlink()
    assert supervisor.start(spec) and supervisor.state("flaky").restarts == 0  # `up` starts it afresh


def test_a_requested_stop_is_not_restarted(quick_restarts: Supervisor) -> None:
    supervisor = quick_restarts
    spec = ProcessSpec("sleeper", [sys.executable, "-c", SLEEPER])
    pid = supervisor.start(spec)
    supervisor.wait_healthy(spec)
    keeper = supervisor.state("sleeper").keeper_pid
    assert supervisor.stop("sleeper", signal.SIGTERM, timeout=10)
    assert not alive(pid) and not alive(keeper)
    time.sleep(1.5)  # longer than the first backoff: a restart would have happened by now
    assert not supervisor.state("sleeper").running and not supervisor.leftovers()

    # SIGTERM to the keeper itself (as from an init system): forwarded, and not restarted either.
    pid = supervisor.start(spec)
    supervisor.wait_healthy(spec)
    keeper = supervisor.state("sleeper").keeper_pid
    os.kill(keeper, signal.SIGTERM)
    _wait(lambda: not alive(keeper) and not alive(pid), 20, "the keeper and its worker to end")
    state = supervisor.state("sleeper")
    assert state.phase == "stopped" and state.exit_code == -signal.SIGTERM and not state.running


def test_a_restart_and_a_stop_leave_nothing_of_the_process_tree(quick_restarts: Supervisor, tmp_path: Path) -> None:
    supervisor = quick_restarts
    grandchild_file = tmp_path / "grandchild.pid"
    spec = ProcessSpec("escaper", [sys.executable, "-c", ESCAPER, str(grandchild_file)])
    worker = supervisor.start(spec)
    supervisor.wait_healthy(spec)
    escaped = _grandchild(grandchild_file)
    assert os.getsid(escaped) != os.getsid(worker)  # in a session of its own, out of the group
    assert supervisor.leftovers() == []  # re-parented to the keeper: still owned

    os.kill(worker, signal.SIGKILL)  # like the TaskManager whose Python worker outlived it
    restarted = _wait(_restarted(supervisor, "escaper", worker, 1), 20, "the restart")
    assert not alive(escaped)  # the keeper killed what the dead worker left before restarting
    assert "killing 1 process(es) left by the worker" in supervisor.log_file("escaper").read_text()
    escaped = _grandchild(grandchild_file, not_pid=escaped)

    assert supervisor.stop("escaper", signal.SIGTERM, timeout=10)
    assert not alive(restarted.pid) and not alive(escaped)
    assert supervisor.leftovers() == []


def test_leftovers_are_the_processes_no_running_keeper_owns(quick_restarts: Supervisor, tmp_path: Path) -> None:
    supervisor = quick_restarts
    grandchild_file = tmp_path / "grandchild.pid"
    spec = ProcessSpec("escaper", [sys.executable, "-c", ESCAPER, str(grandchild_file)])
    worker = supervisor.start(spec)
    supervisor.wait_healthy(spec)
    escaped = _grandchild(grandchild_file)
    keeper = supervisor.state("escaper").keeper_pid
    os.kill(keeper, signal.SIGKILL)  # the keeper dies first: nothing is left to clean up after them
    os.kill(worker, signal.SIGKILL)
    _wait(lambda: not alive(worker) and not alive(keeper), 10, "the worker and keeper to die")
    assert psutil_parent(escaped) not in (keeper, worker)  # re-parented to init (or a subreaper)

    found = supervisor.leftovers()
    assert [(f.pid, f.process) for f in found] == [(escaped, "escaper")]
    assert "time.sleep(600)" in found[0].command
    assert supervisor.leftovers(["other"]) == []
    assert supervisor.stop("escaper")  # stop finds them by their marks, not by a pid file
    assert not alive(escaped) and supervisor.leftovers() == []


def test_a_worker_whose_keeper_was_killed_is_replaced_by_the_next_start(quick_restarts: Supervisor) -> None:
    supervisor = quick_restarts
    spec = ProcessSpec("sleeper", [sys.executable, "-c", SLEEPER])
    worker = supervisor.start(spec)
    supervisor.wait_healthy(spec)
    os.kill(supervisor.state("sleeper").keeper_pid, signal.SIGKILL)
    state = _wait(lambda: (s := supervisor.state("sleeper")).phase == "unowned" and s, 10, "the keeper to die")
    assert state.running and not state.kept  # still serving, but nothing would restart it
    assert [f.pid for f in supervisor.leftovers()] == [worker]
    replaced = supervisor.start(spec)
    assert replaced != worker and not alive(worker) and supervisor.state("sleeper").kept
    assert supervisor.leftovers() == []


def psutil_parent(pid: int) -> int | None:
    import psutil

    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None
