"""What every command module shares: the console, the settings, the edge where errors stop.

The command modules import their clients (httpx, redis, Kafka's) and the settings
(pydantic-settings) inside the commands that use them, so `qactl --help`, `--version` and a
command's own help start without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from services.common.settings import QactlSettings

console = Console()
err_console = Console(stderr=True)


def settings() -> QactlSettings:
    """The CLI process's one settings object (env, then the config file, then defaults)."""
    from services.common.settings import get_settings

    return get_settings()
