"""What every pipeline process does the same way: logging, stop on SIGTERM, /metrics and /health.

SIGTERM and SIGINT only set a stop flag; the service's loop sees it, finishes what is in hand,
commits, flushes and closes (its ``ExitStack``), and returns.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

HealthProbe = Callable[[], Mapping[str, object]]


def setup_logging(service: str) -> logging.Logger:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )
    return logging.getLogger(service)


def install_stop_handlers() -> threading.Event:
    """An event set by SIGTERM or SIGINT: the only thing the handlers do."""
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


def serve_metrics_and_health(host: str, port: int, health: HealthProbe) -> ThreadingHTTPServer:
    """Serve Prometheus ``/metrics`` and JSON ``/health`` (503 unless ``ok``) in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/metrics":
                body, status, ctype = generate_latest(), 200, CONTENT_TYPE_LATEST
            elif self.path == "/health":
                report = dict(health())
                status = 200 if report.get("ok") else 503
                body, ctype = json.dumps(report, default=str).encode(), "application/json"
            else:
                body, status, ctype = b'{"detail": "not found"}', 404, "application/json"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def run_until_stopped(loop: Callable[[], None], log: logging.Logger, *cleanups: Callable[[], object]) -> int:
    """Run a service's loop; always run ``cleanups``; exit code 0 on a clean stop, 1 on failure."""
    try:
        loop()
    except Exception as exc:  # logged with its traceback by the failing loop
        log.error("stopped on failure: %s", exc)
        return 1
    finally:
        for cleanup in cleanups:
            cleanup()
    log.info("stopped")
    return 0
