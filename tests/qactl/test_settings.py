import os
import tomllib
from pathlib import Path

import pytest

from services.common.settings import (
    SETTINGS_FILE_ENV,
    QactlSettings,
    get_settings,
    load_settings,
    read_settings_file,
    write_settings_file,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "qactl.example.toml"


def test_example_config_documents_every_key_with_its_default(monkeypatch):
    monkeypatch.delenv("QACTL_CONFIG", raising=False)
    defaults = QactlSettings().model_dump()
    documented = tomllib.loads(EXAMPLE.read_text())
    for section, values in documented.items():
        for key, value in values.items():
            assert defaults[section][key] == value, f"{section}.{key} in qactl.example.toml"
    for section in ("policies", "kafka", "flink", "postgres", "redis", "api", "llm", "llm_server", "gateway", "services"):
        assert section in documented, f"section [{section}] missing from qactl.example.toml"


def test_environment_overrides_the_config_file(monkeypatch, tmp_path):
    config = tmp_path / "qactl.toml"
    config.write_text("[kafka]\nport = 19092\n[policies]\ndelay_scale = 0.5\n")
    monkeypatch.setenv("QACTL_CONFIG", str(config))
    monkeypatch.setenv("QACTL_KAFKA__PORT", "29092")
    settings = QactlSettings()
    assert settings.kafka.port == 29092
    assert settings.kafka.bootstrap == "127.0.0.1:29092"
    assert settings.policies.delay_scale == 0.5
    assert settings.policies.shortened


def test_external_endpoints_are_recognised(monkeypatch):
    monkeypatch.setenv("QACTL_KAFKA__BOOTSTRAP_SERVERS", "broker:9092")
    monkeypatch.setenv("QACTL_POSTGRES__DSN", "postgresql://u:secret@db/qactl")
    settings = QactlSettings()
    assert settings.kafka.external and settings.kafka.bootstrap == "broker:9092"
    assert settings.postgres.external and "secret" not in repr(settings.postgres)
    assert not settings.redis.external


def test_overload_delays_follow_the_policy():
    policies = QactlSettings().policies
    assert [policies.overload_delay_seconds(n) for n in range(3)] == [1.0, 2.0, 4.0]
    assert policies.quota_delay() == 60.0


def test_invalid_value_is_refused(monkeypatch):
    monkeypatch.setenv("QACTL_KAFKA__PORT", "not-a-port")
    with pytest.raises(ValueError, match="port"):
        QactlSettings()


def test_a_config_file_given_to_load_settings_is_read_and_the_environment_is_left_alone(monkeypatch, tmp_path):
    config = tmp_path / "given.toml"
    config.write_text("[kafka]\nport = 19092\n")
    before = dict(os.environ)
    settings = load_settings(config, state_dir=tmp_path / "state")
    assert settings.kafka.port == 19092 and settings.state_dir == tmp_path / "state"
    assert dict(os.environ) == before
    assert load_settings().kafka.port == 9092  # given to that call only


def test_the_settings_file_is_private_and_round_trips_every_field_secrets_included(tmp_path):
    settings = load_settings(
        state_dir=tmp_path,
        postgres={"dsn": "postgresql://u:pg-secret@db/qactl"},
        redis={"url": "redis://:redis-secret@cache:6379/0"},
        llm={"openai_api_key": "sk-secret", "backend": "openai"},
        gateway={"admin_token": "token-secret", "upstream_url": "http://llm:11434"},
        flink={"extra_config": {"state.backend.type": "rocksdb", "parallelism.default": 2}},
        policies={"delay_scale": 0.05},
    )
    path = write_settings_file(settings, tmp_path / "run" / "x.settings.json")
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_settings_file(path) == settings
    for secret in ("pg-secret", "redis-secret", "sk-secret", "token-secret"):
        assert secret in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_a_process_handed_a_settings_file_reads_only_that(monkeypatch, tmp_path):
    path = write_settings_file(load_settings(kafka={"port": 45678}), tmp_path / "settings.json")
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(path))
    monkeypatch.setenv("QACTL_KAFKA__PORT", "1")
    get_settings.cache_clear()
    try:
        assert get_settings().kafka.port == 45678
    finally:
        get_settings.cache_clear()
