"""compose/: the compose file, the image's install path, and the monitoring profile's files.

Fast checks without Docker; `test_compose_up.py` runs the topology for real and
`test_monitoring_metrics.py` reads every metric these files use from a real stack.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from qactl.runtime import container
from services.common.kafka import CONSUMER_LAG, TOPIC_MESSAGES, record_statistics
from services.common.settings import QactlSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"
MONITORING = COMPOSE / "monitoring"
ONE_SHOT = {"credentials", "setup", "score-job"}
OFFICIAL = {"prometheus", "grafana", "kafka-ui"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def qactl_services() -> dict[str, dict]:
    return {name: spec for name, spec in compose()["services"].items() if name not in OFFICIAL}


def settings_of(service: dict, monkeypatch: pytest.MonkeyPatch) -> QactlSettings:
    """The settings a container builds from its environment (the compose defaults applied)."""
    for key, value in service["environment"].items():
        value = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))
        monkeypatch.setenv(key, value)
    return load_settings()


def test_the_topology_is_every_component_in_a_container_of_its_own() -> None:
    services = qactl_services()
    runs = sorted(spec["command"][1] for spec in services.values() if spec["command"][0] == "run")
    assert runs == sorted([
        "kafka-1", "kafka-2", "kafka-3", "flink-jobmanager", "flink-taskmanager", "flink-taskmanager",
        "postgres", "redis", "llm-server", "llm-gateway", "storage-api", "persister",
        "retry-overload", "retry-quota", "llm-consumer-1", "llm-consumer-2",
    ])  # fmt: skip
    assert {name for name, spec in services.items() if spec["command"][0] != "run"} == ONE_SHOT
    for name, spec in services.items():
        assert spec["image"] == "qactl:local" and spec["build"]["dockerfile"] == "compose/Dockerfile", name
        if name in ONE_SHOT:
            assert spec["restart"] == "no" and "healthcheck" not in spec, name
            continue
        assert spec["hostname"] == name, name
        # The healthcheck is the runtime's probe of the very process the container runs.
        assert spec["healthcheck"]["test"] == ["CMD", "qactl", "container", "health", spec["command"][1]], name
    for name in OFFICIAL:
        assert compose()["services"][name]["profiles"] == ["monitoring"]
        assert "healthcheck" in compose()["services"][name]


def test_every_container_takes_the_credentials_generated_once_into_the_shared_volume(tmp_path: Path) -> None:
    """No trust on the compose network: one one-shot generates the stack's credentials, every
    other container starts after it with the same volume at its state dir's secrets/."""
    from typer.testing import CliRunner

    from qactl.cli.main import app
    from qactl.runtime import credentials

    state = tmp_path / "state"
    secrets_mount = str(credentials.secrets_dir(QactlSettings.model_validate({"state_dir": "/var/lib/qactl"})))
    for name, spec in qactl_services().items():
        assert f"secrets:{secrets_mount}" in spec["volumes"], name
        if name != "credentials":
            assert spec["depends_on"]["credentials"] == {"condition": "service_completed_successfully"}, name
    assert qactl_services()["credentials"]["command"] == ["credentials"]
    assert "trust" not in container.PG_HBA_LINE.split("#")[0] and "scram-sha-256" in container.PG_HBA_LINE

    runner = CliRunner()
    env = {"QACTL_STATE_DIR": str(state)}
    first = runner.invoke(app, ["container", "credentials"], env=env)
    assert first.exit_code == 0, first.output
    stored = credentials.path(QactlSettings.model_validate({"state_dir": state}))
    assert stored.stat().st_mode & 0o777 == 0o600
    shown = runner.invoke(app, ["container", "credentials", "--show"], env=env)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == json.loads(stored.read_text())  # generated once, then kept
    assert set(json.loads(shown.output)) == set(credentials.Credentials.model_fields)


