"""A stand-in for llama.cpp's ``llama-server`` on a real socket: ``/health``, ``/props`` and
``/metrics`` answered from a dict the test changes between polls.

The figures and the metric names are those a real llama-server (llama-cpp-python 0.3.36's
vendored llama.cpp, run with ``--metrics``) answered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.services.llm_gateway.server import serving

MODEL = "SmolLM2-135M-Instruct-Q4_1"


def metrics_page(predicted: float = 27293, predicted_seconds: float = 484.224, processing: int = 1,
                 deferred: int = 0, bucket_speed: float = 3.1) -> str:
    samples = {
        "tokens_predicted_total": ("counter", predicted),
        "tokens_predicted_seconds_total": ("counter", predicted_seconds),
        "predicted_tokens_seconds": ("gauge", bucket_speed),
        "requests_processing": ("gauge", processing),
        "requests_deferred": ("gauge", deferred),
    }
    return "".join(
        f"# HELP llamacpp:{name} .\n# TYPE llamacpp:{name} {kind}\nllamacpp:{name} {value}\n"
        for name, (kind, value) in samples.items()
    )


@dataclass
class FakeLlamaServer:
    loading: bool = False
    slots: int = 2
    metrics: str = field(default_factory=metrics_page)

    def answer(self, path: str) -> tuple[int, str, bytes]:
        if path == "/health":
            if self.loading:
                error = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
                return 503, "application/json", json.dumps(error).encode()
            return 200, "application/json", b'{"status":"ok"}'
        if path == "/props":
            props = {"model_alias": MODEL, "model_path": f"/models/{MODEL}.gguf", "total_slots": self.slots}
            return 200, "application/json", json.dumps(props).encode()
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4", self.metrics.encode()
        return 404, "application/json", b'{"error":"not found"}'


@contextmanager
def running(fake: FakeLlamaServer) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            status, content_type, body = fake.answer(self.path)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    with serving(Handler) as url:
        yield url
