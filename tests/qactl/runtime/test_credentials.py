"""The stack's credentials and listeners, without processes: made once, kept, applied; what a
host setting beyond loopback does. The real servers' side is tests/integration/test_doors.py."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from qactl.errors import ConfigError
from qactl.runtime import credentials, exposure, postgres
from qactl.runtime.stack import Stack
from services.common.settings import QactlSettings, load_settings


@pytest.fixture
def settings(isolated_env: Path) -> QactlSettings:
    return load_settings(state_dir=isolated_env, llm={"backend": "simulated"})


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_credentials_are_made_once_private_and_never_rewritten(settings: QactlSettings) -> None:
    assert credentials.load(settings) is None
    first = credentials.ensure(settings)
    stored = credentials.path(settings).read_bytes()
    assert _mode(credentials.path(settings)) == 0o600 and _mode(credentials.secrets_dir(settings)) == 0o700
    assert _mode(settings.state_dir) & 0o077 in (0, 0o010)  # 0700, or 0710 for PostgreSQL's group
    assert credentials.ensure(settings) == first
    assert credentials.path(settings).read_bytes() == stored
    values = credentials.secret_values(credentials.applied(settings, first))
    assert len(set(values)) == 4 and all(len(v) >= 32 for v in values)


def test_a_key_missing_from_an_older_file_is_added_and_the_others_kept(settings: QactlSettings) -> None:
    credentials.ensure(settings)
    older = json.loads(credentials.path(settings).read_text())
    del older["gateway_admin_token"]
    credentials.path(settings).write_text(json.dumps(older))
    completed = credentials.ensure(settings)
    assert completed.postgres_password.get_secret_value() == older["postgres_password"]
    assert completed.gateway_admin_token.get_secret_value()


def test_what_the_user_set_wins_and_external_endpoints_are_used_as_given(settings: QactlSettings) -> None:
    mine = load_settings(
        state_dir=settings.state_dir, postgres={"password": "pg-mine"}, redis={"url": "redis://:theirs@cache:6379/0"}
    )
    applied = credentials.with_stored(mine, create=True)
    assert applied.postgres.url == "postgresql://qactl:pg-mine@127.0.0.1:5432/qactl"
    assert applied.redis.connection_url == "redis://:theirs@cache:6379/0"
    assert applied.gateway.admin_token is not None  # generated: no built-in default any more


def test_without_stored_credentials_nothing_is_invented(settings: QactlSettings) -> None:
    assert credentials.with_stored(settings) == settings
    assert settings.gateway.admin_token is None
    assert settings.postgres.url == "postgresql://qactl@127.0.0.1:5432/qactl"


def test_a_password_with_url_characters_is_quoted_in_the_dsn_and_url(settings: QactlSettings) -> None:
    odd = load_settings(postgres={"password": "a@b:c/d%"}, redis={"password": "x@y/z"})
    assert odd.postgres.url == "postgresql://qactl:a%40b%3Ac%2Fd%25@127.0.0.1:5432/qactl"
    assert odd.redis.connection_url == "redis://:x%40y%2Fz@127.0.0.1:6379/0"


def test_declaring_the_stack_makes_the_credentials_and_hands_them_to_every_component(settings: QactlSettings) -> None:
    stack = Stack(settings)
    creds = credentials.load(settings)
    assert creds is not None
    service = next(c for c in stack.components if c.name == "storage-api")
    (spec,) = service.processes()
    assert spec.settings is not None
    assert spec.settings.redis.password == creds.redis_password
    assert spec.settings.postgres.password == creds.postgres_password
    assert all("***" in c.endpoint or "://" not in c.endpoint or "@" not in c.endpoint for c in stack.components)


# --- listeners beyond loopback ---


@pytest.mark.parametrize(
    ("section", "component"), [("kafka", "kafka"), ("flink", "flink")]
)
def test_an_unauthenticated_listener_beyond_loopback_is_refused(settings: QactlSettings, section: str, component: str) -> None:
    exposed = settings.model_copy(update={section: getattr(settings, section).model_copy(update={"host": "0.0.0.0"})})
    with pytest.raises(ConfigError, match=rf"{section}.host=0.0.0.0 would expose {component}"):
        exposure.check(exposed)
    with pytest.raises(ConfigError):
        Stack(exposed)


def test_an_explicit_opt_in_lets_an_unauthenticated_listener_out_with_a_warning(settings: QactlSettings) -> None:
    exposed = load_settings(kafka={"host": "0.0.0.0"}, llm={"backend": "simulated"}, allow_unauthenticated_listeners=True)
    (line,) = exposure.check(exposed)
    assert "kafka listens on 0.0.0.0" in line and "allow_unauthenticated_listeners" in line


def test_the_model_server_beyond_loopback_is_refused_only_when_it_runs(settings: QactlSettings) -> None:
    local = load_settings(state_dir=settings.state_dir, llm={"backend": "local"}, llm_server={"host": "0.0.0.0"})
    with pytest.raises(ConfigError, match="llm-server"):
        exposure.check(local)
    assert exposure.check(local.model_copy(update={"llm": settings.llm})) == []


@pytest.mark.parametrize(
    ("section", "needle"),
    [("postgres", "password authentication"), ("redis", "requirepass"), ("api", "no authentication"), ("gateway", "need no token")],
)
def test_an_authenticated_or_public_listener_beyond_loopback_is_one_loud_line(settings: QactlSettings, section: str, needle: str) -> None:
    exposed = settings.model_copy(update={section: getattr(settings, section).model_copy(update={"host": "192.0.2.7"})})
    (line,) = exposure.check(exposed)
    assert "192.0.2.7" in line and needle in line and "\n" not in line


def test_loopback_in_any_spelling_is_quiet_and_external_endpoints_are_not_checked(settings: QactlSettings) -> None:
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        assert exposure.is_loopback(host)
    assert not exposure.is_loopback("0.0.0.0") and not exposure.is_loopback("db.example")
    assert exposure.check(settings) == []
    external = load_settings(kafka={"bootstrap_servers": "broker:9092", "host": "0.0.0.0"}, llm={"backend": "simulated"})
    assert exposure.check(external) == []


def test_postgres_accepts_remote_clients_only_with_a_password_and_only_when_it_listens_there(settings: QactlSettings) -> None:
    local = postgres.hba_text(settings)
    assert "0.0.0.0/0" not in local and "trust" not in local
    remote = postgres.hba_text(load_settings(postgres={"host": "0.0.0.0"}))
    rules = [line.split() for line in remote.splitlines() if line and not line.startswith("#")]
    assert ["host", "all", "all", "0.0.0.0/0", "scram-sha-256"] in rules
    assert all(rule[-1] == "scram-sha-256" for rule in rules)
