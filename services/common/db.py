"""PostgreSQL connections, and versioned schema migrations recorded in ``schema_migrations``.

``connect`` is the one way every process (services, qactl, tests) opens a connection.

``services/common/migrations/NNNN_name.sql`` are applied in version order, each in one
transaction together with its ``schema_migrations`` row, so a migration is applied entirely
or not at all. An advisory lock serialises concurrent runners (two `qactl up`, or a service
starting while qactl migrates).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import psycopg2.extensions

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any constant shared by every runner; "qactl" in ASCII.
_LOCK_KEY = 0x7161_6374_6C


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def sql(self) -> str:
        return self.path.read_text()


def connect(
    dsn: str, *, application_name: str | None = None, timeout: float | None = 5, **overrides: str
) -> psycopg2.extensions.connection:
    """A connection to ``dsn`` that names itself ``application_name`` (in ``pg_stat_activity``).

    ``timeout`` bounds the connect in whole seconds (at least 1; ``None``: libpq waits as long as
    it takes); ``overrides`` replace parts of the DSN (e.g. ``dbname="postgres"``).
    """
    connect_timeout = None if timeout is None else max(1, int(timeout))
    return psycopg2.connect(dsn, connect_timeout=connect_timeout, application_name=application_name, **overrides)


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a version in {directory}")
    return found


def latest_version(directory: Path = MIGRATIONS_DIR) -> int:
    return max((m.version for m in discover(directory)), default=0)


def current_version(conn: psycopg2.extensions.connection) -> int:
    """The highest applied version; 0 for a database never migrated."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if not cur.fetchone()[0]:
            return 0
        cur.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
        return int(cur.fetchone()[0])


def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply every migration not yet applied; return those applied now (empty: up to date)."""
    conn = connect(dsn, application_name="qactl-migrate", timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            cur.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            cur.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in cur.fetchall()}
        applied = []
        conn.autocommit = False
        for migration in discover(directory):
            if migration.version in done:
                continue
            with conn:  # one transaction: the migration and its record, or neither
                with conn.cursor() as cur:
                    cur.execute(migration.sql())
                    cur.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
            applied.append(migration)
        return applied
    finally:
        conn.close()  # also releases the advisory lock
