"""Which LLM the pipeline talks to: ``llm.backend`` resolved, and what follows from it.

``auto`` is a real Ollama when one answers at ``llm.ollama_url`` with a model, else the local
model server (llama.cpp). The gateway runs in front of the local model server and of a
configured upstream, and is itself the simulator for ``simulated``. Shared by the runtime (what
to start), the gateway (where to forward), the consumers (whom to call, how many at once) and
the operator's views (``qactl status``, ``qactl watch``: ``llm_route``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import httpx

from services.common.settings import QactlSettings

# Sent by the built-in gateway, so that "auto" does not mistake it for a real Ollama.
GATEWAY_HEADER = "x-qactl-gateway"
BackendKind = Literal["local", "ollama", "openai", "simulated"]


@dataclass(frozen=True)
class OllamaProbe:
    """What a short ``GET /api/tags`` at the Ollama URL found."""

    answered: bool
    is_gateway: bool = False
    models: tuple[str, ...] = ()
    detail: str = ""


def probe_ollama(url: str, timeout_seconds: float = 1.0) -> OllamaProbe:
    try:
        response = httpx.get(f"{url.rstrip('/')}/api/tags", timeout=timeout_seconds)
        response.raise_for_status()
        body = response.json()
        models = tuple(str(m.get("model") or m.get("name")) for m in body.get("models", []))
    except (httpx.HTTPError, ValueError, AttributeError, TypeError) as exc:
        return OllamaProbe(answered=False, detail=f"{type(exc).__name__}")
    return OllamaProbe(answered=True, is_gateway=GATEWAY_HEADER in response.headers, models=models)


def _ollama_model(wanted: str, available: tuple[str, ...]) -> str | None:
    """The configured model if the Ollama has it (with or without ``:latest``), else its first."""
    for name in available:
        if name == wanted or name == f"{wanted}:latest":
            return name
    return available[0] if available else None


def auto_choice(settings: QactlSettings, probe_timeout: float) -> tuple[BackendKind, str, str]:
    """(kind, model, why) for backend "auto": a real Ollama with a model, else the local model server."""
    llm = settings.llm
    probe = probe_ollama(llm.ollama_url, probe_timeout)
    if probe.answered and not probe.is_gateway:
        model = _ollama_model(llm.model, probe.models)
        if model is not None:
            return "ollama", model, "auto: Ollama answered"
        return "local", llm.model, f"auto: Ollama at {llm.ollama_url} has no model"
    if probe.answered:
        return "local", llm.model, "auto: the built-in gateway, not an Ollama, answered at the Ollama URL"
    return "local", llm.model, f"auto: no Ollama at {llm.ollama_url}"


def resolve_backend_kind(settings: QactlSettings, probe_timeout: float = 1.0) -> BackendKind:
    """Which kind of backend the consumers will use (``auto`` probes Ollama)."""
    if settings.llm.backend != "auto":
        return settings.llm.backend
    return auto_choice(settings, probe_timeout)[0]


def resolved(settings: QactlSettings, probe_timeout: float = 1.0) -> QactlSettings:
    """The settings with ``auto`` replaced by the backend it stands for now."""
    if settings.llm.backend != "auto":
        return settings
    kind = resolve_backend_kind(settings, probe_timeout)
    return settings.model_copy(update={"llm": settings.llm.model_copy(update={"backend": kind})})


def gateway_needed(settings: QactlSettings) -> bool:
    """The gateway fronts the local model server and a configured upstream, and is the simulator."""
    return bool(settings.gateway.upstream_url) or resolve_backend_kind(settings) in ("local", "simulated")


def gateway_upstream(settings: QactlSettings, kind: BackendKind) -> str | None:
    """The real LLM the gateway forwards to: the configured one, else the local model server."""
    if settings.gateway.upstream_url:
        return settings.gateway.upstream_url
    return settings.llm_server.base_url if kind == "local" else None


@dataclass(frozen=True)
class LlmRoute:
    """Which LLM answers the consumers' calls, and the way those calls go."""

    kind: BackendKind
    model: str  # the model the calls ask for (the simulator's name for ``simulated``)
    calls: str  # where the consumers send their calls
    upstream: str | None = None  # where the gateway forwards them; None: no gateway in the way, or it answers itself
    why: str = ""  # how "auto" chose

    @property
    def simulated(self) -> bool:
        """The gateway's canned answers, no model, answer the calls."""
        return self.kind == "simulated" and self.upstream is None

    @property
    def through_gateway(self) -> bool:
        """The consumers call the built-in gateway (faults in front), not the LLM itself."""
        return self.kind in ("local", "simulated")

    @property
    def answered_by(self) -> str:
        """What answers, in words: the model's name, or plainly the simulator."""
        return "simulated (canned answers)" if self.simulated else self.model


def llm_route(settings: QactlSettings, probe_timeout: float = 1.0) -> LlmRoute:
    """The route of the settings (``auto`` probes Ollama): what the consumers call, and with which model."""
    llm = settings.llm
    kind, model, why = llm.backend, llm.model, ""
    if kind == "auto":
        kind, model, why = auto_choice(settings, probe_timeout)
    if kind == "openai":
        return LlmRoute(kind, model, llm.openai_base_url, why=why)
    if kind == "ollama":
        return LlmRoute(kind, model, llm.ollama_url, why=why)
    gateway = settings.gateway.base_url
    if kind == "local":
        return LlmRoute(kind, settings.llm_server.alias, f"{gateway}/v1", gateway_upstream(settings, kind), why)
    return LlmRoute(kind, model, gateway, gateway_upstream(settings, kind), why)


def consumer_concurrency(settings: QactlSettings, kind: BackendKind) -> int:
    """Calls in flight per consumer replica. For the local model server: its slots shared out
    over the replicas (rounded up, so every slot has a caller), and no more: a call beyond the
    slots only queues inside the server, where its wait counts against the call's timeout."""
    if settings.llm.concurrency is not None:
        return settings.llm.concurrency
    if kind != "local":
        return 8
    replicas = max(1, settings.services.llm_consumer_replicas)
    return max(1, -(-settings.llm_server.slots // replicas))
