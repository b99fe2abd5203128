"""Redis from Debian's ``redis-server``, with its own dir under ``state_dir/redis``.

Configured entirely on the command line (no config file to drift): bound to 127.0.0.1 on the
configured port, append-only persistence, in the foreground so the supervisor owns it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from qactl.client import redis_client
from qactl.errors import PrerequisiteError
from qactl.runtime.component import Component, Report
from qactl.runtime.supervisor import Health, Port, ProcessSpec, Supervisor
from services.common.settings import QactlSettings

INSTALL_HINT = "apt-get install -y redis-server"


def home(settings: QactlSettings) -> Path:
    return settings.state_dir / "redis"


def redis_server(required: bool = False) -> str:
    found = shutil.which("redis-server")
    if found is None and required:
        raise PrerequisiteError(f"redis-server is not installed: {INSTALL_HINT}")
    return found or "redis-server"


def provision(settings: QactlSettings, report: Report) -> None:
    redis_server(required=True)
    home(settings).mkdir(parents=True, exist_ok=True)


def probe(settings: QactlSettings) -> Health:
    facts = redis_client.info(settings.redis.connection_url, timeout=2.0)
    data = {"version": facts.version, "keys": facts.keys, "used_memory_bytes": facts.used_memory_bytes}
    return Health(True, f"PONG, Redis {facts.version}, {facts.keys} keys", data)


def health(settings: QactlSettings, supervisor: Supervisor | None = None) -> Health:
    if supervisor is not None and not supervisor.is_running("redis"):
        return Health(False, "redis process not running")
    try:
        if not redis_client.ping(settings.redis.connection_url, timeout=2.0):
            return Health(False, "no PONG")
        return probe(settings)
    except Exception as exc:
        return Health(False, f"unreachable: {exc}")


def process(settings: QactlSettings) -> ProcessSpec:
    r = settings.redis
    argv = [
        redis_server(),
        "--port", str(r.port),
        "--bind", r.host,
        "--dir", str(home(settings)),
        "--daemonize", "no",
        "--supervised", "no",
        "--logfile", "",  # stdout, into the supervisor's log file
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        # Bound to loopback only; protected mode would refuse clients for having no password.
        "--protected-mode", "no",
        "--save", "300 10",
    ]  # fmt: skip
    return ProcessSpec(
        name="redis",
        argv=argv,
        ports=(Port(r.port, "QACTL_REDIS__PORT", r.host),),
        cwd=home(settings),
        stop_timeout=20.0,
        start_timeout=20.0,
        health=lambda: probe(settings),
    )


def components(settings: QactlSettings) -> list[Component]:
    r = settings.redis
    if r.external:
        return [Component(name="redis", health=lambda: health(settings), external=True, endpoint=_safe_url(r.connection_url))]
    supervisor = Supervisor(settings)
    return [
        Component(
            name="redis",
            health=lambda: health(settings, supervisor),
            processes=lambda: [process(settings)],
            provision=lambda report: provision(settings, report),
            endpoint=r.connection_url,
        )
    ]


def _safe_url(url: str) -> str:
    """The URL without its password, for display."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
