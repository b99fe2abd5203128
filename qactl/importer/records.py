"""An earlier run's ``response.json``: its records read, checked and turned into ``responses`` rows.

The file
--------
A JSON array of objects, or JSON lines (one object per line; blank lines skipped). Each object
is one answered question, checked by ``ResponseRecord``. Fields (aliases in brackets; unknown
fields are ignored):

==================  ========  ==========================================================================
field               required  maps to ``responses``
==================  ========  ==========================================================================
question            yes       ``question``; ``question_id`` = ``question_id_for(question, reference)``,
                              the pipeline's own id, so the same question asked later is the same row
answer [response,   yes       ``answer`` (a non-empty string)
llm_response]
score [bert_score,  no        ``score``: a number in [-1, 1] (BERTScore F1); ``null`` allowed
bertscore, f1,
quality_score]
status [state]      no        ``status``: ``validated`` or ``low_quality`` (``low-quality`` accepted).
                              Missing: ``score > threshold`` -> validated, else low_quality (the
                              threshold of the current policies, stored in ``threshold``); with
                              neither status nor score: validated, unscored (the earlier run gave
                              that answer to its asker)
reference_answer    no        ``reference_answer``
[reference,
expected_answer]
attempt             no        ``attempt``: regenerations used, an integer >= 0 (default 0)
[regenerations]
model, backend      no        ``model``, ``backend`` (strings)
latency_ms          no        ``llm_latency_ms``; ``latency_seconds`` is multiplied by 1000
[llm_latency_ms]
completed_at        no        ``completed_at``: ISO-8601 (``Z`` or an offset; naive = UTC) or Unix
[timestamp,                   epoch seconds. Default: the time of the import
created_at]
submitted_at        no        ``submitted_at``, same formats
retries_overload,   no        ``retries_overload``, ``retries_quota`` (integers >= 0)
retries_quota
==================  ========  ==========================================================================

Every row gets ``source = 'import'`` and ``hops = []``. A record that does not fit is rejected
with its reason and record number (see ``load.py`` for what happens next).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from qactl.errors import QactlError
from services.common.schemas import normalize_question, question_id_for

# Reported progress: (phase, done, total); phases are "validating", "loading", "inserting".
Progress = Callable[[str, int, int], None]

MAX_REJECTIONS_KEPT = 1000

_STATUSES = {"validated": "validated", "low_quality": "low_quality", "low-quality": "low_quality"}

COLUMNS = (
    "question_id",
    "question",
    "reference_answer",
    "answer",
    "score",
    "status",
    "threshold",
    "attempt",
    "retries_overload",
    "retries_quota",
    "model",
    "backend",
    "llm_latency_ms",
    "submitted_at",
    "completed_at",
)


class ImportFileError(QactlError):
    """The file as a whole cannot be read (missing, not JSON): nothing was imported."""


class Rejected(ValueError):
    """One record does not fit; the message is the reason shown to the operator."""


@dataclass(frozen=True)
class Rejection:
    record: int  # 1-based position in the file (the line, for JSON lines)
    reason: str


@dataclass
class ImportReport:
    path: str
    records: int = 0
    valid: int = 0
    inserted: int = 0
    already_present: int = 0
    rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    unscored_defaulted: int = 0
    status_from_score: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    def reasons(self) -> Counter[str]:
        """Rejections grouped by reason (record numbers dropped), for the summary."""
        return Counter(r.reason.split(":", 1)[0] for r in self.rejections)

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.path,
            "records": self.records,
            "valid": self.valid,
            "inserted": self.inserted,
            "already_present": self.already_present,
            "rejected": self.rejected,
            "rejections": [{"record": r.record, "reason": r.reason} for r in self.rejections],
            "status_from_score": self.status_from_score,
            "unscored_stored_as_validated": self.unscored_defaulted,
            "seconds": round(self.seconds, 3),
            "dry_run": self.dry_run,
        }


# --- reading --------------------------------------------------------------------------------


def read_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(record number, parsed JSON or a ``Rejected``) for a JSON array or JSON lines file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ImportFileError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); nothing imported") from None
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read ({exc.strerror})") from None
    stripped = text.lstrip()
    if not stripped:
        raise ImportFileError(f"{path} is empty; nothing imported")
    if stripped[0] == "[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ImportFileError(
                f"{path} starts as a JSON array but is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                f"{exc.msg}); nothing imported"
            ) from None
        for number, item in enumerate(data, start=1):
            yield number, item
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, Rejected(f"invalid JSON: {exc.msg} at column {exc.colno}")


# --- the record -----------------------------------------------------------------------------


def _moment(value: Any) -> datetime:
    """ISO-8601 (``Z`` or an offset; naive = UTC) or Unix epoch seconds, as an aware datetime."""
    if isinstance(value, bool):
        raise ValueError("expected a timestamp, got a boolean")
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"epoch seconds out of range: {value!r}") from None
    if not isinstance(value, str):
        raise ValueError(f"expected a timestamp, got {type(value).__name__}")
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO-8601 timestamp: {value[:40]!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


Moment = Annotated[datetime | None, BeforeValidator(_moment)]
Count = Annotated[int, Field(ge=0)]
Number = Annotated[float | None, Field(allow_inf_nan=False)]


def _aliases(*names: str) -> Any:
    return Field(None, validation_alias=AliasChoices(*names))


class ResponseRecord(BaseModel):
    """One record of the file, with the names earlier runs used as aliases (first given wins).

    Fields are declared in the order they are checked: the first failing one is the reason.
    """

    model_config = ConfigDict(strict=True, frozen=True)

    question: str
    answer: str = Field(validation_alias=AliasChoices("answer", "response", "llm_response"))
    score: Number = _aliases("score", "bert_score", "bertscore", "f1", "quality_score")
    status: str | None = _aliases("status", "state")
    latency_ms: Number = _aliases("latency_ms", "llm_latency_ms")
    latency_seconds: Number = None
    reference_answer: str | None = _aliases("reference_answer", "reference", "expected_answer")
    attempt: Count = Field(0, validation_alias=AliasChoices("attempt", "regenerations"))
    retries_overload: Count = 0
    retries_quota: Count = 0
    model: str | None = None
    backend: str | None = None
    submitted_at: Moment = None
    completed_at: Moment = _aliases("completed_at", "timestamp", "created_at")

    @model_validator(mode="before")
    @classmethod
    def _given(cls, data: Any) -> Any:
        """A null is a field not given; ``latency_seconds`` counts only without ``latency_ms``."""
        if not isinstance(data, dict):
            return data
        given = {key: value for key, value in data.items() if value is not None}
        if "latency_ms" in given or "llm_latency_ms" in given:
            given.pop("latency_seconds", None)
        return given

    @field_validator("question", "answer", "reference_answer", "model", "backend")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("contains a NUL character")
        return value

    @field_validator("question", "answer")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty")
        return value

    @field_validator("question")
    @classmethod
    def _a_question(cls, value: str) -> str:
        if not normalize_question(value):
            raise ValueError("empty")
        return value

    @field_validator("score")
    @classmethod
    def _a_bertscore(cls, value: float | None) -> float | None:
        if value is not None and not -1.0 <= value <= 1.0:
            raise ValueError(f"{value:g} is outside [-1, 1]")
        return value

    @field_validator("status", mode="before")
    @classmethod
    def _a_status(cls, value: Any) -> str:
        if not isinstance(value, str) or value.strip().lower() not in _STATUSES:
            raise ValueError(f"{value!r} is not validated or low_quality")
        return _STATUSES[value.strip().lower()]

    @field_validator("latency_ms", "latency_seconds")
    @classmethod
    def _not_negative(cls, value: float | None) -> float | None:
        if value is not None and value < 0:
            raise ValueError(f"negative ({value:g})")
        return value

    @property
    def llm_latency_ms(self) -> float | None:
        if self.latency_ms is not None:
            return self.latency_ms
        return self.latency_seconds * 1000 if self.latency_seconds is not None else None


_FIELD_OF_ALIAS = {
    alias: name
    for name, info in ResponseRecord.model_fields.items()
    for alias in (info.validation_alias.choices if isinstance(info.validation_alias, AliasChoices) else [name])
    if isinstance(alias, str)
}


def _reason(error: ErrorDetails) -> str:
    """The operator's one-line reason for the first thing wrong with a record."""
    kind, value = error["type"], error["input"]
    if kind == "model_type":
        return f"not a JSON object but {type(value).__name__}"
    if kind == "missing":
        detail = "missing"
    elif kind == "string_type":
        detail = f"expected a string, got {type(value).__name__}"
    elif kind == "float_type":
        detail = f"expected a number, got {type(value).__name__}"
    elif kind == "finite_number":
        detail = "not a finite number"
    elif kind in ("int_type", "greater_than_equal"):
        detail = f"expected an integer >= 0, got {value!r}"
    elif kind == "value_error":
        detail = str(error.get("ctx", {}).get("error", error["msg"]))
    else:
        detail = error["msg"]
    name = str(error["loc"][0]) if error["loc"] else "record"
    return f"field {_FIELD_OF_ALIAS.get(name, name)}: {detail}"


