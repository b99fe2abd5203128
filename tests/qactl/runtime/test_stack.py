"""Stack.up/down/status on real (tiny) processes: order, idempotence, what `changed` means."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from qactl.errors import ComponentFailed
from qactl.runtime.component import Component
from qactl.runtime.stack import Stack
from qactl.runtime.supervisor import Health, ProcessSpec, Supervisor
from services.common.settings import QactlSettings, load_settings

SLEEPER = "import time; time.sleep(600)"


@pytest.fixture
def settings(isolated_env: Path) -> QactlSettings:
    return load_settings(state_dir=isolated_env)


def sleeper_component(settings: QactlSettings, name: str, kind: str, log: list[str]) -> Component:
    supervisor = Supervisor(settings)
    spec = ProcessSpec(name, [sys.executable, "-c", SLEEPER])
    setup_done: list[bool] = []

    def after_start(report) -> bool:
        log.append(f"setup {name}")
        if setup_done:
            return False
        setup_done.append(True)
        return True

    return Component(
        name=name,
        kind=kind,
        health=lambda: Health(supervisor.is_running(name), "sleeping"),
        processes=lambda: [spec],
        provision=lambda report: log.append(f"provision {name}"),
        after_start=after_start,
    )


def test_up_launches_infra_first_then_waits_in_order_and_second_up_changes_nothing(settings: QactlSettings) -> None:
    log: list[str] = []
    events: list[tuple[str, str]] = []
    components = [
        sleeper_component(settings, "infra-a", "infra", log),
        sleeper_component(settings, "infra-b", "infra", log),
        sleeper_component(settings, "service-c", "service", log),
    ]
    stack = Stack(settings, components=components)
    try:
        first = stack.up(lambda c, phase, d: events.append((c, phase)))
        assert first.changed and first.started == ["infra-a", "infra-b", "service-c"]
        starts = [c for c, phase in events if phase == "starting"]
        assert starts == ["infra-a", "infra-b", "service-c"]
        # Both infra processes were launched before the first one was awaited.
        assert events.index(("infra-b", "starting")) < events.index(("infra-a", "ready"))
        assert log.count("provision infra-a") == 1

        second = stack.up()
        assert not second.changed and second.unchanged == ["infra-a", "infra-b", "service-c"]
        assert all(s.ok for s in stack.status())
    finally:
        stopped = stack.down()
    assert stopped == ["service-c", "infra-b", "infra-a"]
    assert not any(s.ok for s in stack.status())


def test_a_component_that_never_gets_healthy_fails_up(settings: QactlSettings) -> None:
    spec = ProcessSpec("sick", [sys.executable, "-c", SLEEPER], start_timeout=1.5, health=lambda: Health(False, "never"))
    sick = Component(name="sick", health=lambda: Health(False, "never"), processes=lambda: [spec])
    stack = Stack(settings, components=[sick])
    try:
        with pytest.raises(ComponentFailed, match="not healthy after"):
            stack.up()
        # Nothing half-started: the process `up` started for it is stopped again.
        assert not Supervisor(settings).is_running("sick")
    finally:
        stack.down()


def test_a_killed_process_comes_back_by_itself_and_down_leaves_nothing(settings: QactlSettings) -> None:
    import os
    import signal
    import time

    from qactl.runtime.keeper import RestartPolicy

    component = sleeper_component(settings, "service-d", "service", [])
    stack = Stack(settings, components=[component])
    stack.supervisor = Supervisor(settings, RestartPolicy(first_delay=0.2))
    try:
        stack.up()
        (before,) = stack.status()[0].processes
        os.kill(before.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            (after,) = stack.status()[0].processes
            if after.running and after.pid != before.pid:
                break
            time.sleep(0.05)
        assert after.running and after.restarts == 1 and after.last_exit == "killed by SIGKILL"
        assert stack.status()[0].ok
        # Its keeper killed -9 too: the next `up` replaces the worker nothing would restart.
        os.kill(after.keeper_pid, signal.SIGKILL)
        while stack.supervisor.state("service-d").phase != "unowned":
            assert time.monotonic() < deadline + 10
            time.sleep(0.05)
        assert stack.up().started == ["service-d"]
        (replaced,) = stack.status()[0].processes
        assert replaced.kept and replaced.pid != after.pid and replaced.restarts == 0
    finally:
        assert stack.down() == ["service-d"]
    assert stack.supervisor.leftovers() == []
