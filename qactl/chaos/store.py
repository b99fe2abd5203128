"""An experiment's row in ``chaos_runs`` (migration 0004): written when it starts, its phase
updated as it goes (the dashboard shows the running row), completed when it ends.

A phase update while PostgreSQL is the fault cannot be written; it is skipped (the experiment
goes on), and the row is completed once PostgreSQL is back.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg2

from qactl.client import pg

APP = "qactl-chaos"


def start(dsn: str, experiment: str, description: str, questions: int, rate: float | None) -> int:
    conn = pg.connect_to_stack(dsn, APP)
    try:
        with conn, conn.cursor() as cur:
            # A row left 'running' by an interrupted earlier run is not running any more.
            cur.execute("UPDATE chaos_runs SET state = 'error', phase = 'interrupted', finished_at = now() WHERE state = 'running'")
            cur.execute(
                "INSERT INTO chaos_runs (experiment, description, questions, rate) VALUES (%s, %s, %s, %s) RETURNING id",
                (experiment, description, questions, rate),
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def _columns(fields: dict[str, Any]) -> tuple[str, list[Any]]:
    values = [json.dumps(v) if k == "detail" else v for k, v in fields.items()]
    return ", ".join(f"{k} = %s" for k in fields), values


def update(dsn: str, run_id: int, **fields: Any) -> bool:
    """Best effort: False when PostgreSQL could not take it (it may be the fault)."""
    sql, values = _columns(fields)
    try:
        conn = pg.connect(dsn, timeout=2.0, application_name=APP)
    except psycopg2.Error:
        return False
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET statement_timeout = 3000")
            cur.execute(f"UPDATE chaos_runs SET {sql} WHERE id = %s", (*values, run_id))
        return True
    except psycopg2.Error:
        return False
    finally:
        conn.close()


def finish(dsn: str, run_id: int, **fields: Any) -> None:
    """Complete the row; PostgreSQL must be reachable by now (the run checked it)."""
    sql, values = _columns({**fields, "phase": "done"})
    conn = pg.connect_to_stack(dsn, APP)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f"UPDATE chaos_runs SET {sql}, finished_at = now() WHERE id = %s", (*values, run_id))
    finally:
        conn.close()
