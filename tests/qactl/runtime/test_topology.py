"""One node or a cluster, and the kept topology, without starting anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qactl.cli.main import app
from qactl.errors import QactlError
from qactl.runtime import flink, kafka, services, topology
from services.common.settings import load_settings
from services.common.topics import Replication


def _props(settings, node: int) -> dict[str, str]:
    return dict(line.split("=", 1) for line in kafka.server_properties(settings, node).splitlines())


def test_replication_is_min_3_with_min_isr_2_from_three_brokers() -> None:
    assert [(r.factor, r.min_insync) for r in map(Replication.for_brokers, (1, 2, 3, 5))] == [
        (1, 1), (2, 1), (3, 2), (3, 2)
    ]


def test_three_kraft_nodes_each_broker_and_controller_in_one_static_quorum(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, kafka={"port": 29092, "controller_port": 29093, "brokers": 3})
    assert settings.kafka.bootstrap == "127.0.0.1:29092,127.0.0.1:29094,127.0.0.1:29096"
    assert kafka.process_names(settings) == ["kafka-1", "kafka-2", "kafka-3"]
    second = _props(settings, 2)
    assert second["node.id"] == "2" and second["process.roles"] == "broker,controller"
    assert second["listeners"] == "PLAINTEXT://127.0.0.1:29094,CONTROLLER://127.0.0.1:29095"
    assert second["controller.quorum.voters"] == "1@127.0.0.1:29093,2@127.0.0.1:29095,3@127.0.0.1:29097"
    assert "controller.quorum.bootstrap.servers" not in second
    assert second["log.dirs"] == str(tmp_path / "kafka-cluster" / "broker-2" / "data")
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor", "default.replication.factor"):
        assert second[key] == "3"
    assert second["min.insync.replicas"] == "2" and second["transaction.state.log.min.isr"] == "2"
    assert [p.ports[0].number for p in kafka.processes(settings)] == [29092, 29094, 29096]
    # The single node keeps its name, home and dynamic quorum.
    one = load_settings(state_dir=tmp_path, kafka={"port": 29092, "controller_port": 29093})
    assert kafka.process_names(one) == ["kafka"] and one.kafka.bootstrap == "127.0.0.1:29092"
    assert _props(one, 1)["offsets.topic.replication.factor"] == "1"


def test_broker_ports_that_would_collide_are_refused() -> None:
    with pytest.raises(ValueError, match="odd number"):
        load_settings(kafka={"port": 29092, "controller_port": 29094, "brokers": 3})


def test_two_taskmanagers_each_with_its_own_name_and_id_and_the_job_one_subtask_per_partition(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, flink={"taskmanagers": 2, "taskmanager_slots": 3})
    assert flink.process_names(settings) == ["flink-jobmanager", "flink-taskmanager-1", "flink-taskmanager-2"]
    assert [p.name for p in flink.processes(settings)] == flink.process_names(settings)
    assert flink.job_parallelism(settings) == 3
    assert flink.cluster_config(settings)["cluster.evenly-spread-out-slots"] is True
    assert flink.job_parallelism(load_settings(state_dir=tmp_path)) == 1
    assert flink.process_names(load_settings(state_dir=tmp_path))[1] == "flink-taskmanager"


def test_a_scaled_service_keeps_its_first_replica_and_every_slot(tmp_path: Path) -> None:
    one = {c.name: c for c in services.components(load_settings(state_dir=tmp_path))}
    two = {c.name: c for c in services.components(load_settings(state_dir=tmp_path, services={"persister_replicas": 2}))}
    assert [p.name for p in two["persister"].processes()] == ["persister", "persister-2"]
    assert list(two["persister"].processes())[0].ports == list(one["persister"].processes())[0].ports
    for name in ("retry-overload", "retry-quota", "llm-consumer"):
        assert one[name].endpoint == two[name].endpoint


def test_the_topology_is_kept_and_read_over_the_configuration(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, kafka={"port": 29092, "controller_port": 29093})
    assert topology.apply(settings) == settings  # nothing kept yet
    chosen = topology.with_values(settings, {"kafka": {"brokers": 3}, "services": {"llm_consumer_replicas": 4}})
    topology.save(chosen)
    assert (topology.path(settings).stat().st_mode & 0o777) == 0o600
    again = topology.apply(settings)
    assert again.kafka.brokers == 3 and again.services.llm_consumer_replicas == 4
    assert again.flink.taskmanagers == 1


def test_scale_refuses_an_unknown_service_and_a_stack_that_is_not_up(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, kafka={"port": 29092, "controller_port": 29093})
    with pytest.raises(QactlError, match="scalable services: persister, retry-overload, retry-quota, llm-consumer"):
        topology.scale(settings, "storage-api", 2)
    with pytest.raises(QactlError, match="not running"):
        topology.scale(settings, "llm-consumer", 3)
    assert not topology.path(settings).exists()


def test_every_command_sees_the_kept_topology(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.qactl.cli.cli_env import free_port

    port = free_port()
    monkeypatch.setenv("QACTL_KAFKA__PORT", str(port))
    monkeypatch.setenv("QACTL_KAFKA__CONTROLLER_PORT", str(port + 1))
    monkeypatch.setenv("QACTL_LLM__BACKEND", "simulated")
    (tmp_path / "topology.json").write_text(json.dumps({"kafka": {"brokers": 3}, "flink": {"taskmanagers": 2}}))
    result = CliRunner().invoke(app, ["--state-dir", str(tmp_path), "status", "--json"])
    processes = {c["name"]: [p["name"] for p in c["processes"]] for c in json.loads(result.stdout)["components"]}
    assert processes["kafka"] == ["kafka-1", "kafka-2", "kafka-3"]
    assert processes["flink"] == ["flink-jobmanager", "flink-taskmanager-1", "flink-taskmanager-2"]
    logs = CliRunner().invoke(app, ["--state-dir", str(tmp_path), "logs", "kafka"])
    assert "name one of: kafka-1, kafka-2, kafka-3" in logs.output
