"""``python -m services.llm_gateway``: serve the gateway on GatewaySettings' host and port.

uvicorn's own SIGTERM/SIGINT handlers only set its exit flag; it then stops accepting, lets
calls in flight finish (at most a few seconds: a stalled timeout fault is cut short) and
runs the lifespan shutdown, which closes the upstream client. It then re-raises the signal to
the handlers it found, which are ours: they only set a flag, so the process exits 0.
"""

from __future__ import annotations

import uvicorn

from services.common.runner import install_stop_handlers, setup_logging
from services.common.settings import get_settings
from services.llm_gateway.app import create_app


def main() -> int:
    settings = get_settings()
    log = setup_logging("llm-gateway")
    install_stop_handlers()
    gateway = settings.gateway
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
        app, host=gateway.host, port=gateway.port, log_config=None, access_log=False, timeout_graceful_shutdown=3
    )
    uvicorn.Server(config).run()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
