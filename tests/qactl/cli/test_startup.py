"""`qactl --help` and `--version` start without the clients: a command imports what it uses."""

from __future__ import annotations

import subprocess
import sys

# Loaded at startup, they made `qactl --version` take 0.85-1.1 s here instead of 0.43 s.
HEAVY = ("httpx", "redis", "pydantic_settings", "confluent_kafka", "asyncpg", "textual")


def test_the_cli_loads_without_the_clients_and_the_settings() -> None:
    probe = f"import sys, qactl.cli.main; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == []


def test_version_and_help_work_without_them() -> None:
    shown = {}
    for argv in (["--version"], ["--help"], ["up", "--help"], ["gateway", "fault", "--help"]):
        run = subprocess.run(
            [sys.executable, "-c", "from qactl.cli.main import main; main()", *argv], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        shown[" ".join(argv)] = run.stdout
    assert shown["--version"].startswith("qactl ")
    assert "Provision what is missing" in shown["up --help"]
    assert "503-burst" in shown["gateway fault --help"]  # the presets, named without the HTTP client
