"""The LLM clients of the llm-consumer: the local model server, Ollama, OpenAI-compatible, the simulator.

One interface, ``await backend.generate(prompt, attempt) -> LLMResult``; every failure is an
``LLMCallError`` carrying the ``ErrorInfo`` that routes it:

- 429, 503, other 5xx, timeouts, refused or broken connections -> ``overload``
- 402, and a 429 whose body says ``insufficient_quota`` -> ``quota`` (billing errors must not
  spin in the overload loop)
- other 4xx -> ``client`` (unrecoverable: dead letter)

``Retry-After`` (seconds or an HTTP date; OpenAI's ``retry-after-ms`` too) becomes
``retry_after_seconds``.

Every attempt is a new sample: ``Sampling`` gives attempt *n* (0 = the first answer, then each
regeneration) its own temperature and seed, so a regeneration is not the same text again. The
local model server and the simulator are reached through the built-in gateway, which injects
faults in front of them; Ollama and OpenAI directly (or through the gateway when
``gateway.upstream_url`` names them).
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from pydantic import SecretStr

from services.common.backend_choice import llm_route
from services.common.prompts import SYSTEM
from services.common.schemas import ErrorInfo, ErrorKind
from services.common.settings import LLMSettings, QactlSettings

QUOTA_CODES = frozenset({"insufficient_quota"})
@dataclass(frozen=True)
class Sampling:
    """How attempt ``n`` samples: hotter and with another seed for each regeneration."""

    max_tokens: int = 70
    temperature: float = 0.7
    temperature_step: float = 0.15
    # Which draw of an attempt: the pipeline makes one (0); flink/calibrate.py draws several.
    sample: int = 0

    @classmethod
    def from_settings(cls, llm: LLMSettings) -> "Sampling":
        return cls(llm.max_tokens, llm.temperature, llm.regeneration_temperature_step)

    def temperature_for(self, attempt: int) -> float:
        return round(min(2.0, self.temperature + attempt * self.temperature_step), 3)

    @staticmethod
    def seed_for(prompt: str, attempt: int, sample: int = 0) -> int:
        """Stable for one prompt and attempt (a retry after a 503 asks the same), new for the next;
        another ``sample`` of the same attempt gets another seed (sample 0's is the pipeline's)."""
        key = f"{attempt}\0{prompt}" if sample == 0 else f"{attempt}\0{sample}\0{prompt}"
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")


@dataclass(frozen=True)
class LLMResult:
    answer: str
    model: str
    backend: str
    latency_ms: float


class LLMCallError(Exception):
    """A failed LLM call, classified: ``info.kind`` says which path the question takes."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(f"{info.kind.value} ({info.status_code or 'no status'}): {info.message}")
        self.info = info


# --- classification (pure) ---


