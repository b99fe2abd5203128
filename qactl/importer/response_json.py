"""Import an earlier run's ``response.json`` into PostgreSQL ``responses`` as a historical baseline.

The file
--------
A JSON array of objects, or JSON lines (one object per line; blank lines skipped). Each object
is one answered question. Fields (aliases in brackets; unknown fields are ignored):

==================  ========  ==========================================================================
field               required  maps to ``responses``
==================  ========  ==========================================================================
question            yes       ``question``; ``question_id`` = ``question_id_for(question)``, the
                              pipeline's own id, so the same question asked later is the same row
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

Every row gets ``source = 'import'`` and ``hops = []``.

Guarantees
----------
- Validate first: the whole file is read and checked before anything is written. A record
  that does not fit (not an object, no question, empty answer, a score that is not a number
  in range, an unknown status, a bad timestamp, the same question twice in the file) is
  *rejected* with its reason and record number; the others are imported. ``strict=True``
  imports nothing when any record is rejected.
- One transaction: the rows are COPYed into a temporary table, then inserted into
  ``responses`` by one ``INSERT ... SELECT ... ON CONFLICT (question_id) DO NOTHING``. An
  error anywhere rolls everything back: nothing is half-imported.
- Idempotent: a question already in ``responses`` (from an earlier import or from the pipeline)
  is left as it is and counted as *already present*; importing the same file twice inserts
  nothing the second time.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from qactl.client import pg
from qactl.errors import ConfigError, QactlError, StackNotRunning
from services.common.schemas import normalize_question, question_id_for

# Reported progress: (phase, done, total); phases are "validating", "loading", "inserting".
Progress = Callable[[str, int, int], None]

COPY_CHUNK = 2000
MAX_REJECTIONS_KEPT = 1000

_ALIASES: dict[str, tuple[str, ...]] = {
    "question": ("question",),
    "answer": ("answer", "response", "llm_response"),
    "score": ("score", "bert_score", "bertscore", "f1", "quality_score"),
    "status": ("status", "state"),
    "reference_answer": ("reference_answer", "reference", "expected_answer"),
    "attempt": ("attempt", "regenerations"),
    "model": ("model",),
    "backend": ("backend",),
    "latency_ms": ("latency_ms", "llm_latency_ms"),
    "latency_seconds": ("latency_seconds",),
    "completed_at": ("completed_at", "timestamp", "created_at"),
    "submitted_at": ("submitted_at",),
    "retries_overload": ("retries_overload",),
    "retries_quota": ("retries_quota",),
}
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


class ImportAborted(QactlError):
    """``strict`` import with rejected records: nothing was imported."""


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


# --- validation -----------------------------------------------------------------------------


def _field(record: dict[str, Any], name: str) -> Any:
    for alias in _ALIASES[name]:
        if alias in record and record[alias] is not None:
            return record[alias]
    return None


def _text(record: dict[str, Any], name: str, required: bool = False) -> str | None:
    value = _field(record, name)
    if value is None:
        if required:
            raise Rejected(f"field {name}: missing")
        return None
    if not isinstance(value, str):
        raise Rejected(f"field {name}: expected a string, got {type(value).__name__}")
    if "\x00" in value:
        raise Rejected(f"field {name}: contains a NUL character")
    if required and not value.strip():
        raise Rejected(f"field {name}: empty")
    return value


def _number(record: dict[str, Any], name: str) -> float | None:
    value = _field(record, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Rejected(f"field {name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise Rejected(f"field {name}: not a finite number")
    return float(value)


def _count(record: dict[str, Any], name: str) -> int:
    value = _field(record, name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Rejected(f"field {name}: expected an integer >= 0, got {value!r}")
    return value


def _moment(record: dict[str, Any], name: str) -> datetime | None:
    value = _field(record, name)
    if value is None:
        return None
    if isinstance(value, bool):
        raise Rejected(f"field {name}: expected a timestamp, got a boolean")
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise Rejected(f"field {name}: epoch seconds out of range: {value!r}") from None
    if not isinstance(value, str):
        raise Rejected(f"field {name}: expected a timestamp, got {type(value).__name__}")
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise Rejected(f"field {name}: not an ISO-8601 timestamp: {value[:40]!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Row:
    values: tuple[Any, ...]
    status_from_score: bool
    unscored_defaulted: bool


def validate_record(record: Any, threshold: float, imported_at: datetime) -> Row:
    """One record as a ``responses`` row (in ``COLUMNS`` order), or ``Rejected`` with the reason."""
    if isinstance(record, Rejected):
        raise record
    if not isinstance(record, dict):
        raise Rejected(f"not a JSON object but {type(record).__name__}")
    question = _text(record, "question", required=True)
    answer = _text(record, "answer", required=True)
    assert question is not None and answer is not None
    if not normalize_question(question):
        raise Rejected("field question: empty")
    score = _number(record, "score")
    if score is not None and not -1.0 <= score <= 1.0:
        raise Rejected(f"field score: {score:g} is outside [-1, 1]")
    raw_status = _field(record, "status")
    status_from_score = unscored_defaulted = False
    row_threshold: float | None = None
    if raw_status is not None:
        if not isinstance(raw_status, str) or raw_status.strip().lower() not in _STATUSES:
            raise Rejected(f"field status: {raw_status!r} is not validated or low_quality")
        status = _STATUSES[raw_status.strip().lower()]
    elif score is not None:
        status = "validated" if score > threshold else "low_quality"
        status_from_score, row_threshold = True, threshold
    else:
        status, unscored_defaulted = "validated", True
    latency = _number(record, "latency_ms")
    if latency is None:
        seconds = _number(record, "latency_seconds")
        latency = seconds * 1000 if seconds is not None else None
    if latency is not None and latency < 0:
        raise Rejected(f"field latency_ms: negative ({latency:g})")
    values = (
        question_id_for(question),
        question,
        _text(record, "reference_answer"),
        answer,
        score,
        status,
        row_threshold,
        _count(record, "attempt"),
        _count(record, "retries_overload"),
        _count(record, "retries_quota"),
        _text(record, "model"),
        _text(record, "backend"),
        latency,
        _moment(record, "submitted_at"),
        _moment(record, "completed_at") or imported_at,
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
                raise Rejected(f"duplicate: the same question as record {first_seen[question_id]}")
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


# --- writing --------------------------------------------------------------------------------


def _copy_value(value: Any) -> str:
    """A value in PostgreSQL's COPY text format."""
    if value is None:
        return r"\N"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy_buffer(rows: list[tuple[Any, ...]]) -> io.StringIO:
    return io.StringIO("".join("\t".join(_copy_value(v) for v in row) + "\n" for row in rows))


