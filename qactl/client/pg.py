"""PostgreSQL: connect for qactl, server version, migration level."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2
import psycopg2.extensions

from qactl.errors import StackNotRunning
from services.common import db


@dataclass(frozen=True)
class PgInfo:
    server_version: str
    migration_level: int
    latest_migration: int

    @property
    def migrated(self) -> bool:
        return self.migration_level >= self.latest_migration


def connect(
    dsn: str, timeout: float = 3.0, application_name: str = "qactl", **overrides: str
) -> psycopg2.extensions.connection:
    """A connection to ``dsn``; ``overrides`` replace parts of it (e.g. dbname="postgres")."""
    return db.connect(dsn, application_name=application_name, timeout=timeout, **overrides)


def connect_to_stack(dsn: str, application_name: str, timeout: float = 5.0) -> psycopg2.extensions.connection:
    """A connection for a command that reads or writes the stack's PostgreSQL; when it cannot
    be reached, ``StackNotRunning`` with the first line of why and the way out."""
    try:
        return connect(dsn, timeout, application_name=application_name)
    except psycopg2.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StackNotRunning(f"PostgreSQL is not reachable ({first}); start it with `qactl up`") from None


def server_version(conn: psycopg2.extensions.connection) -> str:
    with conn.cursor() as cur:
        cur.execute("SHOW server_version")
        return str(cur.fetchone()[0]).split()[0]


def migration_level(conn: psycopg2.extensions.connection) -> int:
    return db.current_version(conn)


def info(dsn: str, timeout: float = 3.0) -> PgInfo:
    conn = connect(dsn, timeout)
    try:
        return PgInfo(server_version(conn), migration_level(conn), db.latest_version())
    finally:
        conn.close()
