import tomllib
from pathlib import Path

import pytest

from services.common.settings import QactlSettings

EXAMPLE = Path(__file__).resolve().parents[2] / "qactl.example.toml"


def test_example_config_documents_every_key_with_its_default(monkeypatch):
    monkeypatch.delenv("QACTL_CONFIG", raising=False)
    defaults = QactlSettings().model_dump()
    documented = tomllib.loads(EXAMPLE.read_text())
    for section, values in documented.items():
        for key, value in values.items():
            assert defaults[section][key] == value, f"{section}.{key} in qactl.example.toml"
    for section in ("policies", "kafka", "flink", "postgres", "redis", "api", "llm", "gateway", "services"):
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
