"""What ``POST /query`` accepts, checked before anything is looked up, stored or produced.

Every refusal is a ``BadInput`` carrying the HTTP status, a stable error code and a sentence
that says what is wrong; the API turns it into a JSON 4xx.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from services.common.api_contract import QueryRequest
from services.common.settings import ApiSettings


class BadInput(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def parse_query(body: bytes, limits: ApiSettings) -> QueryRequest:
    """Decode, parse and validate a request body, or raise ``BadInput``."""
    if not body.strip():
        raise BadInput(400, "empty_body", 'request body is empty; send JSON like {"question": "..."}')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(400, "invalid_utf8", f"request body is not valid UTF-8 (bad byte at offset {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(400, "invalid_json", f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise BadInput(422, "invalid_body", f'request body must be a JSON object like {{"question": "..."}}, not {_json_type(data)}')
    try:
        request = QueryRequest.model_validate(data)
    except ValidationError as exc:
        raise BadInput(422, "invalid_field", _describe(exc)) from None
    _check_text("question", request.question, limits.max_question_chars, required=True)
    if request.reference_answer is not None:
        # A reference may be longer than a question, but not unbounded: the body limit bounds it.
        _check_text("reference_answer", request.reference_answer, limits.max_body_bytes, required=False)
        if not request.reference_answer.strip():
            request = request.model_copy(update={"reference_answer": None})
    return request


def _check_text(field: str, value: str, max_chars: int, required: bool) -> None:
    if required and not value.strip():
        raise BadInput(422, "empty_question", f"{field} is empty or only whitespace")
    if len(value) > max_chars:
        raise BadInput(422, f"{field}_too_long", f"{field} has {len(value)} characters; the limit is {max_chars}")
    if "\x00" in value:
        raise BadInput(422, "invalid_character", f"{field} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # JSON escapes can spell lone surrogates ("\ud800"), which are not text.
        raise BadInput(400, "invalid_unicode", f"{field} contains an unpaired surrogate escape; it is not valid Unicode") from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())) or "body"
        if error["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown field (expected question and optional reference_answer)")
        elif error["type"] == "missing":
            parts.append(f"{where}: required field is missing")
        else:
            parts.append(f"{where}: {error['msg'].lower()}, got {_json_type(error.get('input'))}")
    return "; ".join(parts)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
