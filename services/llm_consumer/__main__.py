"""``python -m services.llm_consumer``: run one llm-consumer replica until SIGTERM."""

from __future__ import annotations

import logging
import sys

from services.common.runner import install_stop_handlers, run_until_stopped, serve_metrics_and_health, setup_logging
from services.common.settings import get_settings
from services.common.slots import metrics_port, service_replica
from services.common.status import StatusTracker


def main() -> int:
    from services.common.prompts import build_prompt
    from services.llm_consumer.backends import choose_backend
    from services.llm_consumer.consumer import LLMConsumer

    replica = service_replica()
    log = setup_logging(f"llm-consumer-{replica}")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per LLM call is noise
    settings = get_settings()
    stop = install_stop_handlers()
    backend, description = choose_backend(settings)
    status = StatusTracker(settings)
    consumer = LLMConsumer(
        settings,
        backend.generate,
        backend.name,
        stop,
        build_prompt,
        status=status,
        replica=replica,
        description=description,
    )
    port = metrics_port(settings)
    server = serve_metrics_and_health(settings.services.metrics_host, port, consumer.health)
    log.info(
        "llm-consumer-%d: %s, %d call(s) in flight at most, metrics and health on :%d",
        replica,
        description,
        consumer.concurrency,
        port,
    )
    return run_until_stopped(consumer.run, log, server.shutdown, status.close)


if __name__ == "__main__":
    sys.exit(main())
