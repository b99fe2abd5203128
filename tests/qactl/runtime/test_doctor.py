"""`qactl doctor` names what is missing and how to install it (PATH decides what exists)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from qactl.runtime import doctor
from services.common.settings import load_settings


def fake_java(directory: Path, version: str) -> None:
    """A `java` that reports ``version`` the way the JDK does (on stderr)."""
    script = directory / "java"
    script.write_text(f'#!/bin/sh\necho \'openjdk version "{version}" 2021-04-20\' >&2\n')
    script.chmod(0o755)


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


@pytest.mark.parametrize(
    ("output", "major"),
    [('openjdk version "17.0.15" 2025-04-15', 17), ('java version "1.8.0_292"', 8), ('openjdk version "21" 2023', 21)],
)
def test_java_major_version(output: str, major: int) -> None:
    assert doctor.java_major(output) == major


def test_missing_binaries_are_named_with_their_install_command(isolated_env: Path, empty_path: Path) -> None:
    checks = by_name(doctor.run_checks(load_settings(state_dir=isolated_env, cache_dir=empty_path.parent / "cache")))
    assert not checks["java"].ok and "openjdk-17" in checks["java"].fix
    assert not checks["maven"].ok and checks["maven"].fix == "apt-get install -y maven"
    assert not checks["redis"].ok and checks["redis"].fix == "apt-get install -y redis-server"


def test_old_java_is_refused(isolated_env: Path, empty_path: Path) -> None:
    fake_java(empty_path, "1.8.0_292")
    check = doctor.check_java()
    assert not check.ok and "Java 8" in check.detail and "17" in check.detail


def test_java_17_passes(empty_path: Path) -> None:
    fake_java(empty_path, "17.0.15")
    assert doctor.check_java().ok


def test_external_components_need_no_local_binaries(isolated_env: Path, empty_path: Path) -> None:
    settings = load_settings(
        state_dir=isolated_env,
        redis={"url": "redis://db.example:6379/0"},
        postgres={"dsn": "postgresql://u@db.example/qactl"},
    )
    checks = by_name(doctor.run_checks(settings))
    assert checks["redis"].ok and checks["postgresql"].ok


def test_a_taken_port_names_the_setting_that_moves_it(isolated_env: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        checks = by_name(doctor.check_ports(load_settings(state_dir=isolated_env, redis={"port": port})))
    check = checks[f"port {port}"]
    assert not check.ok and "QACTL_REDIS__PORT" in check.fix


def test_disk_and_pyflink_are_checked(isolated_env: Path) -> None:
    checks = by_name(doctor.run_checks(load_settings(state_dir=isolated_env)))
    assert checks["disk"].ok and "GiB free" in checks["disk"].detail
    assert checks["pyflink"].ok and "flink-python" in checks["pyflink"].detail


@pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL changes user only when qactl runs as root")
def test_a_state_dir_the_postgres_user_cannot_reach_is_a_clear_error() -> None:
    import shutil
    import tempfile

    from qactl.errors import ConfigError
    from qactl.runtime import postgres

    # Not under tmp_path: pytest's own base dir is already mode 700.
    private = Path(tempfile.mkdtemp(prefix="qactl-private-", dir="/tmp"))
    try:
        (private / "state").mkdir()
        private.chmod(0o700)
        with pytest.raises(ConfigError, match=r"cannot reach .*qactl-private-\w+ is mode 700.*QACTL_STATE_DIR"):
            postgres.check_reachable(private / "state", "postgres")
        check = {c.name: c for c in doctor.run_checks(load_settings(state_dir=private / "state"))}["postgresql"]
        assert not check.ok and "QACTL_STATE_DIR" in check.fix
        private.chmod(0o755)
        postgres.check_reachable(private / "state", "postgres")
    finally:
        shutil.rmtree(private)


def local_settings(tmp: Path, **llm_server: object):
    # An Ollama URL where nothing listens: auto means the local model server.
    return load_settings(
        state_dir=tmp / "state", cache_dir=tmp / "cache", llm={"backend": "auto", "ollama_url": "http://127.0.0.1:9"},
        llm_server=llm_server,
    )


def test_llm_server_without_cmake_or_compiler_says_how_to_get_them(isolated_env: Path, empty_path: Path) -> None:
    check = doctor.check_llm_server(local_settings(empty_path.parent))
    assert not check.ok
    assert "cmake" in check.detail and "C++ compiler" in check.detail
    assert "apt-get install -y cmake g++" in check.fix and "QACTL_LLM__BACKEND=simulated" in check.fix


def test_llm_server_to_be_built_is_a_warning_with_the_time_it_takes(isolated_env: Path, empty_path: Path) -> None:
    for tool in ("cmake", "cc", "c++"):
        (empty_path / tool).write_text("#!/bin/sh\n")
        (empty_path / tool).chmod(0o755)
    check = doctor.check_llm_server(local_settings(empty_path.parent))
    assert check.ok and check.warning and "min on 2 cores" in check.detail


def test_llm_server_model_that_is_not_gguf_is_refused(isolated_env: Path, empty_path: Path) -> None:
    bogus = empty_path.parent / "model.gguf"
    bogus.write_bytes(b"<html>not a model</html>")
    check = doctor.check_llm_server(local_settings(empty_path.parent, model_path=str(bogus)))
    assert not check.ok and "not a GGUF model" in check.detail


def test_llm_server_not_needed_with_the_simulator(isolated_env: Path, empty_path: Path) -> None:
    settings = load_settings(state_dir=empty_path.parent / "s", llm={"backend": "simulated"})
    check = doctor.check_llm_server(settings)
    assert check.ok and "simulated" in check.detail
