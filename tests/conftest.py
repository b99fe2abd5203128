"""Every test runs with its own state dir and without the developer's QACTL_* settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import infra_stack  # noqa: F401  (session fixture: the real stack)

# Settings of the test harness itself, and the shared jar cache, survive the isolation.
KEPT = {"QACTL_CACHE_DIR"}


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No QACTL_* from the environment, no ./qactl.toml, a fresh state dir; yields it."""
    from services.common.settings import get_settings

    for key in list(os.environ):
        if key.startswith("QACTL_") and not key.startswith("QACTL_TEST_") and key not in KEPT:
            monkeypatch.delenv(key)
    empty_config = tmp_path / "qactl.toml"
    empty_config.write_text("")
    monkeypatch.setenv("QACTL_CONFIG", str(empty_config))
    state_dir = tmp_path / "state"
    monkeypatch.setenv("QACTL_STATE_DIR", str(state_dir))
    get_settings.cache_clear()
    yield state_dir
    get_settings.cache_clear()
