"""``python -m services.llm_gateway`` serves on its settings' port and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.services.llm_gateway.server import free_port


def start(tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QACTL_")}
    env.update(QACTL_GATEWAY__PORT=str(port), QACTL_GATEWAY__SEED="5", QACTL_GATEWAY__ADMIN_TOKEN="t0ken")
    with (tmp_path / "gateway.log").open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services.llm_gateway"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )


def test_serves_its_settings_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = start(tmp_path, port)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, (tmp_path / "gateway.log").read_text()
                assert time.monotonic() < deadline, "gateway did not come up"
                time.sleep(0.1)
        assert health.json()["seed"] == 5
        assert httpx.get(f"{url}/admin/faults", headers={"Authorization": "Bearer t0ken"}).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = (tmp_path / "gateway.log").read_text()
    assert f"serving on {url}" in output and "stopped" in output


def test_a_sigterm_during_startup_is_not_lost(tmp_path: Path) -> None:
    process = start(tmp_path, free_port())
    log = tmp_path / "gateway.log"
    try:
        deadline = time.monotonic() + 30
        while "serving on" not in log.read_text():  # our handler is in place, uvicorn may not be
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "stopped" in log.read_text()
