"""``python -m services.storage_api``: serve the API with uvicorn on ``api.host:api.port``.

uvicorn handles SIGTERM/SIGINT: it stops accepting, finishes requests in flight, then runs the
app's shutdown (flush the producer, close PostgreSQL and Redis).
"""

from __future__ import annotations

import uvicorn

from services.common.runner import setup_logging
from services.common.settings import get_settings
from services.storage_api.asgi import make_app


def main() -> None:
    setup_logging("storage-api")
    settings = get_settings()
    config = uvicorn.Config(
        make_app(settings, freeze_gc=True),
        host=settings.api.host,
        port=settings.api.port,
        loop="uvloop",
        http="httptools",
        # One line per request costs more than the request itself at 1,000 req/s; /metrics counts them.
        access_log=False,
        log_config=None,
        backlog=4096,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
