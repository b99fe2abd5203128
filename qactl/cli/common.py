"""What every command module shares: the console, the settings, the edge where errors stop.

The command modules import their clients (httpx, redis, Kafka's) and the settings
(pydantic-settings) inside the commands that use them, so `qactl --help`, `--version` and a
command's own help start without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

if TYPE_CHECKING:
    from services.common.settings import QactlSettings

console = Console()
err_console = Console(stderr=True)


class CliContext:
    """The root's global options, handed to every command as the click context's object.

    The settings are built from them on first use, so commands that need none (``--help``,
    ``--version``) never load pydantic-settings.
    """

    def __init__(self, config: Path | None = None, state_dir: Path | None = None) -> None:
        self.config = config
        self.state_dir = state_dir
        self._settings: QactlSettings | None = None

    @property
    def settings(self) -> QactlSettings:
        """The CLI's one settings object: the global options, env, the config file, defaults,
        and the state dir's stored credentials (for what the user did not set), and over them the
        topology the stack of this state dir was given (`qactl up --brokers`, `qactl scale`;
        ``qactl.runtime.topology``)."""
        if self._settings is None:
            from qactl.runtime import credentials, topology
            from services.common.settings import load_settings

            overrides = {} if self.state_dir is None else {"state_dir": self.state_dir}
            # With the credentials `qactl up` generated for this state dir, when it did.
            self._settings = credentials.with_stored(topology.apply(load_settings(self.config, **overrides)))
        return self._settings


def settings(ctx: click.Context) -> QactlSettings:
    """The settings of this invocation, built by the root from its global options."""
    return ctx.ensure_object(CliContext).settings
