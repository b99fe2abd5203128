"""The gateway served in-process on a real port, for tests that speak to it over HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import uvicorn

from services.common.settings import GatewaySettings
from services.llm_gateway.app import create_app

PORT_RANGE = range(21000, 21100)  # the range this test suite may bind
ADMIN_TOKEN = "test-admin-token"
_next = iter(PORT_RANGE)
_lock = threading.Lock()


def free_port() -> int:
    """A port of the test range that nothing listens on right now."""
    with _lock:
        for _ in range(len(PORT_RANGE)):
            global _next
            port = next(_next, None)
            if port is None:
                _next = iter(PORT_RANGE)
                port = next(_next)
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


@dataclass
class RunningGateway:
    url: str
    settings: GatewaySettings

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)

    def inject(self, **rule: Any) -> dict[str, Any]:
        with self.admin() as client:
            response = client.post("/admin/faults", json=rule)
            response.raise_for_status()
            return response.json()["rules"][0]

    def stats(self) -> dict[str, Any]:
        with self.admin() as client:
            return client.get("/admin/stats").raise_for_status().json()


@contextmanager
def running_gateway(**overrides: Any) -> Iterator[RunningGateway]:
    """Serve a gateway (seed 42, no latency, test token unless overridden) until the block ends."""
    timeout_fault_seconds = overrides.pop("timeout_fault_seconds", 3.0)
    port = free_port()
    settings = GatewaySettings(**{"port": port, "admin_token": ADMIN_TOKEN, **overrides})
    app = create_app(settings, timeout_fault_seconds=timeout_fault_seconds, upstream_timeout_seconds=5.0)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"gateway-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"gateway did not start on port {port}")
        time.sleep(0.01)
    try:
        yield RunningGateway(url=f"http://127.0.0.1:{port}", settings=settings)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on a free loopback port in a daemon thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
