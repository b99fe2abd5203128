"""Time `qactl migrate` on a realistic 10,000-record response.json (target: at most 10 s).

    python bench/bench_migrate.py [--count 10000] [--jsonl]

Uses the PostgreSQL of the settings (``qactl up`` first; QACTL_* variables move it), in a
scratch database created for the run, migrated, and dropped afterwards, so the real
``responses`` table is never touched. Prints the time of the first import (everything new)
and of a second one (everything already present: the idempotent path).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qactl.client import pg
from qactl.importer.load import import_file
from qactl.runtime import credentials
from services.common import db
from services.common.settings import load_settings

HERE = Path(__file__).resolve().parent
SCRATCH_DB = "qactl_bench_migrate"


def scratch_dsn(base: str) -> str:
    from psycopg2.extensions import make_dsn, parse_dsn

    return make_dsn(**{**parse_dsn(base), "dbname": SCRATCH_DB})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--jsonl", action="store_true")
    args = parser.parse_args()
    settings = credentials.with_stored(load_settings())  # the stack's credentials
    base = settings.postgres.url
    admin = pg.connect(settings.postgres.admin_url)  # the application role may not create databases
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {SCRATCH_DB}")
        cur.execute(f'CREATE DATABASE {SCRATCH_DB} OWNER "{settings.postgres.user}"')
    try:
        dsn = scratch_dsn(base)
        db.migrate(dsn)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / ("response.jsonl" if args.jsonl else "response.json")
            command = [sys.executable, str(HERE / "make_response_json.py"), str(path), "--count", str(args.count)]
            subprocess.run(command + (["--jsonl"] if args.jsonl else []), check=True)
            threshold = settings.policies.quality_threshold
            first = import_file(dsn, path, threshold)
            second = import_file(dsn, path, threshold)
        conn = db.connect(dsn, timeout=None)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM responses WHERE source = 'import'")
            stored = cur.fetchone()[0]
        conn.close()
    finally:
        with admin.cursor() as cur:
            time.sleep(0.1)
            cur.execute(f"DROP DATABASE IF EXISTS {SCRATCH_DB} WITH (FORCE)")
        admin.close()
    print(f"records            {first.records}")
    print(f"first import       {first.seconds:.2f} s  ({first.inserted} inserted, {first.records / first.seconds:,.0f} records/s)")
    print(f"second import      {second.seconds:.2f} s  ({second.inserted} inserted, {second.already_present} already present)")
    print(f"rows stored        {stored}")
    print(f"target             <= 10 s for 10,000 records: {'met' if first.seconds <= 10 else 'NOT met'}")


if __name__ == "__main__":
    main()