def test_every_qactl_variable_of_the_compose_file_is_a_real_setting() -> None:
    """pydantic-settings ignores unknown QACTL_* variables: a typo would change nothing, silently."""
    fields = QactlSettings.model_fields
    for name, spec in qactl_services().items():
        for key in spec["environment"]:
            if key.startswith("QACTL_CONTAINER_"):
                assert key in {container.KAFKA_VOTERS_ENV, container.KAFKA_CLUSTER_ID_ENV, container.KAFKA_EXTERNAL_ENV}
                continue
            section, _, field = key.removeprefix("QACTL_").lower().partition("__")
            assert section in fields, f"{name}: {key}"
            model = fields[section].annotation
            assert field in model.model_fields, f"{name}: {key}"


def test_each_container_finds_the_process_it_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, spec in qactl_services().items():
        if spec["command"][0] != "run":
            continue
        settings = settings_of(spec, monkeypatch).model_copy(update={"state_dir": tmp_path / name})
        process = container.runnable(spec["command"][1], settings).spec
        if name.startswith("kafka-"):
            assert process.ports[0].host == name  # binds and advertises its own hostname
        if name == "storage-api":  # serves the other containers; its health probe asks 127.0.0.1
            assert process.settings.api.host == "0.0.0.0"
        if name == "llm-gateway":
            assert process.settings.gateway.host == "0.0.0.0"
        # Everything that other containers call is at the host name the compose file gives it.
        assert settings.gateway.base_url in ("http://llm-gateway:11435", "http://0.0.0.0:11435")
        assert settings.postgres.url == "postgresql://qactl@postgres:5432/qactl"
        assert settings.flink.rest == "http://flink-jobmanager:8081"


def test_a_kafka_node_is_one_of_three_voters_with_replicated_topics() -> None:
    settings = QactlSettings.model_validate({"kafka": {"host": "kafka-2"}, "state_dir": "/tmp/unused"})
    voters = "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
    text = container.kafka_node_properties(settings, 2, voters, external="127.0.0.1:19093")
    props = dict(line.split("=", 1) for line in text.splitlines())
    assert props["node.id"] == "2" and props["controller.quorum.voters"] == voters
    assert "controller.quorum.bootstrap.servers" not in props
    assert props["default.replication.factor"] == "3" and props["min.insync.replicas"] == "2"
    assert props["offsets.topic.replication.factor"] == "3" and props["transaction.state.log.min.isr"] == "2"
    assert props["listeners"] == "PLAINTEXT://kafka-2:9092,CONTROLLER://kafka-2:9093,EXTERNAL://0.0.0.0:19093"
    assert props["advertised.listeners"].endswith(",EXTERNAL://127.0.0.1:19093")
    assert "EXTERNAL:PLAINTEXT" in props["listener.security.protocol.map"]
    assert int(props["broker.session.timeout.ms"]) < 5000  # a dead broker's partitions move before the API gives up


