"""The local model server: llama.cpp's ``llama-server`` serving a small GGUF model, under the supervisor.

It runs when the consumers' LLM is the local model (``llm.backend`` ``local``, or ``auto`` with no
Ollama answering); the gateway sits in front of it (faults, metrics) and the consumers talk to
the gateway. ``provision`` builds the binary and fetches the model once per machine
(``qactl.runtime.llama_build``); the process serves the OpenAI API, ``/health`` (200 once the
model is loaded) and ``/metrics``, on loopback.
"""

from __future__ import annotations

import re
from pathlib import Path

from qactl.client import llm_server as server_client
from qactl.runtime import llama_build
from qactl.runtime.component import Component, Report
from qactl.runtime.supervisor import Health, Port, ProcessSpec, Supervisor
from services.common.backend_choice import resolve_backend_kind
from services.common.settings import QactlSettings

NAME = "llm-server"


def binary(settings: QactlSettings) -> Path:
    return settings.llm_server.binary or llama_build.binary_path(settings.cache_dir)


def model_file(settings: QactlSettings) -> Path:
    return settings.llm_server.model_path or llama_build.model_path(settings.cache_dir)


def provision(settings: QactlSettings, report: Report) -> bool:
    """Build the binary and fetch the model if missing; refuse a model file that is not GGUF."""
    if settings.llm_server.binary is None:
        llama_build.ensure_binary(settings.cache_dir, report)
    if settings.llm_server.model_path is None:
        llama_build.ensure_model(settings.cache_dir, report=report)
    llama_build.check_gguf(model_file(settings))
    return False


def process(settings: QactlSettings) -> ProcessSpec:
    s = settings.llm_server
    argv = [
        str(binary(settings)),
        "--model", str(model_file(settings)),
        "--alias", s.alias,
        "--host", s.host,
        "--port", str(s.port),
        "--threads", str(s.threads),
        "--threads-http", str(max(2, s.slots)),
        # One context shared by the slots, each with its own part; batched continuously.
        "--parallel", str(s.slots),
        "--ctx-size", str(s.context_per_slot * s.slots),
        "--cont-batching",
        "--metrics",
        "--no-webui",
        "--no-warmup",
    ]  # fmt: skip
    return ProcessSpec(
        name=NAME,
        argv=argv,
        ports=(Port(s.port, "QACTL_LLM_SERVER__PORT", s.host),),
        # Nothing of the caller's llama.cpp configuration (LLAMA_ARG_*) may change the server.
        env={"LLAMA_ARG_HOST": s.host},
        stop_timeout=15.0,
        start_timeout=120.0,
        health=lambda: health(settings),
        start_error=start_error,
    )


# llama.cpp's log lines, "0.00.033.665 E gguf_init_from_reader: ..." (level E is an error; a
# "srv" or "cmn" may name the part), and its argument parser's "error: invalid argument: --x".
_ERROR_LINE = re.compile(r"^(?:[\d.]+ E\s+(?:[a-z]{3,4}\s+)?|error:\s*)(?P<text>.+)$", re.MULTILINE)


def start_error(log: str) -> str | None:
    """Why llama-server gave up, in one line: its first error (the cause) and its last (what it did)."""
    errors = [" ".join(m["text"].split()) for m in _ERROR_LINE.finditer(log)]
    if not errors:
        return None
    return errors[0] if len(errors) == 1 else f"{errors[0]} ... {errors[-1]}"


def health(settings: QactlSettings, supervisor: Supervisor | None = None) -> Health:
    if supervisor is not None and not supervisor.is_running(NAME):
        return Health(False, f"{NAME} process not running")
    state = server_client.probe(settings.llm_server.base_url)
    data = {
        "model": state.model,
        "slots": state.slots,
        "requests_processing": state.requests_processing,
        "requests_deferred": state.requests_deferred,
        "tokens_per_second": state.tokens_per_second,
    }
    return Health(state.loaded, state.summary(), {k: v for k, v in data.items() if v is not None})


def components(settings: QactlSettings) -> list[Component]:
    if resolve_backend_kind(settings) != "local":
        return []
    supervisor = Supervisor(settings)
    return [
        Component(
            name=NAME,
            health=lambda: health(settings, supervisor),
            processes=lambda: [process(settings)],
            provision=lambda report: provision(settings, report),
            endpoint=settings.llm_server.base_url,
            kind="infra",
        )
    ]
