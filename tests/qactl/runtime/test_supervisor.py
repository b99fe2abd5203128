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
    assert not supervisor.state("crasher").running


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
    assert "inherited ['QACTL_SERVICE_SLOT']" in supervisor.tail("shows-env")


def _wait_for_line(supervisor: Supervisor, name: str, text: str) -> None:
    deadline = time.monotonic() + 20
    while text not in supervisor.tail(name) and time.monotonic() < deadline:
        time.sleep(0.05)
