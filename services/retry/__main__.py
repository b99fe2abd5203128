"""``python -m services.retry overload|quota``: run one retry process until SIGTERM."""

from __future__ import annotations

import argparse
import sys

from services.common.runner import install_stop_handlers, run_until_stopped, serve_metrics_and_health, setup_logging
from services.common.settings import get_settings
from services.common.status import StatusTracker
from services.common.slots import metrics_port
from services.retry.policy import KINDS, RetryKind
from services.retry.service import RetryService


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.retry")
    parser.add_argument("kind", choices=[k.value for k in RetryKind])
    args = parser.parse_args(argv)
    kind = RetryKind(args.kind)
    log = setup_logging(KINDS[kind].service)
    settings = get_settings()
    stop = install_stop_handlers()
    status = StatusTracker(settings)
    service = RetryService(settings, kind, stop, status=status)
    port = metrics_port(settings)
    server = serve_metrics_and_health(settings.services.metrics_host, port, service.health)
    policies = settings.policies
    log.info(
        "%s on %s, delays via %s, metrics and health on :%d%s",
        KINDS[kind].service,
        KINDS[kind].error_topic,
        ", ".join(KINDS[kind].delay_topics(policies)),
        port,
        f" (delays shortened x{policies.delay_scale})" if policies.shortened else "",
    )
    return run_until_stopped(service.run, log, server.shutdown, status.close)


if __name__ == "__main__":
    sys.exit(main())
