"""``python -m services.llm_gateway``: serve the gateway on GatewaySettings' host and port.

SIGTERM/SIGINT only set a stop flag: ours before uvicorn serves (checked on its every tick,
so a signal that arrives during startup is not lost), uvicorn's own while it serves. Then it
stops accepting, lets calls in flight finish (at most a few seconds: a stalled timeout fault
is cut short), runs the lifespan shutdown that closes the upstream client, and re-raises the
signal to our handler, which again only sets the flag: the process exits 0.
"""

from __future__ import annotations

import threading

import uvicorn

from services.common.runner import install_stop_handlers, setup_logging
from services.common.settings import get_settings
from services.common.backend_choice import gateway_upstream, resolve_backend_kind
from services.llm_gateway.app import create_app


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, stop: threading.Event) -> None:
        super().__init__(config)
        self._stop = stop

    async def on_tick(self, counter: int) -> bool:
        return self._stop.is_set() or await super().on_tick(counter)


def main() -> int:
    settings = get_settings()
    log = setup_logging("llm-gateway")
    stop = install_stop_handlers()
    upstream = gateway_upstream(settings, resolve_backend_kind(settings))
    gateway = settings.gateway.model_copy(update={"upstream_url": upstream})
    app = create_app(
        gateway,
        model=settings.llm.model,
        timeout_fault_seconds=settings.llm.timeout_seconds + 5,
        upstream_timeout_seconds=settings.llm.timeout_seconds,
    )
    log.info(
        "serving on %s (seed %s, latency %s-%s ms, upstream %s)",
        gateway.base_url, gateway.seed, gateway.latency_ms_min, gateway.latency_ms_max, gateway.upstream_url or "none",
    )
    config = uvicorn.Config(
        app,
        host=gateway.host,
        port=gateway.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=3,
        # Longer than clients keep idle connections (the backends: 4 s), so a client never
        # sends on a connection the server is closing.
        timeout_keep_alive=30,
    )
    server = _Server(config, stop)
    server.run()
    log.info("stopped")
    return 0 if server.started or stop.is_set() else 1


if __name__ == "__main__":
    raise SystemExit(main())