def insert_rows(
    conn: psycopg2.extensions.connection, rows: list[tuple[Any, ...]], progress: Progress | None = None
) -> int:
    """COPY the rows into a temporary table, then insert the new ones; returns how many were new.

    Runs inside the caller's transaction (nothing is committed here).
    """
    columns = ", ".join(COLUMNS)
    with conn.cursor() as cur:
        cur.execute(
            f"CREATE TEMPORARY TABLE import_responses ON COMMIT DROP AS SELECT {columns} FROM responses WITH NO DATA"
        )
        for start in range(0, len(rows), COPY_CHUNK):
            chunk = rows[start : start + COPY_CHUNK]
            cur.copy_expert(f"COPY import_responses ({columns}) FROM STDIN", _copy_buffer(chunk))
            if progress is not None:
                progress("loading", start + len(chunk), len(rows))
        if progress is not None:
            progress("inserting", 0, 1)
        cur.execute(
            f"""INSERT INTO responses ({columns}, source)
                SELECT {columns}, 'import' FROM import_responses
                ON CONFLICT (question_id) DO NOTHING"""
        )
        inserted = cur.rowcount
        if progress is not None:
            progress("inserting", 1, 1)
    return inserted


def import_file(
    dsn: str,
    path: Path,
    threshold: float,
    *,
    strict: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> ImportReport:
    """Validate ``path``, then import its valid records in one transaction (see the module doc)."""
    import time

    started = time.perf_counter()
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give the response.json file")
    rows, report = validate_file(path, threshold, progress)
    report.dry_run = dry_run
    if strict and report.rejected:
        report.seconds = time.perf_counter() - started
        raise ImportAborted(
            f"{report.rejected} of {report.records} records rejected (first: record "
            f"{report.rejections[0].record}: {report.rejections[0].reason}); --strict: nothing imported"
        )
    if dry_run or not rows:
        report.seconds = time.perf_counter() - started
        return report
    conn = pg.connect_to_stack(dsn, "qactl-migrate")
    try:
        with conn:  # one transaction: commit at the end, roll back on any error
            try:
                report.inserted = insert_rows(conn, rows, progress)
            except psycopg2.errors.UndefinedTable:
                raise StackNotRunning(
                    "PostgreSQL has no responses table: its migrations have not run; run `qactl up`"
                ) from None
            except psycopg2.Error as exc:
                raise QactlError(f"import failed, nothing imported: {str(exc).strip().splitlines()[0]}") from None
    finally:
        conn.close()
    report.already_present = report.valid - report.inserted
    report.seconds = time.perf_counter() - started
    return report
