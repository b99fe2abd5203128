"""How many of each process a stack runs, kept with its state, and `qactl scale` while it runs.

`qactl up --brokers N --taskmanagers M --llm-consumers K` (or ``--profile cluster``) and
`qactl scale <service> K` write what they chose to ``state_dir/topology.json``; every later CLI
command reads it over the configuration (``apply``), so a later plain `qactl up`, `status`,
`logs` and `down` see the brokers, task managers and replicas that really run. `qactl down
--purge` deletes it with the rest of the state.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qactl.errors import ConfigError, QactlError
from qactl.runtime import services
from qactl.runtime.supervisor import Supervisor
from services.common.settings import QactlSettings, write_private_file

FILE_NAME = "topology.json"

# The settings a topology consists of: section -> fields.
FIELDS: dict[str, tuple[str, ...]] = {
    "kafka": ("brokers",),
    "flink": ("taskmanagers", "taskmanager_slots"),
    "services": tuple(row.scale_field for row in services.scalable().values() if row.scale_field),
}


def path(settings: QactlSettings) -> Path:
    return settings.state_dir / FILE_NAME


def stored(settings: QactlSettings) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path(settings).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def apply(settings: QactlSettings) -> QactlSettings:
    """``settings`` with the topology this state dir's stack was given last, if any."""
    return with_values(settings, stored(settings))


def with_values(settings: QactlSettings, values: dict[str, dict[str, Any]]) -> QactlSettings:
    """A copy of ``settings`` with ``values`` (section -> field -> value) set, validated."""
    data = settings.model_dump()
    for section, fields in FIELDS.items():
        for name in fields:
            if name in values.get(section, {}):
                data[section][name] = values[section][name]
    try:
        return QactlSettings.model_validate(data)
    except ValueError as exc:
        raise ConfigError(f"invalid topology: {exc}") from exc


def save(settings: QactlSettings) -> None:
    values = {section: {name: getattr(getattr(settings, section), name) for name in fields} for section, fields in FIELDS.items()}
    write_private_file(path(settings), json.dumps(values, indent=2) + "\n")


def running_elsewhere(settings: QactlSettings) -> list[str]:
    """Kafka or Flink processes of another topology that run from this state dir.

    One broker and three keep their data apart (``kafka`` vs ``kafka-cluster``) and use the same
    first ports, so switching needs a `qactl down` first.
    """
    from qactl.runtime import flink, kafka

    supervisor = Supervisor(settings)
    wanted = {*kafka.process_names(settings), *flink.process_names(settings)}
    candidates = ["kafka", *(f"kafka-{n}" for n in range(1, 10))]
    candidates += [flink.TASKMANAGER, *(f"{flink.TASKMANAGER}-{n}" for n in range(1, 10))]
    return [name for name in candidates if name not in wanted and supervisor.is_running(name)]


Events = Callable[[str, str], None]


def scale(settings: QactlSettings, service: str, count: int, events: Events = lambda name, what: None) -> QactlSettings:
    """Run ``count`` replicas of ``service`` now: start the missing ones (waiting until each is
    healthy), stop the extra ones gracefully (SIGTERM: a consumer commits what it finished and
    leaves its group, which hands its partitions to the others), and keep ``count`` for later
    `qactl up`. Returns the settings with the new count."""
    rows = services.scalable()
    if service not in rows:
        raise QactlError(f"cannot scale {service!r}; scalable services: {', '.join(rows)}")
    if not 0 <= count <= services.MAX_REPLICAS:
        raise QactlError(f"replicas must be between 0 and {services.MAX_REPLICAS}, not {count}")
    field = rows[service].scale_field
    assert field is not None
    scaled = with_values(settings, {"services": {field: count}})
    supervisor = Supervisor(scaled)
    every = services.replica_specs(scaled, service)
    if not any(supervisor.is_running(spec.name) for spec in every) and not _infra_running(scaled):
        raise QactlError("the stack is not running: `qactl up` first")
    wanted, extra = every[:count], every[count:]
    started = [spec for spec in wanted if not supervisor.is_running(spec.name)]
    for spec in started:
        events(spec.name, "starting")
        supervisor.start(spec)
    for spec in started:
        supervisor.wait_healthy(spec)
        events(spec.name, "started")
    for spec in reversed(extra):
        if supervisor.is_running(spec.name):
            events(spec.name, "stopping")
            supervisor.stop(spec.name, spec.stop_signal, spec.stop_timeout)
            events(spec.name, "stopped")
    save(scaled)
    return scaled


def _infra_running(settings: QactlSettings) -> bool:
    from qactl.runtime import kafka

    if settings.kafka.external:
        return True
    supervisor = Supervisor(settings)
    return any(supervisor.is_running(name) for name in kafka.process_names(settings))
