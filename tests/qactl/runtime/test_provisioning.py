"""Provisioning helpers without starting anything: the jar cache, class-data archives, configs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from qactl.runtime import flink, jvm, kafka, maven
from services.common.settings import load_settings


def test_a_complete_jar_copy_skips_maven_entirely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pom = maven.asset("kafka", "pom.xml")
    dest = tmp_path / "libs"
    dest.mkdir()
    properties = {"kafka.version": "4.1.1"}
    (dest / maven.MARKER).write_text(maven._fingerprint(pom, properties))
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn: calling Maven would fail
    assert maven.copy_dependencies(pom, dest, properties) is False
    assert not maven.is_complete(dest, pom, {"kafka.version": "4.2.0"})  # another version: not this copy


def test_without_maven_a_missing_copy_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qactl.errors import PrerequisiteError

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PrerequisiteError, match="apt-get install -y maven"):
        maven.copy_dependencies(maven.asset("flink", "pom.xml"), tmp_path / "libs", {})


def test_class_data_archive_is_created_then_used_and_stale_ones_dropped(tmp_path: Path) -> None:
    class_path = ["/opt/libs", "v1"]
    create = jvm.cds_flags(tmp_path, "kafka", class_path)
    assert create[0].startswith("-XX:ArchiveClassesAtExit=") and jvm.QUIET in create
    archive = jvm.archive_path(tmp_path, "kafka", class_path)
    archive.write_bytes(b"archive")
    assert jvm.cds_flags(tmp_path, "kafka", class_path)[0] == f"-XX:SharedArchiveFile={archive}"
    # New jars: a new archive name, and provisioning removes the old archive.
    assert jvm.archive_path(tmp_path, "kafka", ["/opt/libs", "v2"]) != archive
    jvm.prepare_archives(tmp_path, "kafka", ["/opt/libs", "v2"])
    assert not archive.exists()


def test_kafka_config_is_a_single_kraft_node_on_the_configured_ports(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, kafka={"port": 29092, "controller_port": 29093})
    props = dict(line.split("=", 1) for line in kafka.server_properties(settings).splitlines())
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:29093"
    assert props["log.dirs"] == str(tmp_path / "kafka" / "data")
    assert props["auto.create.topics.enable"] == "false"


def test_kafka_unpacks_its_native_libraries_under_the_state_dir(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    kafka.write_config(settings)
    assert (tmp_path / "kafka" / "tmp").is_dir()
    assert f"-Djava.io.tmpdir={tmp_path / 'kafka' / 'tmp'}" in kafka.process(settings).argv


def test_kafka_cluster_id_is_generated_once(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    first = kafka.cluster_id(settings)
    assert len(first) == 22 and not first.startswith("-")
    assert kafka.cluster_id(settings) == first


def test_flink_config_pins_rest_and_rpc_and_lets_the_os_pick_the_rest(tmp_path: Path) -> None:
    settings = load_settings(
        state_dir=tmp_path,
        flink={"rest_port": 28081, "rpc_port": 28123, "taskmanager_slots": 3, "extra_config": {"pipeline.name": "x"}},
    )
    config = flink.cluster_config(settings)
    assert config["rest.port"] == 28081 and config["jobmanager.rpc.port"] == 28123
    assert config["taskmanager.rpc.port"] == "0" and config["blob.server.port"] == "0"
    assert config["taskmanager.numberOfTaskSlots"] == 3
    assert config["taskmanager.memory.process.size"] == "2560m"
    assert config["python.executable"] == sys.executable
    assert config["execution.checkpointing.dir"] == (tmp_path / "flink" / "checkpoints").as_uri()
    assert "--add-opens" in config["env.java.opts.all"]  # the bundled Java 17 flags are kept
    assert config["env.java.opts.all"].endswith(f" -Djava.io.tmpdir={tmp_path / 'flink' / 'tmp'}")
    assert config["pipeline.name"] == "x"


def test_flink_submission_helpers_point_at_our_cluster_and_connector(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, flink={"rest_port": 28081})
    env = flink.flink_env(settings)
    assert env["FLINK_CONF_DIR"] == str(tmp_path / "flink" / "conf")
    assert env["FLINK_LIB_DIR"] == str(tmp_path / "flink" / "lib")
    assert env["PYFLINK_CLIENT_EXECUTABLE"] == sys.executable
    argv = flink.submit_argv(settings, Path("/jobs/job.py"), "--x", "1")
    assert argv[:5] == [str(flink.flink_cli()), "run", "-m", "127.0.0.1:28081", "-d"]
    assert argv[5:] == ["-py", "/jobs/job.py", "-pyfs", "/jobs", "--x", "1"]
    assert flink.flink_connector_jar(settings).name == "flink-sql-connector-kafka-5.0.0-2.2.jar"
    assert flink.flink_python_jar().name.startswith("flink-python-2.2")


def test_the_scorer_encoder_is_exported_once_before_the_job_needs_it(tmp_path: Path) -> None:
    from flink.onnx_encoder import onnx_path
    from flink.scoring import Calibration
    from qactl.runtime.score_job import prepare_scorer_model

    settings = load_settings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    said: list[str] = []
    prepare_scorer_model(settings, said.append)
    assert onnx_path(Calibration.load().num_layers, tmp_path / "cache").is_file()
    assert len(said) == 1 and "exporting" in said[0]
    prepare_scorer_model(settings, said.append)  # cached: nothing to do, nothing said
    assert len(said) == 1
    assert flink.flink_env(settings)["QACTL_CACHE_DIR"] == str(tmp_path / "cache")  # where the workers look


def test_a_failed_scorer_export_is_said_and_does_not_stop_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qactl.runtime.score_job import prepare_scorer_model

    monkeypatch.setattr(flink, "python_executable", lambda: "/bin/false")  # the export cannot run
    settings = load_settings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    said: list[str] = []
    prepare_scorer_model(settings, said.append)
    assert said[-1].startswith("scorer encoder not exported; the job will run it in torch")
