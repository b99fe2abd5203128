"""The pipeline services as stack components, declared from one table: a new service is one row.

Every service is ``python -m <module> [args]`` under the supervisor, with the settings it was
declared with handed over whole in its settings file (so a child sees exactly the parent's
configuration, overrides included), ``QACTL_SERVICE_SLOT`` (-> its /metrics and /health port,
``metrics_base_port + slot``) and ``QACTL_SERVICE_REPLICA``. Health is the process's own
``GET /health``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from qactl.client.http import shared_client
from qactl.runtime.component import Component
from qactl.runtime.supervisor import Health, Port, ProcessSpec
from services.common.settings import QactlSettings
from services.common.slots import REPLICA_ENV, SLOT_ENV
from services.common.backend_choice import gateway_needed

_always: Callable[[QactlSettings], bool] = lambda s: True  # noqa: E731


@dataclass(frozen=True)
class ServiceRow:
    """One pipeline service.

    ``port``: the service's own HTTP port (and the setting that moves it), or None to serve
    /metrics and /health on its metrics slot. Every row without a port owns a block of
    ``MAX_REPLICAS`` slots, in table order, so no slot moves when a number of replicas changes.
    ``scale_field``: the ``services`` setting that holds its replicas, for `qactl scale`.
    ``numbered``: replica names carry their number even alone (``llm-consumer-1``); else the
    first replica keeps the plain name (``persister``, then ``persister-2``), so scaling a
    service to two leaves the running one as it is.
    """

    name: str
    module: str
    args: tuple[str, ...] = ()
    port: Callable[[QactlSettings], tuple[int, str]] | None = None
    enabled: Callable[[QactlSettings], bool] = _always
    depends_on: tuple[str, ...] = ("kafka",)
    stop_timeout: float = 30.0
    scale_field: str | None = None
    numbered: bool = True

    def replica_count(self, settings: QactlSettings) -> int:
        """How many replicas ``settings`` give it: its ``scale_field``, else one."""
        return 1 if self.scale_field is None else getattr(settings.services, self.scale_field)


MAX_REPLICAS = 10


SERVICES: tuple[ServiceRow, ...] = (
    ServiceRow(
        "llm-gateway",
        "services.llm_gateway",
        port=lambda s: (s.gateway.port, "QACTL_GATEWAY__PORT"),
        enabled=gateway_needed,
        depends_on=(),
    ),
    ServiceRow(
        "storage-api",
        "services.storage_api",
        port=lambda s: (s.api.port, "QACTL_API__PORT"),
        depends_on=("kafka", "postgres", "redis"),
    ),
    ServiceRow(
        "persister",
        "services.persister",
        depends_on=("kafka", "postgres", "redis"),
        scale_field="persister_replicas",
        numbered=False,
    ),
    ServiceRow(
        "retry-overload",
        "services.retry",
        args=("overload",),
        scale_field="retry_overload_replicas",
        numbered=False,
    ),
    ServiceRow(
        "retry-quota",
        "services.retry",
        args=("quota",),
        scale_field="retry_quota_replicas",
        numbered=False,
    ),
    ServiceRow(
        "llm-consumer",
        "services.llm_consumer",
        depends_on=("kafka", "llm-gateway"),
        scale_field="llm_consumer_replicas",
    ),
)


def scalable() -> dict[str, ServiceRow]:
    """The services `qactl scale` can change, by name."""
    return {row.name: row for row in SERVICES if row.scale_field is not None}


def http_health(url: str, timeout: float = 1.0) -> Health:
    """A service's ``GET /health``: 200 is healthy; the JSON body becomes the detail line."""
    try:
        response = shared_client().get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return Health(False, f"no answer at {url} ({type(exc).__name__})")
    try:
        data = response.json()
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {"body": data}
    return Health(response.status_code == 200, _detail(data, response.status_code), data)


def _detail(data: Mapping[str, Any], status: int) -> str:
    shown = [
        f"{key}={data[key]}"
        for key in ("status", "backend", "in_flight", "paused_delay_partitions", "failure")
        if data.get(key) not in (None, [], "")
    ]
    return ", ".join(shown) or ("healthy" if status == 200 else f"HTTP {status}")


def replica_name(row: ServiceRow, replica: int) -> str:
    plain = replica == 1 and (row.scale_field is None or not row.numbered)
    return row.name if plain else f"{row.name}-{replica}"


def _process_specs(
    row: ServiceRow, first_slot: int, settings: QactlSettings, count: int | None = None
) -> list[ProcessSpec]:
    count = max(0, row.replica_count(settings)) if count is None else count
    specs = []
    for replica in range(1, count + 1):
        slot = first_slot + replica - 1
        if row.port is not None:
            number, setting = row.port(settings)
        else:
            number, setting = settings.services.metrics_base_port + slot, "QACTL_SERVICES__METRICS_BASE_PORT"
        host = "127.0.0.1"
        specs.append(
            ProcessSpec(
                name=replica_name(row, replica),
                argv=(sys.executable, "-m", row.module, *row.args),
                ports=(Port(number, setting, host),),
                env={REPLICA_ENV: str(replica), **({} if row.port else {SLOT_ENV: str(slot)})},
                settings=settings,
                stop_timeout=row.stop_timeout,
                health=(lambda url=f"http://{host}:{number}/health": http_health(url)),
            )
        )
    return specs


def _component(row: ServiceRow, first_slot: int, settings: QactlSettings) -> Component:
    specs = _process_specs(row, first_slot, settings)

    def health() -> Health:
        if not specs:
            return Health(True, "no replicas configured")
        checks = [(spec.name, spec.health()) for spec in specs]  # type: ignore[misc]
        bad = [f"{name}: {h.detail}" for name, h in checks if not h.ok]
        if bad:
            return Health(False, "; ".join(bad))
        if len(checks) == 1:
            return checks[0][1]
        return Health(True, f"{len(checks)} replicas healthy; {checks[0][1].detail}")

    endpoints = ", ".join(f"http://127.0.0.1:{spec.ports[0].number}" for spec in specs)
    return Component(
        name=row.name,
        health=health,
        processes=lambda: specs,
        kind="service",
        endpoint=endpoints,
        depends_on=row.depends_on,
    )


def first_slots(rows: Sequence[ServiceRow] = SERVICES) -> dict[str, int]:
    """Each port-less row's first metrics slot: a block of ``MAX_REPLICAS`` each, in table order."""
    portless = [row.name for row in rows if row.port is None]
    return {name: index * MAX_REPLICAS for index, name in enumerate(portless)}


def components(settings: QactlSettings, rows: Sequence[ServiceRow] = SERVICES) -> list[Component]:
    """Every enabled pipeline service, in start order (the gateway before its consumers)."""
    slots = first_slots(rows)
    return [_component(row, slots.get(row.name, 0), settings) for row in rows if row.enabled(settings)]


def replica_specs(settings: QactlSettings, name: str, count: int = MAX_REPLICAS) -> list[ProcessSpec]:
    """The first ``count`` replicas of service ``name`` as they would run with ``settings``."""
    row = {r.name: r for r in SERVICES}[name]
    return _process_specs(row, first_slots().get(name, 0), settings, count=min(count, MAX_REPLICAS))
