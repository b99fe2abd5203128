"""``python -m services.retry overload|quota``: run one retry process until SIGTERM."""

from __future__ import annotations

import argparse
import sys

from services.common.runner import install_stop_handlers, serve_metrics_and_health, setup_logging
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
    server = serve_metrics_and_health("127.0.0.1", port, service.health)
    policies = settings.policies
    log.info(
        "%s on %s, delays via %s, metrics and health on :%d%s",
        KINDS[kind].service,
        KINDS[kind].error_topic,
        ", ".join(KINDS[kind].delay_topics(policies)),
        port,
        f" (delays shortened x{policies.delay_scale})" if policies.shortened else "",
    )
    try:
        service.run()
    except Exception as exc:  # logged with its traceback by the failing loop
        log.error("stopped on failure: %s", exc)
        return 1
    finally:
        server.shutdown()
        status.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
