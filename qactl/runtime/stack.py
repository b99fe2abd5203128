"""The stack in start order, and the three things the operator does to it: up, down, status."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from qactl.errors import ComponentFailed
from qactl.runtime.component import Component
from qactl.runtime.supervisor import Health, ProcessState, Supervisor
from services.common.settings import QactlSettings

# phase is one of: provisioning, starting, waiting, setup, ready, unchanged, external, failed,
# stopping, stopped, cleaned (leftover processes killed)
Events = Callable[[str, str, str], None]


def _ignore(component: str, phase: str, detail: str) -> None:
    return None


def declared_components(settings: QactlSettings) -> list[Component]:
    """Every component in start order; `qactl down` walks this list backwards.

    ``llm.backend = "auto"`` is resolved here, once: every component, and every child through
    its settings file, then works with the same concrete backend and the same credentials.
    """
    from qactl.runtime import credentials, exposure, flink, kafka, llm_server, postgres, redis, score_job, services
    from services.common.backend_choice import resolved

    # The doors: a private state dir, the stack's credentials in every component's settings
    # (made once per state dir), and no listener beyond loopback that nothing authenticates.
    credentials.make_private(settings)
    settings = resolved(credentials.with_stored(settings, create=True))
    exposure.check(settings)
    return [
        *kafka.components(settings),
        *flink.components(settings),
        *postgres.components(settings),
        *redis.components(settings),
        *llm_server.components(settings),
        *services.components(settings),
        *score_job.components(settings),
    ]


@dataclass
class ComponentStatus:
    name: str
    kind: str
    external: bool
    endpoint: str
    health: Health
    processes: list[ProcessState] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.health.ok and all(p.running for p in self.processes)


@dataclass
class UpResult:
    started: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    endpoints: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.started)


class Stack:
    def __init__(
        self,
        settings: QactlSettings,
        components: Sequence[Component] | None = None,
        only: Sequence[str] | None = None,
    ) -> None:
        self.settings = settings
        self.supervisor = Supervisor(settings)
        all_components = list(components) if components is not None else declared_components(settings)
        self.components = [c for c in all_components if not only or c.name in only]
        self.only = list(only) if only else None

    def component(self, name: str) -> Component:
        for candidate in self.components:
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    def _process_names(self) -> list[str] | None:
        """The processes this stack covers; None for the whole stack (then every leftover counts)."""
        if self.only is None:
            return None
        return [spec.name for comp in self.components if not comp.external for spec in comp.processes()]

    def _kill_leftovers(self, events: Events) -> None:
        killed = self.supervisor.kill_leftovers(self._process_names())
        if killed:
            listed = ", ".join(f"{k.process} (pid {k.pid})" for k in killed[:6])
            events("stack", "cleaned", f"killed {len(killed)} process(es) no keeper owned: {listed}")

    def up(self, events: Events = _ignore) -> UpResult:
        """Provision and start what is not running, in order; idempotent.

        First kills what no keeper owns any more (a worker whose keeper was killed is started
        afresh below, under a new keeper).
        """
        result = UpResult()
        self._kill_leftovers(events)
        launched = self._launch_infra(events)
        for comp in self.components:
            self._up_one(comp, result, events, launched)
        return result

    def _launch_infra(self, events: Events) -> set[str]:
        """Provision and launch every stopped infrastructure process before waiting for any.

        Kafka, Flink, PostgreSQL and Redis do not need each other to start, and most of their
        start is JVM warm-up: launched together they overlap, and `_up_one` then waits for
        each in order. Returns the names of the processes launched here.
        """
        launched: set[str] = set()
        for comp in self.components:
            if comp.kind != "infra" or comp.external:
                continue
            to_start = [s for s in comp.processes() if not self.supervisor.is_kept(s.name)]
            if not to_start:
                continue
            events(comp.name, "provisioning", "checking what is installed")
            comp.provision(lambda detail, name=comp.name: events(name, "provisioning", detail))
            # Listed again: provisioning may change how a process is run (a new id, a found binary).
            to_start = [s for s in comp.processes() if not self.supervisor.is_kept(s.name)]
            for spec in to_start:
                events(comp.name, "starting", spec.name)
                self.supervisor.start(spec)
                launched.add(spec.name)
        return launched

    def _up_one(self, comp: Component, result: UpResult, events: Events, launched: set[str]) -> None:
        report = lambda detail: events(comp.name, "setup", detail)  # noqa: E731
        result.endpoints[comp.name] = comp.endpoint
        if comp.external:
            events(comp.name, "waiting", f"checking {comp.endpoint}")
            health = comp.health()
            if not health.ok:
                events(comp.name, "failed", health.detail)
                raise ComponentFailed(f"{comp.name} at {comp.endpoint} is not healthy: {health.detail}")
            changed = bool(comp.after_start(report))
            events(comp.name, "external", health.detail)
            (result.started if changed else result.unchanged).append(comp.name)
            return
        specs = list(comp.processes())
        just_launched = [s for s in specs if s.name in launched]
        to_start = [s for s in specs if s.name not in launched and not self.supervisor.is_kept(s.name)]
        setup_changed = False
        if specs and not to_start and not just_launched:
            health = comp.health()
            if health.ok:
                setup_changed = bool(comp.after_start(report))
                if not setup_changed:
                    events(comp.name, "unchanged", health.detail)
                    result.unchanged.append(comp.name)
                    return
        if not just_launched:
            events(comp.name, "provisioning", "checking what is installed")
            comp.provision(lambda detail: events(comp.name, "provisioning", detail))
            specs = list(comp.processes())
            to_start = [s for s in specs if not self.supervisor.is_kept(s.name)]
        for spec in to_start:
            events(comp.name, "starting", spec.name)
            self.supervisor.start(spec)
        try:
            for spec in specs:
                self.supervisor.wait_healthy(spec, lambda d: events(comp.name, "waiting", d))
        except ComponentFailed as exc:
            # Nothing half-started: what this `up` started and never became healthy stops again.
            for spec in specs:
                if spec in to_start or spec.name in launched:
                    self.supervisor.stop(spec.name, spec.stop_signal, spec.stop_timeout)
            events(comp.name, "failed", str(exc).splitlines()[0])
            raise
        setup_changed = bool(comp.after_start(report)) or setup_changed
        health = comp.health()
        if not health.ok:
            events(comp.name, "failed", health.detail)
            raise ComponentFailed(f"{comp.name}: {health.detail}")
        if to_start or just_launched or setup_changed:
            result.started.append(comp.name)
        else:
            result.unchanged.append(comp.name)
        events(comp.name, "ready", health.detail)

    def down(self, purge: bool = False, events: Events = _ignore) -> list[str]:
        """Stop every process the stack started, last first. Returns what was stopped."""
        stopped: list[str] = []
        for comp in reversed(self.components):
            if comp.external:
                continue
            try:
                comp.before_stop(lambda d: events(comp.name, "setup", d))
            except Exception as exc:  # a dead cluster cannot cancel its job: keep stopping
                events(comp.name, "failed", f"before stop: {exc}")
            for spec in reversed(list(comp.processes())):
                events(comp.name, "stopping", spec.name)
                if self.supervisor.stop(spec.name, spec.stop_signal, spec.stop_timeout):
                    stopped.append(spec.name)
            events(comp.name, "stopped", "")
        self._kill_leftovers(events)
        if purge:
            shutil.rmtree(self.settings.state_dir, ignore_errors=True)
        return stopped

    def status(self) -> list[ComponentStatus]:
        statuses = []
        for comp in self.components:
            processes = [self.supervisor.state(s.name) for s in comp.processes()]
            try:
                health = comp.health()
            except Exception as exc:
                health = Health(False, f"probe failed: {exc}")
            statuses.append(
                ComponentStatus(comp.name, comp.kind, comp.external, comp.endpoint, health, processes)
            )
        return statuses
