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
from collections.abc import Callable, Iterable, Mapping
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.exposition import ThreadingWSGIServer

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


class _SilentHandler(WSGIRequestHandler):
    """No access log line per request: a scrape every few seconds is noise."""

    def log_message(self, format: str, *args: object) -> None:
        return None


def serve_metrics_and_health(host: str, port: int, health: HealthProbe) -> ThreadingWSGIServer:
    """Serve Prometheus ``/metrics`` and JSON ``/health`` (503 unless ``ok``) in a daemon thread.

    A WSGI app on prometheus_client's threading WSGI server; ``shutdown()`` stops it.
    """

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path == "/metrics":
            body, status, ctype = generate_latest(), "200 OK", CONTENT_TYPE_LATEST
        elif path == "/health":
            report = dict(health())
            status = "200 OK" if report.get("ok") else "503 Service Unavailable"
            body, ctype = json.dumps(report, default=str).encode(), "application/json"
        else:
            body, status, ctype = b'{"detail": "not found"}', "404 Not Found", "application/json"
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [body]

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
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