# --- validation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    values: tuple[Any, ...]
    status_from_score: bool
    unscored_defaulted: bool


def validate_record(record: Any, threshold: float, imported_at: datetime) -> Row:
    """One record as a ``responses`` row (in ``COLUMNS`` order), or ``Rejected`` with the reason."""
    if isinstance(record, Rejected):
        raise record
    try:
        checked = ResponseRecord.model_validate(record)
    except ValidationError as exc:
        raise Rejected(_reason(exc.errors(include_url=False)[0])) from None
    status, score = checked.status, checked.score
    status_from_score = unscored_defaulted = False
    row_threshold: float | None = None
    if status is None and score is not None:
        status = "validated" if score > threshold else "low_quality"
        status_from_score, row_threshold = True, threshold
    elif status is None:
        status, unscored_defaulted = "validated", True
    values = (
        question_id_for(checked.question, checked.reference_answer),
        checked.question,
        checked.reference_answer,
        checked.answer,
        score,
        status,
        row_threshold,
        checked.attempt,
        checked.retries_overload,
        checked.retries_quota,
        checked.model,
        checked.backend,
        checked.llm_latency_ms,
        checked.submitted_at,
        checked.completed_at or imported_at,
    )
    return Row(values, status_from_score, unscored_defaulted)


def validate_file(
    path: Path, threshold: float, progress: Progress | None = None, imported_at: datetime | None = None
) -> tuple[list[tuple[Any, ...]], ImportReport]:
    """Every valid row of the file and the report of what was rejected; writes nothing."""
    imported_at = imported_at or datetime.now(timezone.utc)
    report = ImportReport(path=str(path))
    records = list(read_records(path))
    report.records = len(records)
    rows: list[tuple[Any, ...]] = []
    first_seen: dict[str, int] = {}
    for index, (number, record) in enumerate(records, start=1):
        try:
            row = validate_record(record, threshold, imported_at)
            question_id = row.values[0]
            if question_id in first_seen:
                raise Rejected(f"duplicate: the same question and reference as record {first_seen[question_id]}")
            first_seen[question_id] = number
        except Rejected as exc:
            report.rejected += 1
            if len(report.rejections) < MAX_REJECTIONS_KEPT:
                report.rejections.append(Rejection(number, str(exc)))
        else:
            rows.append(row.values)
            report.status_from_score += row.status_from_score
            report.unscored_defaulted += row.unscored_defaulted
        if progress is not None and (index % 500 == 0 or index == len(records)):
            progress("validating", index, len(records))
    report.valid = len(rows)
    return rows, report
