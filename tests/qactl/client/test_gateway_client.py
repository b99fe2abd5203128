"""The admin client against a real gateway on a real port."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from qactl.client.fault_presets import PRESETS, describe_rule
from qactl.client.gateway import GatewayClient, GatewayFaultInjector
from qactl.errors import ConfigError, RequestRejected, StackNotRunning
from tests.services.llm_gateway.server import ADMIN_TOKEN, RunningGateway, free_port, running_gateway


@pytest.fixture
def gateway() -> Iterator[RunningGateway]:
    with running_gateway() as running:
        yield running


def call(gateway: RunningGateway, prompt: str = "What is Redis?") -> int:
    return httpx.post(f"{gateway.url}/api/generate", json={"model": "m", "prompt": prompt, "stream": False}).status_code


def test_inject_list_clear_and_stats(gateway: RunningGateway) -> None:
    with GatewayClient(gateway.url, ADMIN_TOKEN) as client:
        rule = client.inject_fault("503", count=2, retry_after=1, match="redis")
        assert (rule.kind, rule.remaining, rule.match) == ("503", 2, "redis")
        assert client.inject_fault("degrade").count == 1  # one call when no scope is given
        assert [r.id for r in client.list_faults()] == [rule.id, rule.id + 1]
        assert [call(gateway), call(gateway, "What is DNA?")] == [503, 200]
        stats = client.stats()
        assert stats.total == 2 and stats.by_outcome == {"503": 1, "degraded": 1}
        assert stats.by_question["what is redis?"] == {"503": 1}
        assert client.clear_faults() == 1
        assert client.list_faults() == []
        client.reset_stats()
        assert client.stats().total == 0


def test_dashboard_injector_fires_presets(gateway: RunningGateway) -> None:
    injector = GatewayFaultInjector(GatewayClient(gateway.url, ADMIN_TOKEN))
    assert injector.inject("503-burst") == "injected 503 for the next 3 calls, Retry-After 1 s"
    assert [call(gateway) for _ in range(4)] == [503, 503, 503, 200]
    injector.inject("402")
    assert injector.clear() == "cleared 1 fault rule(s)"
    with pytest.raises(ValueError):
        injector.inject("meteor")
    assert set(PRESETS) >= {"503-burst", "429", "402", "degrade"}


def test_expected_failures_are_qactl_errors(gateway: RunningGateway) -> None:
    with pytest.raises(ConfigError, match="admin token"):
        GatewayClient(gateway.url, "wrong").list_faults()
    with pytest.raises(RequestRejected, match="exactly one of count or rate") as caught:
        GatewayClient(gateway.url, ADMIN_TOKEN)._request("POST", "/admin/faults", json={"kind": "503"})
    assert caught.value.status_code == 422
    with pytest.raises(StackNotRunning, match="does not answer"):
        GatewayClient(f"http://127.0.0.1:{free_port()}", ADMIN_TOKEN).stats()


def test_describe_rule() -> None:
    from services.llm_gateway.faults import FaultRule

    assert describe_rule(FaultRule(kind="429", rate=0.25, match="kafka")) == '429 on 25% of calls, on questions containing "kafka"'
    assert describe_rule(FaultRule(kind="timeout", count=1, seconds=40)) == "timeout for the next 1 call, stalling 40 s"