def test_the_image_installs_with_the_native_install_steps() -> None:
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=debian:bookworm$", dockerfile, re.MULTILINE)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.MULTILINE)
    steps = [s.strip() for s in re.findall(r"bash scripts/bootstrap.sh ([a-z ]+)", dockerfile)]
    assert steps == ["system", "venv", "llm", "runtime"]
    done = subprocess.run(["bash", str(ROOT / "scripts" / "bootstrap.sh"), "nonsense"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown step" in done.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_accepts_the_file_with_and_without_the_monitoring_profile() -> None:
    for extra in ([], ["--profile", "monitoring"]):
        done = subprocess.run(
            ["docker-compose", "-f", str(COMPOSE_FILE), *extra, "config", "--services"],
            capture_output=True, text=True, check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "llm-consumer-2" in done.stdout.split()


# --- the monitoring profile's files -------------------------------------------------------------


def promql_expressions() -> list[str]:
    """Every PromQL expression of the dashboard and of the rules."""
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "qactl.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = yaml.safe_load((MONITORING / "rules.yml").read_text())
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    return exprs


PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "min", "max", "le", "topic", "direction",
    "group", "kind", "stage", "state", "outcome", "endpoint", "result", "dependency", "up",
}


def metric_names() -> set[str]:
    """The series names the expressions select (label names, functions and ranges left out)."""
    names = set()
    for expr in promql_expressions():
        bare = re.sub(r"\{[^}]*\}", "", re.sub(r"\[[^\]]*\]", "", expr))
        names |= {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare) if w not in PROMQL_WORDS}
    return {n for n in names if not n.startswith("qactl:")}  # recording rules are defined above


def test_the_monitoring_files_parse_and_the_dashboard_covers_the_plan() -> None:
    prometheus = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    assert jobs == {"storage-api", "llm-gateway", "llm-server", "persister", "retry", "llm-consumer"}
    targets = {t for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    hosts = {t.split(":")[0] for t in targets}
    assert hosts <= set(compose()["services"])  # every target is a container of the compose file
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "qactl.json").read_text())
    titles = " / ".join(p["title"] for p in dashboard["panels"]).lower()
    for wanted in ("throughput by topic", "lag", "retries by kind", "score distribution", "latency by stage"):
        assert wanted in titles
    datasource = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert all(p["datasource"]["uid"] == uid for p in dashboard["panels"])
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/qactl.yml").read_text())
    mount = compose()["services"]["grafana"]["volumes"][1].split(":")[1]
    assert provider["providers"][0]["options"]["path"] == mount
    assert metric_names()  # what test_monitoring_metrics.py reads back from a real stack


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) not installed")
def test_promtool_accepts_the_configuration_and_the_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    shutil.copy(MONITORING / "rules.yml", rules)
    config = (MONITORING / "prometheus.yml").read_text().replace("/etc/prometheus/rules.yml", str(rules))
    (tmp_path / "prometheus.yml").write_text(config)
    for argv in (["check", "config", str(tmp_path / "prometheus.yml")], ["check", "rules", str(rules)]):
        done = subprocess.run(["promtool", *argv], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_kafka_statistics_become_throughput_by_topic_and_lag() -> None:
    def stats(lag_p0: int, fetch_p1: str) -> str:
        return json.dumps({
            "name": "persister#consumer-9", "type": "consumer",
            "topics": {"validated-responses": {"partitions": {
                "0": {"rxmsgs": 5, "consumer_lag": lag_p0, "fetch_state": "active"},
                "1": {"rxmsgs": 7, "consumer_lag": 3, "fetch_state": fetch_p1},
                "-1": {"rxmsgs": 100, "consumer_lag": -1, "fetch_state": "none"},
            }}},
        })  # fmt: skip

    record_statistics(stats(4, "active"), "test-group")
    assert TOPIC_MESSAGES.labels("persister#consumer-9", "validated-responses", "consumed")._value.get() == 12
    assert CONSUMER_LAG.labels("test-group", "validated-responses", "0")._value.get() == 4
    assert CONSUMER_LAG.labels("test-group", "validated-responses", "1")._value.get() == 3
    record_statistics(stats(0, "none"), "test-group")  # partition 1 revoked meanwhile
    lags = {s.labels["partition"]: s.value for s in CONSUMER_LAG.collect()[0].samples if s.labels["group"] == "test-group"}
    assert lags == {"0": 0}


def test_each_taskmanager_container_registers_with_an_id_of_its_own(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Both TaskManager containers run `qactl container run flink-taskmanager` from one image: the
    resource id they start with is the one their provisioning just wrote (and their health probe
    looks for), never the default both would share (they then took each other's registration)."""
    from qactl.runtime import flink

    started: list[list[str]] = []
    monkeypatch.setattr(flink, "provision", lambda settings, report: flink._new_taskmanager_ids(settings))
    monkeypatch.setattr(container.os, "chdir", lambda path: None)
    monkeypatch.setattr(container.os, "execvpe", lambda file, argv, env: started.append(argv))
    ids = []
    for number in (1, 2):
        settings = QactlSettings.model_validate({"state_dir": tmp_path / f"container-{number}"})
        flink.base(settings).mkdir(parents=True)
        container.run(flink.TASKMANAGER, settings, lambda line: None)
        (resource,) = [arg.split("=", 1)[1] for arg in started[-1] if arg.startswith("taskmanager.resource-id=")]
        assert resource == flink.taskmanager_id(settings)  # what its health probe asks the JobManager for
        ids.append(resource)
    assert ids[0] != ids[1]
