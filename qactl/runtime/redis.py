"""Redis from Debian's ``redis-server``, with its own dir under ``state_dir/redis``.

Configured by ``redis.conf`` in that dir, rewritten at each `qactl up` (a file, because it holds
``requirepass``, and a command line is visible to every user): bound to 127.0.0.1 on the
configured port, the stack's generated password, protected mode on, append-only persistence,
in the foreground so the supervisor owns it.

A Redis an older qactl left running (no password) is refused with the way out (`qactl down`,
then `qactl up`): its clients would lose it. Stopped, its data dir is simply reused.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from qactl.client import redis_client
from qactl.errors import ConfigError, PrerequisiteError
from qactl.runtime.component import Component, Report
from qactl.runtime.supervisor import Health, Port, ProcessSpec, Supervisor
from services.common.settings import QactlSettings, write_private_file

INSTALL_HINT = "apt-get install -y redis-server"


def home(settings: QactlSettings) -> Path:
    return settings.state_dir / "redis"


def redis_server(required: bool = False) -> str:
    found = shutil.which("redis-server")
    if found is None and required:
        raise PrerequisiteError(f"redis-server is not installed: {INSTALL_HINT}")
    return found or "redis-server"


def config_file(settings: QactlSettings) -> Path:
    return home(settings) / "redis.conf"


def config_text(settings: QactlSettings) -> str:
    r = settings.redis
    if r.password is None:
        raise ConfigError("no Redis password: the stack's credentials were not loaded")
    lines = [
        "# Written by qactl at each `qactl up` (qactl/runtime/redis.py); edits are replaced.",
        f"port {r.port}",
        f"bind {r.host}",
        f"dir {_quoted(str(home(settings)))}",
        "daemonize no",
        "supervised no",
        'logfile ""',  # stdout, into the supervisor's log file
        "appendonly yes",
        "appendfsync everysec",
        "save 300 10",
        "protected-mode yes",
        f"requirepass {_quoted(r.password.get_secret_value())}",
    ]
    return "\n".join(lines) + "\n"


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def provision(settings: QactlSettings, report: Report) -> None:
    redis_server(required=True)
    home(settings).mkdir(parents=True, exist_ok=True)
    if Supervisor(settings).is_running("redis") and _answers_without_password(settings):
        raise ConfigError(
            "Redis runs without a password (started by an older qactl): "
            "run `qactl down`, then `qactl up` to restart it with one (data is kept)"
        )
    write_private_file(config_file(settings), config_text(settings))


def _answers_without_password(settings: QactlSettings) -> bool:
    r = settings.redis
    try:
        return redis_client.ping(f"redis://{r.host}:{r.port}/0", timeout=1.0)
    except Exception:  # NOAUTH, refused, timed out: not an open Redis
        return False


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
    return ProcessSpec(
        name="redis",
        argv=[redis_server(), str(config_file(settings))],
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
            endpoint=_safe_url(r.connection_url),
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
