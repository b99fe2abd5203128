"""PostgreSQL: connect from settings, server version, migration level."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2
import psycopg2.extensions

from services.common import db


@dataclass(frozen=True)
class PgInfo:
    server_version: str
    migration_level: int
    latest_migration: int

    @property
    def migrated(self) -> bool:
        return self.migration_level >= self.latest_migration


def connect(dsn: str, timeout: float = 3.0, **overrides: str) -> psycopg2.extensions.connection:
    """A connection to ``dsn``; ``overrides`` replace parts of it (e.g. dbname="postgres")."""
    return psycopg2.connect(dsn, connect_timeout=max(1, int(timeout)), application_name="qactl", **overrides)


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
