"""What every command module shares: the console, the settings, the edge where errors stop."""

from __future__ import annotations

from rich.console import Console

from services.common.settings import QactlSettings, get_settings

console = Console()
err_console = Console(stderr=True)


def settings() -> QactlSettings:
    """The CLI process's one settings object (env, then the config file, then defaults)."""
    return get_settings()
