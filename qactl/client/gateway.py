"""UI-free client of the llm-gateway's admin API: fault rules and call statistics.

Used by ``qactl gateway``, the demo cases and the dashboard's fault keys. Expected failures
are ``QactlError``s: the gateway not answering, the admin token refused, a rule refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from qactl.client.fault_presets import PRESETS, describe_rule
from qactl.errors import ConfigError, RequestRejected, StackNotRunning
from services.common.settings import QactlSettings
from services.llm_gateway.faults import ActiveRule, FaultKind, FaultRule


@dataclass
class GatewayStats:
    total: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)
    by_question: dict[str, dict[str, int]] = field(default_factory=dict)


class GatewayClient:
    def __init__(self, base_url: str, admin_token: str, timeout_seconds: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=timeout_seconds
        )

    @classmethod
    def from_settings(cls, settings: QactlSettings) -> "GatewayClient":
        token = settings.gateway.admin_token
        if token is None:
            raise StackNotRunning(
                f"no gateway admin token for the state dir {settings.state_dir}: `qactl up` generates it "
                "(or set QACTL_GATEWAY__ADMIN_TOKEN to the token of the gateway you mean)"
            )
        return cls(settings.gateway.base_url, token.get_secret_value())

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise StackNotRunning(
                f"the llm-gateway does not answer at {self.base_url} ({type(exc).__name__}); "
                "`qactl up` starts it when the built-in gateway is the LLM or fronts one (QACTL_GATEWAY__PORT moves it)"
            ) from None
        if response.status_code == 401:
            raise ConfigError("the llm-gateway refused the admin token; set the same QACTL_GATEWAY__ADMIN_TOKEN on both sides")
        if 400 <= response.status_code < 500:
            detail = response.json().get("detail", response.text) if response.content else response.reason_phrase
            raise RequestRejected(str(detail), response.status_code)
        response.raise_for_status()
        return response.json()

    def inject_fault(
        self,
        kind: FaultKind,
        *,
        count: int | None = None,
        rate: float | None = None,
        match: str | None = None,
        retry_after: float | None = None,
        seconds: float | None = None,
    ) -> ActiveRule:
        """Add a rule: for the next ``count`` calls (1 when neither is given) or at ``rate``."""
        if count is None and rate is None:
            count = 1
        rule = FaultRule(kind=kind, count=count, rate=rate, match=match, retry_after=retry_after, seconds=seconds)
        return self.add_rule(rule)

    def add_rule(self, rule: FaultRule) -> ActiveRule:
        body = self._request("POST", "/admin/faults", json=rule.model_dump(exclude_none=True))
        return ActiveRule.model_validate(body["rules"][0])

    def list_faults(self) -> list[ActiveRule]:
        return [ActiveRule.model_validate(r) for r in self._request("GET", "/admin/faults")["rules"]]

    def clear_faults(self) -> int:
        """Remove every rule; returns how many there were."""
        return int(self._request("DELETE", "/admin/faults")["cleared"])

    def stats(self) -> GatewayStats:
        body = self._request("GET", "/admin/stats")
        return GatewayStats(total=body["total"], by_outcome=body["by_outcome"], by_question=body["by_question"])

    def reset_stats(self) -> None:
        self._request("DELETE", "/admin/stats")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "GatewayClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GatewayFaultInjector:
    """The dashboard's ``FaultInjector``: presets by name, one line back for a notification.

    Given a ``connect`` callable instead of a client, it connects at the first key press: the
    dashboard opens before ``qactl up`` has generated the admin token, and a key pressed then
    fails with that error as its notification.
    """

    def __init__(self, client: GatewayClient | Callable[[], GatewayClient]) -> None:
        self._client = client if isinstance(client, GatewayClient) else None
        self._connect = None if isinstance(client, GatewayClient) else client

    @property
    def client(self) -> GatewayClient:
        if self._client is None:
            assert self._connect is not None
            self._client = self._connect()
        return self._client

    def inject(self, fault: str) -> str:
        preset = PRESETS.get(fault)
        if preset is None:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(PRESETS)}")
        return f"injected {describe_rule(self.client.add_rule(preset))}"

    def clear(self) -> str:
        return f"cleared {self.client.clear_faults()} fault rule(s)"
