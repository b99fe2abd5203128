"""The pipeline services declared for `qactl up`: names, replicas, ports, and settings passed on."""

import os
import subprocess
import sys

from qactl.runtime.services import SERVICES, ServiceRow, components
from services.common.settings import SETTINGS_FILE_ENV, load_settings, write_settings_file


def _by_name(settings):
    return {c.name: c for c in components(settings)}


def test_every_service_is_python_dash_m_with_its_slot_and_health_port(tmp_path) -> None:
    settings = load_settings(
        state_dir=tmp_path,
        llm={"backend": "gateway"},
        services={"llm_consumer_replicas": 3, "metrics_base_port": 23300},
        api={"port": 23001},
        gateway={"port": 23435},
    )
    found = _by_name(settings)
    assert list(found) == ["llm-gateway", "storage-api", "persister", "retry-overload", "retry-quota", "llm-consumer"]
    consumers = list(found["llm-consumer"].processes())
    assert [p.name for p in consumers] == ["llm-consumer-1", "llm-consumer-2", "llm-consumer-3"]
    assert [p.ports[0].number for p in consumers] == [23330, 23331, 23332]
    assert [p.env["QACTL_SERVICE_SLOT"] for p in consumers] == ["30", "31", "32"]
    assert [p.env["QACTL_SERVICE_REPLICA"] for p in consumers] == ["1", "2", "3"]
    (overload,) = found["retry-overload"].processes()
    assert list(overload.argv) == [sys.executable, "-m", "services.retry", "overload"]
    assert overload.ports[0].number == 23310
    (api,) = found["storage-api"].processes()
    assert list(api.argv)[1:] == ["-m", "services.storage_api"] and api.ports[0].number == 23001
    (gateway,) = found["llm-gateway"].processes()
    assert gateway.ports[0].number == 23435
    assert all(c.kind == "service" for c in found.values())


def test_fixed_slots_do_not_move_with_the_number_of_replicas(tmp_path) -> None:
    one = _by_name(load_settings(state_dir=tmp_path, services={"llm_consumer_replicas": 1}))
    five = _by_name(load_settings(state_dir=tmp_path, services={"llm_consumer_replicas": 5}))
    for name in ("persister", "retry-overload", "retry-quota"):
        assert one[name].endpoint == five[name].endpoint


def test_a_new_service_is_one_row(tmp_path) -> None:
    # Its replicas come from the setting named by scale_field (here one that says 2).
    rows = (*SERVICES, ServiceRow("echo", "services.echo", scale_field="llm_consumer_replicas"))
    settings = load_settings(state_dir=tmp_path, services={"llm_consumer_replicas": 2})
    found = {c.name: c for c in components(settings, rows)}
    assert [p.name for p in found["echo"].processes()] == ["echo-1", "echo-2"]


def test_a_child_process_sees_exactly_the_parent_settings_including_secrets(tmp_path) -> None:
    settings = load_settings(
        state_dir=tmp_path,
        kafka={"port": 23092},
        llm={"backend": "gateway", "openai_api_key": "sk-test", "concurrency": 3},
        policies={"delay_scale": 0.05},
    )
    (spec,) = _by_name(settings)["persister"].processes()
    assert spec.settings == settings
    handed = write_settings_file(spec.settings, tmp_path / "run" / "persister.settings.json")
    code = (
        "from services.common.settings import get_settings as g; s = g(); "
        "print(s.kafka.port, s.llm.openai_api_key.get_secret_value(), s.llm.concurrency, "
        "s.policies.delay_scale, s.state_dir)"
    )
    # The caller's environment says otherwise: the file wins, whatever the child inherits.
    env = {**os.environ, "QACTL_KAFKA__PORT": "1", SETTINGS_FILE_ENV: str(handed)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["23092", "sk-test", "3", "0.05", str(tmp_path)]
