"""What a host setting beyond loopback exposes, decided per component: refuse, or warn loudly.

Everything binds to 127.0.0.1 by default. A user may move a listener to ``0.0.0.0`` or a public
address; what happens then depends on what stands between the network and the component:

- refused, because anyone who reaches it owns the pipeline or the machine: ``kafka`` (PLAINTEXT,
  no authentication: read every question, inject answers), ``flink`` (its REST API runs any job
  it is sent: code execution as qactl's user), ``llm-server`` (no API key; the gateway in front
  of it is the component meant to be reached). Use an external cluster with its own
  authentication instead (``kafka.bootstrap_servers``, ``flink.rest_url``).
- allowed with a one-line warning at `up`: ``postgres`` and ``redis`` (password authentication
  with generated credentials, but no TLS: the traffic can be read on the network), ``api`` (the
  pipeline's entry point: anyone who reaches it can ask questions and read answers by id),
  ``llm-gateway`` (the admin API needs the generated token; the LLM endpoints need none).

``allow_unauthenticated_listeners = true`` lets the refused ones listen (with a warning line):
for a network of their own, such as a container network.

External endpoints are not bound by qactl and are not checked.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from qactl.errors import ConfigError
from services.common.backend_choice import gateway_needed, resolve_backend_kind
from services.common.settings import QactlSettings


@dataclass(frozen=True)
class Exposure:
    component: str
    setting: str  # the setting that moved it, e.g. "kafka.host"
    host: str
    refused: bool
    why: str

    def line(self) -> str:
        if self.refused:
            return (
                f"{self.setting}={self.host} would expose {self.component} beyond loopback with {self.why}; "
                f"qactl binds it to 127.0.0.1 only"
            )
        return f"{self.component} listens on {self.host} ({self.setting}), beyond loopback: {self.why}"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so it counts as exposed


def exposures(settings: QactlSettings) -> list[Exposure]:
    """Every listener of ``settings`` that is not on loopback, with its verdict (backend resolved)."""
    kind = resolve_backend_kind(settings)
    candidates = [
        (not settings.kafka.external, "kafka", "kafka.host", settings.kafka.host, True,
         "no authentication (PLAINTEXT); point kafka.bootstrap_servers at a cluster with its own"),
        (not settings.flink.external, "flink", "flink.host", settings.flink.host, True,
         "no authentication (its REST API runs any job it is sent); point flink.rest_url at a cluster with its own"),
        (kind == "local", "llm-server", "llm_server.host", settings.llm_server.host, True,
         "no API key (expose the llm-gateway in front of it instead)"),
        (not settings.postgres.external, "postgres", "postgres.host", settings.postgres.host, False,
         "password authentication (scram-sha-256), but no TLS"),
        (not settings.redis.external, "redis", "redis.host", settings.redis.host, False,
         "password authentication (requirepass), but no TLS"),
        (True, "storage-api", "api.host", settings.api.host, False,
         "no authentication: anyone who reaches it can ask questions and read answers"),
        (gateway_needed(settings), "llm-gateway", "gateway.host", settings.gateway.host, False,
         "its LLM endpoints need no token (its admin API does)"),
    ]  # fmt: skip
    return [
        Exposure(component, setting, host, refused, why)
        for started, component, setting, host, refused, why in candidates
        if started and not is_loopback(host)
    ]


def check(settings: QactlSettings) -> list[str]:
    """Raise ``ConfigError`` for a refused exposure; return the warning lines of the allowed ones.

    ``allow_unauthenticated_listeners`` (for a network of its own, such as containers') turns
    each refusal into a warning line that says so."""
    found = exposures(settings)
    refused = [e for e in found if e.refused]
    if refused and not settings.allow_unauthenticated_listeners:
        raise ConfigError(f"{refused[0].line()} (allow_unauthenticated_listeners=true lets it)")
    return [
        f"{e.component} listens on {e.host} ({e.setting}) with {e.why}, allowed by allow_unauthenticated_listeners"
        if e.refused
        else e.line()
        for e in found
    ]
