"""Point the CLI at the test stack's services: its root builds the settings from the environment."""

from __future__ import annotations

import socket

import pytest

from services.common.settings import QactlSettings


def use_settings(monkeypatch: pytest.MonkeyPatch, settings: QactlSettings) -> None:
    """Export the parts of ``settings`` the commands use, as a user's shell would."""
    monkeypatch.setenv("QACTL_API__PORT", str(settings.api.port))
    monkeypatch.setenv("QACTL_GATEWAY__PORT", str(settings.gateway.port))
    monkeypatch.setenv("QACTL_KAFKA__PORT", str(settings.kafka.port))
    monkeypatch.setenv("QACTL_REDIS__PORT", str(settings.redis.port))
    monkeypatch.setenv("QACTL_POSTGRES__PORT", str(settings.postgres.port))
    monkeypatch.setenv("QACTL_SERVICES__METRICS_BASE_PORT", str(settings.services.metrics_base_port))
    monkeypatch.setenv("QACTL_LLM__BACKEND", settings.llm.backend)
    monkeypatch.setenv("QACTL_LLM__TIMEOUT_SECONDS", str(settings.llm.timeout_seconds))
    # The stack's credentials (its state dir's, which the CLI's isolated state dir does not hold).
    for name, secret in (
        ("QACTL_POSTGRES__PASSWORD", settings.postgres.password),
        ("QACTL_REDIS__PASSWORD", settings.redis.password),
        ("QACTL_GATEWAY__ADMIN_TOKEN", settings.gateway.admin_token),
    ):
        if secret is not None:
            monkeypatch.setenv(name, secret.get_secret_value())
    if settings.postgres.dsn is not None:
        monkeypatch.setenv("QACTL_POSTGRES__DSN", settings.postgres.dsn.get_secret_value())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nothing_listening(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every service the commands talk to on a port where nothing answers."""
    for key in ("API", "GATEWAY", "POSTGRES", "REDIS", "KAFKA"):
        monkeypatch.setenv(f"QACTL_{key}__PORT", str(free_port()))
    monkeypatch.setenv("QACTL_SERVICES__METRICS_BASE_PORT", str(free_port()))
    monkeypatch.setenv("QACTL_LLM__BACKEND", "gateway")


def flat(output: str) -> str:
    """Rich wraps long lines at the terminal width; compare text with single spaces."""
    return " ".join(output.split())
