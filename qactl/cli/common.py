"""What every command module shares: the console, the settings, the edge where errors stop.

The command modules import their clients (httpx, redis, psycopg2, the settings' pydantic) inside
the commands that use them: `qactl --help` and a command's own help then start without them.
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
