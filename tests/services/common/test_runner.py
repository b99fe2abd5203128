"""The pipeline processes' /metrics and /health server: three routes, their codes and bodies, no log lines."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from services.common.runner import serve_metrics_and_health


@pytest.fixture
def served() -> Iterator[tuple[str, dict[str, object]]]:
    """The server on a free port (port 0: the OS picks) over a health report the test can change."""
    report: dict[str, object] = {"ok": True, "assigned": [0, 1]}
    server = serve_metrics_and_health("127.0.0.1", 0, lambda: report)
    try:
        yield f"http://127.0.0.1:{server.server_port}", report
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_is_the_prometheus_text_exposition(served: tuple[str, dict[str, object]]) -> None:
    url, _ = served
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    assert "# TYPE python_info gauge" in response.text


def test_health_is_200_when_ok_and_503_otherwise(served: tuple[str, dict[str, object]]) -> None:
    url, report = served
    healthy = httpx.get(f"{url}/health")
    assert healthy.status_code == 200
    assert healthy.headers["content-type"] == "application/json"
    assert healthy.json() == {"ok": True, "assigned": [0, 1]}
    report["ok"] = False
    sick = httpx.get(f"{url}/health")
    assert sick.status_code == 503
    assert sick.json() == {"ok": False, "assigned": [0, 1]}


def test_any_other_path_is_a_json_404(served: tuple[str, dict[str, object]]) -> None:
    url, _ = served
    response = httpx.get(f"{url}/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": "not found"}


def test_requests_write_no_access_log(served: tuple[str, dict[str, object]], capfd: pytest.CaptureFixture[str]) -> None:
    url, _ = served
    httpx.get(f"{url}/health")
    httpx.get(f"{url}/nope")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
