"""llama.cpp's ``llama-server`` over HTTP: is the model loaded, and how busy is it.

``GET /health`` answers 503 while the model loads and 200 once it serves; ``GET /metrics``
(the server runs with ``--metrics``) gives Prometheus counters and gauges named ``llamacpp:*``.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from qactl.client.http import shared_client


@dataclass(frozen=True)
class ModelServerState:
    """One look at the model server; ``None`` where it did not say."""

    reachable: bool
    loaded: bool
    detail: str = ""
    model: str | None = None
    slots: int | None = None
    requests_processing: float | None = None
    requests_deferred: float | None = None
    # How fast one answer is generated, averaged since the server started (tokens per second of
    # a busy slot); the whole server's output is the rate of ``tokens_predicted`` over time.
    tokens_per_second: float | None = None
    tokens_predicted: float | None = None  # tokens generated since start, counted as each answer ends

    def figures(self) -> str:
        """How busy a loaded server is: slots, queue, generation speed."""
        parts = []
        if self.slots is not None and self.requests_processing is not None:
            parts.append(f"{self.requests_processing:.0f}/{self.slots} slots busy")
        if self.requests_deferred is not None:
            parts.append(f"{self.requests_deferred:.0f} queued")
        if self.tokens_per_second:
            parts.append(f"{self.tokens_per_second:.0f} tok/s per answer")
        return ", ".join(parts)

    def summary(self) -> str:
        """One line for `qactl status`."""
        if not self.reachable:
            return self.detail or "not reachable"
        if not self.loaded:
            return self.detail or "loading the model"
        return ", ".join(part for part in (self.model or "model loaded", self.figures()) if part)


def metric_values(text: str) -> dict[str, float]:
    """``llamacpp:x`` samples of a Prometheus text page, by their short name ``x``."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name.removeprefix("llamacpp:")] = sample.value
    return values


def probe(base_url: str, timeout: float = 1.0) -> ModelServerState:
    client = shared_client()
    base = base_url.rstrip("/")
    try:
        health = client.get(f"{base}/health", timeout=timeout)
    except httpx.HTTPError as exc:
        return ModelServerState(False, False, f"no answer at {base} ({type(exc).__name__})")
    if health.status_code != 200:
        return ModelServerState(True, False, _error_message(health) or f"HTTP {health.status_code}")
    model = slots = None
    values: dict[str, float] = {}
    try:
        props = client.get(f"{base}/props", timeout=timeout).json()
        model = props.get("model_alias") or props.get("model_path")
        slots = props.get("total_slots")
        metrics = client.get(f"{base}/metrics", timeout=timeout)
        if metrics.status_code == 200:
            values = metric_values(metrics.text)
    except (httpx.HTTPError, ValueError, AttributeError):
        pass  # loaded is what counts; the figures are extras
    return ModelServerState(
        reachable=True,
        loaded=True,
        model=model,
        slots=slots,
        requests_processing=values.get("requests_processing"),
        requests_deferred=values.get("requests_deferred"),
        tokens_per_second=generation_speed(values),
        tokens_predicted=values.get("tokens_predicted_total"),
    )


def generation_speed(values: dict[str, float]) -> float | None:
    """Tokens per second of one answer since start. Not the ``predicted_tokens_seconds`` gauge:
    that one covers only the time since the last ``/metrics`` read, whoever read it."""
    tokens, seconds = values.get("tokens_predicted_total"), values.get("tokens_predicted_seconds_total")
    return tokens / seconds if tokens is not None and seconds else None


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", ""))
    return str(error or "")
