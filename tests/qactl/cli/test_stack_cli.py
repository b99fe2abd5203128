"""`qactl up/down/status/logs/doctor` arguments and errors, with nothing running."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest
from typer.testing import CliRunner

from qactl.cli.main import app
from tests.qactl.cli.cli_env import free_port

runner = CliRunner()


@pytest.fixture(autouse=True)
def unused_ports(monkeypatch):
    """Ports nothing listens on, so 'nothing running' is what the probes find."""
    for setting in ("KAFKA__PORT", "KAFKA__CONTROLLER_PORT", "FLINK__REST_PORT", "FLINK__RPC_PORT",
                    "POSTGRES__PORT", "REDIS__PORT", "API__PORT", "GATEWAY__PORT"):
        monkeypatch.setenv(f"QACTL_{setting}", str(free_port()))
    monkeypatch.setenv("QACTL_LLM__BACKEND", "gateway")


def test_status_of_a_stack_that_is_not_up_exits_1_and_says_down():
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    components = report["components"]
    names = {entry["name"] for entry in components}
    assert {"kafka", "flink", "postgres", "redis", "storage-api", "score-job"} <= names
    assert not any(entry["ok"] for entry in components)
    assert all(not p["running"] for entry in components for p in entry["processes"])
    assert report["llm"]["backend"] == "simulated" and report["llm"]["simulated"] is True


def test_status_names_the_llm_above_the_table():
    result = runner.invoke(app, ["status"])
    words = " ".join(result.output.split())  # as wrapped at the runner's 80 columns
    assert words.startswith("LLM simulated (canned answers), no model: consumers → gateway http://127.0.0.1:")


def test_status_of_the_local_model_server_in_json_and_text(monkeypatch):
    from tests.qactl.client.fake_llama_server import MODEL, FakeLlamaServer, metrics_page, running

    fake = FakeLlamaServer(metrics=metrics_page(predicted=5000, predicted_seconds=100, processing=1, deferred=0))
    with running(fake) as url:
        monkeypatch.setenv("QACTL_LLM__BACKEND", "local")
        monkeypatch.setenv("QACTL_LLM_SERVER__PORT", url.rsplit(":", 1)[1])
        report = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
        text = " ".join(runner.invoke(app, ["status"]).output.split())
    llm = report["llm"]
    assert (llm["backend"], llm["model"], llm["simulated"]) == ("local", MODEL, False)
    assert llm["calls"].endswith("/v1") and llm["upstream"] == url
    server = llm["server"]
    assert (server["loaded"], server["slots"], server["requests_processing"], server["requests_deferred"]) == (
        True, 2, 1, 0
    )
    assert server["tokens_per_second"] == 50.0
    assert f"LLM local {MODEL}: consumers → gateway" in text
    assert "model server: loaded, 1/2 slots busy, 0 queued, 50 tok/s per answer" in text


def test_llm_lines_for_each_kind_of_backend():
    from qactl.cli.stack import llm_lines
    from qactl.client.llm_server import ModelServerState
    from services.common.backend_choice import LlmRoute

    route = LlmRoute("ollama", "llama3.2:latest", "http://127.0.0.1:11434", why="auto: Ollama answered")
    assert llm_lines(route, None).plain == (
        "LLM  ollama llama3.2:latest: consumers → http://127.0.0.1:11434  (auto: Ollama answered)"
    )
    local = LlmRoute("local", "m", "http://127.0.0.1:11435/v1", "http://127.0.0.1:11436")
    down = ModelServerState(False, False, "no answer at http://127.0.0.1:11436 (ConnectError)")
    assert llm_lines(local, down).plain.splitlines() == [
        "LLM  local m: consumers → gateway http://127.0.0.1:11435/v1 → http://127.0.0.1:11436",
        "     model server: no answer at http://127.0.0.1:11436 (ConnectError)",
    ]
    loading = ModelServerState(True, False, "Loading model")
    assert llm_lines(local, loading).plain.endswith("model server: loading the model (Loading model)")
    other = ModelServerState(True, True, model="other-model", slots=4, requests_processing=0, requests_deferred=0)
    assert llm_lines(local, other).plain.endswith("model server: loaded, other-model, 0/4 slots busy, 0 queued")


def test_logs_of_an_unknown_component_is_a_one_line_error():
    result = runner.invoke(app, ["logs", "no-such-thing"])
    assert result.exit_code == 1
    assert "no component or process named 'no-such-thing'" in result.output
    assert "Traceback" not in result.output


def test_logs_of_a_replicated_component_asks_for_one_replica():
    result = runner.invoke(app, ["logs", "llm-consumer"])
    assert result.exit_code == 1
    assert "llm-consumer-1" in result.output


def test_up_refuses_an_unknown_profile():
    result = runner.invoke(app, ["up", "--profile", "fast"])
    assert result.exit_code == 2
    assert "--profile" in result.output


def test_doctor_names_a_missing_prerequisite_and_how_to_install_it(tmp_path, monkeypatch):
    # A PATH with every tool qactl needs but redis-server.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("java", "mvn", "initdb", "postgres", "pg_ctl"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1
    assert "redis-server" in result.output
    assert "apt-get install" in result.output


def test_doctor_passes_when_everything_is_there(monkeypatch):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server not installed on this machine")
    # pytest's tmp dirs are private to root; PostgreSQL's user must reach the state dir.
    state_dir = tempfile.mkdtemp(prefix="qactl-doctor-", dir="/tmp")
    os.chmod(state_dir, 0o755)
    monkeypatch.setenv("QACTL_STATE_DIR", state_dir)
    result = runner.invoke(app, ["doctor"])
    shutil.rmtree(state_dir, ignore_errors=True)
    assert result.exit_code == 0, result.output
    assert "All prerequisites are in place" in result.output


def test_the_global_options_reach_the_commands_and_leave_the_environment_alone(tmp_path):
    config = tmp_path / "given.toml"
    config.write_text("[services]\nmetrics_base_port = 47300\n")
    state_dir = tmp_path / "elsewhere"
    (state_dir / "logs").mkdir(parents=True)
    (state_dir / "logs" / "persister.log").write_text("a line from elsewhere\n")
    before = dict(os.environ)
    status = runner.invoke(app, ["--config", str(config), "status", "--json"])
    shown = runner.invoke(app, ["--state-dir", str(state_dir), "logs", "persister"])
    assert dict(os.environ) == before
    endpoints = {e["name"]: e["endpoint"] for e in json.loads(status.stdout)["components"]}
    assert endpoints["persister"] == "http://127.0.0.1:47300"
    assert shown.exit_code == 0 and "a line from elsewhere" in shown.output


def test_the_demo_profile_is_a_copy_of_the_settings_not_an_environment_variable(monkeypatch):
    from qactl.runtime import stack as runtime_stack

    given = []

    class Recording(runtime_stack.Stack):
        def __init__(self, settings, **kwargs):
            given.append(settings)
            super().__init__(settings, **kwargs)

    monkeypatch.setattr(runtime_stack, "Stack", Recording)
    before = dict(os.environ)
    result = runner.invoke(app, ["up", "--profile", "demo", "--only", "no-such-component"])
    assert result.exit_code == 0, result.output
    assert "demo profile" in result.output
    (settings,) = given
    assert settings.policies.delay_scale == 0.05 and settings.policies.quota_delay() == 3.0
    assert dict(os.environ) == before


def test_status_shows_the_restarts_and_last_exit_of_a_process():
    # A stand-in process under the name of the stack's redis, killed once: its keeper restarted it.
    import signal
    import sys
    import time

    from qactl.runtime.supervisor import ProcessSpec, Supervisor
    from services.common.settings import load_settings

    supervisor = Supervisor(load_settings())
    spec = ProcessSpec("redis", [sys.executable, "-c", "import time; time.sleep(600)"])
    first = supervisor.start(spec)
    try:
        supervisor.wait_healthy(spec)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while not (supervisor.state("redis").running and supervisor.state("redis").pid != first):
            assert time.monotonic() < deadline, "never restarted"
            time.sleep(0.05)
        report = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
        (redis,) = [c for c in report["components"] if c["name"] == "redis"]
        (process,) = redis["processes"]
        assert process["running"] and process["restarts"] == 1 and process["last_exit"] == "killed by SIGKILL"
        assert process["keeper_pid"] and process["phase"] == "running"
        result = runner.invoke(app, ["status"], env={"COLUMNS": "250"})
        (row,) = [line for line in result.output.splitlines() if line.split()[:1] == ["redis"]]
        assert "1 (last: killed by SIGKILL)" in row
    finally:
        supervisor.stop("redis")
