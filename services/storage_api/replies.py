"""The API's answers as plain data: the fast path and FastAPI both send them.

Built as dicts, not through the models of ``services.common.api_contract``, because the 202 path
must stay cheap; tests/services/storage_api/test_contract.py checks that every kind of reply
built here validates against its model and says exactly what the model says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi.responses import Response

from services.common.api_contract import status_url
from services.common.cache import CachedAnswer
from services.common.schemas import Stage


@dataclass(frozen=True)
class Reply:
    """An HTTP answer before it meets a framework: the fast path and FastAPI both send it."""

    status: int
    payload: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> bytes:
        return json.dumps(self.payload, default=_default).encode()

    def response(self) -> Response:
        return Response(self.body(), status_code=self.status, media_type="application/json", headers=dict(self.headers))


def reply(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, payload, tuple((headers or {}).items()))


def _default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Reply:
    return reply(status, {"error": code, "detail": detail}, headers)


def unavailable(detail: str) -> Reply:
    return error(503, "unavailable", detail, {"Retry-After": "2"})


def hit(answer: CachedAnswer, source: str) -> Reply:
    return reply(
        200,
        {
            "question_id": answer.question_id,
            "status": answer.status,
            "answer": answer.answer,
            "score": answer.score,
            "model": answer.model,
            "attempt": answer.attempt,
            "completed_at": answer.completed_at,
            "source": source,
        },
    )


def accepted(question_id: str, coalesced: bool) -> Reply:
    url = status_url(question_id)
    return reply(
        202,
        {"question_id": question_id, "status": Stage.queued.value, "status_url": url, "coalesced": coalesced},
        {"Location": url},
    )


def too_large(limit: int) -> Reply:
    # The body was not read to its end: the connection cannot serve another request.
    return error(413, "body_too_large", f"request body is larger than the limit of {limit} bytes", {"Connection": "close"})