def parse_retry_after(headers: httpx.Headers | dict[str, str], now: datetime | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta-seconds or HTTP date) or ``retry-after-ms``.

    Always a finite number, however large the server's demand: a value beyond a float (``1e400``,
    ``inf``) becomes the largest float, since JSON would turn infinity into no Retry-After at all.
    How long is too long is the retry policy's decision (``services/retry/policy.py``).
    """
    headers = httpx.Headers(headers)
    value = headers.get("retry-after")
    if value is not None:
        value = value.strip()
        try:
            return _wait_seconds(float(value))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            return _wait_seconds((when - (now or datetime.now(timezone.utc))).total_seconds())
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return _wait_seconds(float(millis) / 1000)
        except ValueError:
            return None
    return None


def _wait_seconds(seconds: float) -> float | None:
    if math.isnan(seconds):
        raise ValueError("not a number of seconds")
    return min(max(0.0, seconds), sys.float_info.max)


def _error_fields(body: Any) -> tuple[str, set[str]]:
    """(message, codes) of an error body, OpenAI's ``{"error": {...}}`` or Ollama's ``{"error": "..."}``."""
    if not isinstance(body, dict):
        return (str(body) if body else ""), set()
    error = body.get("error", body)
    codes = {str(body[k]) for k in ("code", "type") if body.get(k)}
    if isinstance(error, dict):
        codes |= {str(error[k]) for k in ("code", "type") if error.get(k)}
        return str(error.get("message", "")), codes
    return str(error), codes


def classify(status: int, headers: httpx.Headers | dict[str, str], body: Any) -> ErrorInfo | None:
    """None for a success; otherwise what went wrong and which path it takes."""
    if 200 <= status < 300:
        return None
    message, codes = _error_fields(body)
    if status == 402 or (status == 429 and codes & QUOTA_CODES):
        kind = ErrorKind.quota
    elif status == 429 or status >= 500:
        kind = ErrorKind.overload
    else:
        kind = ErrorKind.client
    return ErrorInfo(
        kind=kind,
        status_code=status,
        message=(message or f"HTTP {status}")[:500],
        retry_after_seconds=parse_retry_after(headers),
    )


# --- the backends ---


class LLMBackend(ABC):
    """An async LLM client; safe to share between concurrent calls on one event loop."""

    name: str = "llm"

    def __init__(self, base_url: str, model: str, timeout_seconds: float, sampling: Sampling | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_seconds = timeout_seconds
        self.sampling = sampling or Sampling()
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_seconds, connect=min(5.0, timeout_seconds)),
            # Idle connections are dropped before common servers' keep-alive ends (uvicorn: 5 s),
            # so a call never goes out on a connection the server is closing.
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=4.0),
        )

    @property
    def description(self) -> str:
        return f"{self.name} at {self.base_url} (model {self.model})"

    @abstractmethod
    def _request(self, prompt: str, attempt: int) -> tuple[str, dict[str, Any], dict[str, str]]:
        """(url, JSON body, headers) of one call."""

    @abstractmethod
    def _answer(self, body: Any) -> tuple[str, str | None]:
        """(answer, model) out of a 200 body; raises KeyError/TypeError/ValueError if malformed."""

    async def generate(self, prompt: str, attempt: int = 0) -> LLMResult:
        url, payload, headers = self._request(prompt, attempt)
        started = time.perf_counter()
        try:
            response = await self._client.post(url, json=payload, headers=headers)
        except httpx.TimeoutException as exc:
            raise LLMCallError(
                ErrorInfo(kind=ErrorKind.overload, message=f"timed out after {self.timeout_seconds:g} s ({type(exc).__name__})")
            ) from exc
        except httpx.TransportError as exc:
            # Refused, reset or broken connections: the LLM is down or overwhelmed.
            raise LLMCallError(ErrorInfo(kind=ErrorKind.overload, message=f"connection failed: {exc!r}"[:500])) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        body = _json_or_text(response)
        error = classify(response.status_code, response.headers, body)
        if error is not None:
            raise LLMCallError(error)
        try:
            answer, model = self._answer(body)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            # A 200 without an answer: treat as a transient fault of the LLM, retried boundedly.
            info = ErrorInfo(kind=ErrorKind.overload, status_code=response.status_code, message=f"malformed answer: {exc!r}"[:500])
            raise LLMCallError(info) from exc
        return LLMResult(answer=answer, model=model or self.model, backend=self.name, latency_ms=latency_ms)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> "LLMBackend":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


class OllamaBackend(LLMBackend):
    """Ollama's ``POST /api/generate`` with ``stream: false``."""

    name = "ollama"

    def _request(self, prompt: str, attempt: int) -> tuple[str, dict[str, Any], dict[str, str]]:
        options = {
            "num_predict": self.sampling.max_tokens,
            "temperature": self.sampling.temperature_for(attempt),
            "seed": self.sampling.seed_for(prompt, attempt, self.sampling.sample),
        }
        return f"{self.base_url}/api/generate", {"model": self.model, "prompt": prompt, "stream": False, "options": options}, {}

    def _answer(self, body: Any) -> tuple[str, str | None]:
        if "error" in body:
            raise ValueError(f"error in a 200 body: {body['error']}")
        return str(body["response"]), body.get("model")


class SimulatedBackend(OllamaBackend):
    """The built-in gateway's simulator, spoken to in the Ollama protocol."""

    name = "simulated"


class OpenAIBackend(LLMBackend):
    """An OpenAI-compatible ``POST {base_url}/chat/completions`` (base URL ends in ``/v1``)."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        timeout_seconds: float,
        api_key: SecretStr | None = None,
        sampling: Sampling | None = None,
    ) -> None:
        super().__init__(base_url, model, timeout_seconds, sampling)
        self._api_key = api_key

    def _request(self, prompt: str, attempt: int) -> tuple[str, dict[str, Any], dict[str, str]]:
        headers = {"Authorization": f"Bearer {self._api_key.get_secret_value()}"} if self._api_key else {}
        payload = {
            "model": self.model,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
            "stream": False,
            "max_tokens": self.sampling.max_tokens,
            "temperature": self.sampling.temperature_for(attempt),
            "seed": self.sampling.seed_for(prompt, attempt, self.sampling.sample),
        }
        return f"{self.base_url}/chat/completions", payload, headers

    def _answer(self, body: Any) -> tuple[str, str | None]:
        content = body["choices"][0]["message"]["content"]
        if content is None:
            raise ValueError("choice without content")
        return str(content), body.get("model")


class LocalBackend(OpenAIBackend):
    """The local model server (llama.cpp), reached through the gateway's OpenAI endpoint."""

    name = "local"


# --- choosing one ---


def choose_backend(settings: QactlSettings, probe_timeout: float = 1.0) -> tuple[LLMBackend, str]:
    """The backend of the settings, and a one-line description for logs and ``qactl status``."""
    llm = settings.llm
    sampling = Sampling.from_settings(llm)
    route = llm_route(settings, probe_timeout)
    backend: LLMBackend
    if route.kind == "openai":
        backend = OpenAIBackend(route.calls, route.model, llm.timeout_seconds, llm.openai_api_key, sampling)
    elif route.kind == "ollama":
        backend = OllamaBackend(route.calls, route.model, llm.timeout_seconds, sampling)
    elif route.kind == "local":
        backend = LocalBackend(route.calls, route.model, llm.timeout_seconds, sampling=sampling)
    else:
        backend = SimulatedBackend(route.calls, route.model, llm.timeout_seconds, sampling)
    return backend, backend.description + (f" [{route.why}]" if route.why else "")
