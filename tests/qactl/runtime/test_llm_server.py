"""The local model server through the runtime: llama.cpp's ``llama-server`` with the real model.

Needs the portable binary and the model in the qactl cache; the module fixture builds or fetches
them through the component's own ``provision`` when they are missing (a first build takes minutes).
Small settings keep it quick: 2 slots of 512 tokens, answers of at most 24 tokens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from qactl.client.llm_server import probe
from qactl.runtime import llama_build, llm_server
from qactl.runtime.stack import Stack
from qactl.runtime.supervisor import Supervisor
from services.common.prompts import build_prompt
from services.common.settings import QactlSettings
from services.llm_consumer.backends import LocalBackend, Sampling
from tests.stack import test_settings

REPO = Path(__file__).resolve().parents[3]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def settings() -> QactlSettings:
    """The test port range's model server, its binary and model provisioned (built once if absent)."""
    settings = test_settings(
        llm={"backend": "local", "max_tokens": MAX_TOKENS},
        llm_server={"slots": 2, "context_per_slot": 512},
    )
    llm_server.provision(settings, report=lambda line: print(f"llm-server: {line}", flush=True))
    return settings


def server_processes(port: int) -> list[psutil.Process]:
    """Every llama-server on ``port``, whoever started it."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and Path(cmdline[0]).name == "llama-server" and str(port) in cmdline:
            found.append(proc)
    return found


def test_the_server_starts_through_the_runtime_answers_over_http_and_stops(settings: QactlSettings) -> None:
    stack = Stack(settings, only=[llm_server.NAME])
    assert [c.name for c in stack.components] == [llm_server.NAME]
    try:
        assert stack.up().started == [llm_server.NAME]
        pid = stack.supervisor.state(llm_server.NAME).pid

        # The request the pipeline's consumers send (system message, prompt, sampling), straight to the server.
        server = settings.llm_server
        backend = LocalBackend(f"{server.base_url}/v1", server.alias, 60.0, sampling=Sampling(MAX_TOKENS))
        url, payload, _ = backend._request(build_prompt("What is Apache Kafka?"), attempt=0)
        reply = httpx.post(url, json=payload, timeout=60).raise_for_status().json()
        answer = reply["choices"][0]["message"]["content"]
        assert re.search(r"[A-Za-z]{3,}", answer), f"no text in {answer!r}"
        assert reply["model"] == settings.llm_server.alias
        assert 0 < reply["usage"]["completion_tokens"] <= MAX_TOKENS
        assert reply["usage"]["prompt_tokens"] > 20  # the system message and the prompt reached the model

        state = probe(settings.llm_server.base_url)
        assert state.loaded and state.model == settings.llm_server.alias and state.slots == 2
        assert state.tokens_predicted is not None and state.tokens_predicted >= reply["usage"]["completion_tokens"]
        (status,) = stack.status()
        assert status.ok and status.health.data["model"] == settings.llm_server.alias, status.health
    finally:
        stopped = stack.down()
    assert stopped == [llm_server.NAME]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert server_processes(settings.llm_server.port) == []


# --- the build is portable: no instruction that some machines here advertise but fault on ---

# AVX-512: zmm registers, mask registers, and xmm/ymm 16-31 (reachable only with EVEX, i.e. AVX-512VL).
AVX512 = re.compile(r"%zmm\d|%k[0-7]\b|%[xy]mm(?:1[6-9]|2\d|3[01])\b")
AMX = re.compile(r"\b(?:tileloadd\w*|tilestored|tilezero|tilerelease|ldtilecfg|sttilecfg|tdpb\w+|tdpfp16ps)\b")


def test_the_cached_binary_has_no_avx512_and_no_amx_instruction(settings: QactlSettings) -> None:
    if shutil.which("objdump") is None:
        pytest.skip("objdump is not installed (apt-get install -y binutils): the instructions cannot be read")
    binary = llm_server.binary(settings)
    disassembly = subprocess.Popen(
        ["objdump", "-d", "--no-show-raw-insn", str(binary)], stdout=subprocess.PIPE, text=True
    )
    assert disassembly.stdout is not None
    offending: list[str] = []
    instructions = 0
    for line in disassembly.stdout:
        instructions += 1
        if AVX512.search(line) or AMX.search(line):
            offending.append(line.strip())
    assert disassembly.wait() == 0
    assert instructions > 100_000, f"objdump read only {instructions} lines of {binary}"
    assert offending == [], f"{len(offending)} AVX-512/AMX instruction(s) in {binary}, first: {offending[:5]}"


def test_the_cached_binary_was_built_with_the_portable_flags(settings: QactlSettings) -> None:
    binary = llm_server.binary(settings)
    assert binary.parent.name == llama_build.build_key(), "the cache key is the source version and the flags"
    assert "-DGGML_NATIVE=OFF" in llama_build.PORTABLE_CMAKE_FLAGS
    record = binary.parent / "build.json"
    if not record.is_file():
        pytest.skip(f"{record} is missing: this binary was not built by qactl's build, its flags are not recorded")
    flags = json.loads(record.read_text())["cmake_flags"]
    assert flags == list(llama_build.PORTABLE_CMAKE_FLAGS)
    assert not any("march=native" in f or f == "-DGGML_NATIVE=ON" for f in flags)


# --- bad input: `qactl up` fails in one line and leaves nothing running ---


def qactl_up_llm_server(
    settings: QactlSettings, state_dir: Path, model: Path | None = None
) -> subprocess.CompletedProcess:
    """``qactl up --only llm-server`` as an operator runs it, on the test port, with the local backend."""
    env = {
        **os.environ,  # isolated by tests/conftest.py: no QACTL_* of the developer
        "QACTL_LLM__BACKEND": "local",
        "QACTL_LLM_SERVER__PORT": str(settings.llm_server.port),
        "QACTL_LLM_SERVER__CONTEXT_PER_SLOT": "512",
        "COLUMNS": "400",  # the error line is not wrapped
    }
    if model is not None:
        env["QACTL_LLM_SERVER__MODEL_PATH"] = str(model)
    argv = [sys.executable, "-c", "from qactl.cli.main import main; main()"]
    return subprocess.run(
        [*argv, "--state-dir", str(state_dir), "up", "--only", llm_server.NAME],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def assert_failed_in_one_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert "Traceback" not in run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    return lines[0]


def assert_nothing_left(settings: QactlSettings, state_dir: Path) -> None:
    supervisor = Supervisor(settings.model_copy(update={"state_dir": state_dir}))
    assert not supervisor.is_running(llm_server.NAME)
    assert server_processes(settings.llm_server.port) == []


@pytest.fixture
def not_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_text("<html>404 Not Found</html>\n")
    return path


@pytest.fixture
def truncated_gguf(settings: QactlSettings, tmp_path: Path) -> Path:
    """The real model's first megabyte: a GGUF header that ends in the middle of its metadata."""
    path = tmp_path / "truncated.gguf"
    with open(llm_server.model_file(settings), "rb") as whole:
        path.write_bytes(whole.read(1 << 20))
    return path


