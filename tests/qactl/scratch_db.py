"""A migrated scratch database on the session's real PostgreSQL, for tests that own their rows.

PostgreSQL is the session stack's (tests/stack.py, started by the same code as `qactl up`);
each module gets its own database, created, migrated with
``services.common.db.migrate`` and dropped at the end, so counts and percentiles are exactly
what the test inserted, whatever other tests write in the shared database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import SecretStr

from qactl.client import pg
from services.common import db
from services.common.settings import QactlSettings


@contextmanager
def scratch_database(settings: QactlSettings, label: str) -> Iterator[QactlSettings]:
    """Settings whose ``postgres.url`` is a fresh, migrated database; dropped afterwards."""
    name = f"qactl_{label}_{uuid.uuid4().hex[:8]}"
    # The superuser creates it (the application role may not create databases) for the
    # application role, which owns it and migrates it, as in the stack's own database.
    admin = pg.connect(settings.postgres.admin_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE {name} OWNER "{settings.postgres.user}"')
        # A URL, not libpq's key=value form: the storage API's asyncpg only takes URLs.
        dsn = settings.postgres.url.rsplit("/", 1)[0] + f"/{name}"
        db.migrate(dsn)
        yield settings.model_copy(
            update={"postgres": settings.postgres.model_copy(update={"dsn": SecretStr(dsn)})}
        )
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def execute(settings: QactlSettings, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = db.connect(settings.postgres.url, timeout=5)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()
