"""``python -m services.persister``: run the persister until SIGTERM; /metrics and /health on its slot."""

from __future__ import annotations

import sys

from services.common.runner import install_stop_handlers, serve_metrics_and_health, setup_logging
from services.common.settings import get_settings
from services.common.slots import metrics_port
from services.persister.service import SUBSCRIBED, Persister


def main() -> int:
    log = setup_logging("persister")
    settings = get_settings()
    stop = install_stop_handlers()
    persister = Persister(settings, stop)
    port = metrics_port(settings)
    server = serve_metrics_and_health(settings.services.metrics_host, port, persister.health)
    log.info("persister on %s, metrics and health on :%d", ", ".join(SUBSCRIBED), port)
    try:
        persister.run()
    except Exception as exc:  # logged with its traceback by the loop
        log.error("stopped on failure: %s", exc)
        return 1
    finally:
        server.shutdown()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