def test_a_model_file_that_is_not_gguf_fails_up_before_anything_starts(
    settings: QactlSettings, not_gguf: Path, tmp_path: Path
) -> None:
    run = qactl_up_llm_server(settings, tmp_path / "state", not_gguf)
    line = assert_failed_in_one_line(run)
    assert f"model file {not_gguf} is not a GGUF model" in line
    assert_nothing_left(settings, tmp_path / "state")


def test_a_truncated_model_fails_up_with_llama_cpps_own_reason(
    settings: QactlSettings, truncated_gguf: Path, tmp_path: Path
) -> None:
    run = qactl_up_llm_server(settings, tmp_path / "state", truncated_gguf)
    line = assert_failed_in_one_line(run)
    assert "llm-server exited during start" in line
    assert "gguf_init_from_reader: failed to read key-value pairs" in line  # llama.cpp's own words
    assert "model loading error" in line
    assert_nothing_left(settings, tmp_path / "state")


def test_a_port_in_use_fails_up_naming_the_setting_that_moves_it(settings: QactlSettings, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((settings.llm_server.host, settings.llm_server.port))
        squatter.listen()
        run = qactl_up_llm_server(settings, tmp_path / "state")
    line = assert_failed_in_one_line(run)
    assert f"port {settings.llm_server.port} needed by llm-server is in use" in line
    assert "QACTL_LLM_SERVER__PORT" in line
    assert_nothing_left(settings, tmp_path / "state")


# --- llama.cpp's log, read into one line (lines as the server wrote them) ---

TRUNCATED_LOG = """\
0.00.010.344 I srv    load_model: loading model '/tmp/t.gguf'
0.00.040.304 E gguf_init_from_reader: failed to read key-value pairs
0.00.042.856 E llama_model_load: error loading model: llama_model_loader: failed to load model from /tmp/t.gguf
0.00.050.656 E srv    load_model: failed to load model, '/tmp/t.gguf'
0.00.050.659 I srv    operator(): operator(): cleaning up before exit...
0.00.054.752 E srv  llama_server: exiting due to model loading error
"""
BIND_LOG = """\
0.00.025.368 W srv  llama_server: security: no API key is set and CORS allows all origins
0.00.025.499 E srv         start: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 52997
0.00.032.114 E srv  llama_server: exiting due to HTTP server error
"""


@pytest.mark.parametrize(
    ("log", "reason"),
    [
        (
            TRUNCATED_LOG,
            "gguf_init_from_reader: failed to read key-value pairs ... "
            "llama_server: exiting due to model loading error",
        ),
        (
            BIND_LOG,
            "start: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 52997 ... "
            "llama_server: exiting due to HTTP server error",
        ),
        ("error: invalid argument: --bogus\n", "invalid argument: --bogus"),
        ("0.00.001 I srv  llama_server: initializing ...\n", None),
    ],
)
def test_the_start_error_is_llama_cpps_first_and_last_error(log: str, reason: str | None) -> None:
    assert llm_server.start_error(log) == reason
