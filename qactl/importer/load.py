"""Import an earlier run's ``response.json`` into PostgreSQL ``responses`` as a historical baseline.

The file's format and what each field maps to: ``records.py``.

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
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from qactl.client import pg
from qactl.errors import ConfigError, QactlError, StackNotRunning
from qactl.importer.records import COLUMNS, ImportReport, Progress, validate_file

COPY_CHUNK = 2000


class ImportAborted(QactlError):
    """``strict`` import with rejected records: nothing was imported."""


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
