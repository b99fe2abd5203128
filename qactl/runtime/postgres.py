"""PostgreSQL from the system's binaries, with its own data dir under ``state_dir/postgres``.

``initdb`` on first start (the configured user is the bootstrap superuser; trust
authentication, and the server listens on 127.0.0.1 only), then ``postgres`` in the
foreground under the supervisor. PostgreSQL refuses to run as root: when qactl is root the
server runs as ``settings.postgres.run_as`` (else ``nobody``), owning its data dir.
``after_start`` creates the database and applies the migrations of ``services/common/db.py``.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import psycopg2

from qactl.client import pg
from qactl.errors import ConfigError, PrerequisiteError, ProvisionError
from qactl.runtime.component import Component, Report
from qactl.runtime.supervisor import Health, Port, ProcessSpec, Supervisor, demote_fn
from services.common import db
from services.common.settings import QactlSettings

INSTALL_HINT = "apt-get install -y postgresql"
BINARIES = ("initdb", "postgres")


def _has_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in BINARIES)


def _version_key(directory: Path) -> tuple[int, ...]:
    match = re.search(r"/postgresql/(\d+)(?:\.(\d+))?/", f"{directory}/")
    return tuple(int(g) for g in match.groups() if g) if match else (0,)


def bin_dir(path: str | None = None) -> Path | None:
    """Directory with ``initdb`` and ``postgres``: from PATH first, else the newest of
    ``/usr/lib/postgresql/*/bin`` (Debian keeps them off PATH)."""
    initdb = shutil.which("initdb", path=path)
    if initdb is not None:
        real = Path(initdb).resolve().parent
        if _has_binaries(real):
            return real
    candidates = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if _has_binaries(d)]
    return max(candidates, key=_version_key) if candidates else None


def require_bin_dir() -> Path:
    found = bin_dir()
    if found is None:
        raise PrerequisiteError(f"PostgreSQL server binaries (initdb, postgres) not found: {INSTALL_HINT}")
    return found


def home(settings: QactlSettings) -> Path:
    return settings.state_dir / "postgres"


def data_dir(settings: QactlSettings) -> Path:
    return home(settings) / "data"


def socket_dir(settings: QactlSettings) -> Path:
    return home(settings) / "run"


def server_user(settings: QactlSettings) -> str | None:
    """The OS user the server runs as: None (ourselves) unless qactl is root."""
    if os.geteuid() != 0:
        return None
    for candidate in (settings.postgres.run_as, "nobody"):
        try:
            pwd.getpwnam(candidate)
            return candidate
        except KeyError:
            continue
    raise ConfigError(f"neither {settings.postgres.run_as!r} nor 'nobody' exists to run PostgreSQL as")


def _can_traverse(path: Path, uid: int, gids: set[int]) -> bool:
    info = path.stat()
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in gids:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def check_reachable(path: Path, user: str) -> None:
    """Fail clearly when ``user`` cannot reach ``path`` (e.g. a state dir under /root, mode 700)."""
    record = pwd.getpwnam(user)
    gids = {record.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    for parent in reversed(path.resolve().parents):
        if not _can_traverse(parent, record.pw_uid, gids):
            raise ConfigError(
                f"PostgreSQL runs as user {user!r} (qactl runs as root) and cannot reach {path}: "
                f"{parent} is mode {stat.S_IMODE(parent.stat().st_mode):o}. Use a state dir outside it, "
                f"e.g. QACTL_STATE_DIR=/var/lib/qactl, or set QACTL_POSTGRES__RUN_AS to a user who can."
            )


def _chown_tree(path: Path, user: str) -> None:
    record = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in (root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)):
            if os.lstat(name).st_uid != record.pw_uid:
                os.lchown(name, record.pw_uid, record.pw_gid)


def prepare_dirs(settings: QactlSettings) -> None:
    user = server_user(settings)
    for directory in (home(settings), socket_dir(settings)):
        directory.mkdir(parents=True, exist_ok=True)
    if user is not None:
        check_reachable(home(settings), user)
        record = pwd.getpwnam(user)
        os.chown(home(settings), record.pw_uid, record.pw_gid)
        _chown_tree(socket_dir(settings), user)
        if data_dir(settings).exists():
            _chown_tree(data_dir(settings), user)


def initdb(settings: QactlSettings, report: Report = lambda _: None) -> bool:
    """Create the cluster on first start; True if it did."""
    data = data_dir(settings)
    if (data / "PG_VERSION").exists():
        return False
    report("initdb (first start)")
    if data.exists():
        shutil.rmtree(data)  # a half-made cluster from an interrupted initdb
    argv = [
        str(require_bin_dir() / "initdb"),
        "-D", str(data),
        "-U", settings.postgres.user,
        "--auth-local=trust",
        "--auth-host=trust",
        "-E", "UTF8",
        "--locale=C.UTF-8",
        "--no-instructions",
    ]  # fmt: skip
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=home(settings),
        preexec_fn=demote_fn(server_user(settings)),
    )
    if done.returncode != 0:
        raise ProvisionError(f"initdb failed:\n{(done.stdout + done.stderr).strip()[-2000:]}")
    return True


def provision(settings: QactlSettings, report: Report) -> None:
    require_bin_dir()
    prepare_dirs(settings)
    initdb(settings, report)


def _admin_dsn(settings: QactlSettings) -> str:
    p = settings.postgres
    return f"postgresql://{p.user}@{p.host}:{p.port}/postgres"


def probe(settings: QactlSettings) -> Health:
    """The server accepts connections (the qactl database may not exist yet)."""
    conn = pg.connect(_admin_dsn(settings), timeout=2)
    try:
        return Health(True, f"PostgreSQL {pg.server_version(conn)} accepting connections")
    finally:
        conn.close()


def ensure_database(settings: QactlSettings) -> bool:
    """Create the role and database when missing; True if something was created."""
    p = settings.postgres
    conn = pg.connect(_admin_dsn(settings))
    conn.autocommit = True
    changed = False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (p.user,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE ROLE "{p.user}" LOGIN')
                changed = True
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (p.database,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{p.database}" OWNER "{p.user}" ENCODING \'UTF8\' TEMPLATE template0')
                changed = True
    finally:
        conn.close()
    return changed


def setup(settings: QactlSettings, report: Report, create_database: bool) -> bool:
    changed = ensure_database(settings) if create_database else False
    if changed:
        report(f"created database {settings.postgres.database}")
    applied = db.migrate(settings.postgres.url)
    if applied:
        report("applied migrations: " + ", ".join(f"{m.version:04d}_{m.name}" for m in applied))
    return changed or bool(applied)


def health(settings: QactlSettings, supervisor: Supervisor | None = None) -> Health:
    """Server version and migration level (not ok until every migration is applied)."""
    if supervisor is not None and not supervisor.is_running("postgres"):
        return Health(False, "postgres process not running")
    try:
        facts = pg.info(settings.postgres.url, timeout=2)
    except psycopg2.Error as exc:
        return Health(False, f"unreachable: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}")
    detail = f"PostgreSQL {facts.server_version}, migrations {facts.migration_level}/{facts.latest_migration}"
    data = {
        "server_version": facts.server_version,
        "migration_level": facts.migration_level,
        "latest_migration": facts.latest_migration,
    }
    return Health(facts.migrated, detail if facts.migrated else f"{detail} (run `qactl up`)", data)


def process(settings: QactlSettings) -> ProcessSpec:
    p = settings.postgres
    binaries = bin_dir()
    postgres = str(binaries / "postgres") if binaries else "postgres"
    argv = [
        postgres,
        "-D", str(data_dir(settings)),
        "-p", str(p.port),
        "-k", str(socket_dir(settings)),
        "-c", f"listen_addresses={p.host}",
        "-c", "logging_collector=off",  # stderr, into the supervisor's log file
        "-c", "log_line_prefix=%m [%p] ",
        "-c", "max_connections=200",
        "-c", "shared_buffers=128MB",
    ]  # fmt: skip
    return ProcessSpec(
        name="postgres",
        argv=argv,
        ports=(Port(p.port, "QACTL_POSTGRES__PORT", p.host),),
        cwd=home(settings),
        run_as=server_user(settings),
        stop_signal=signal.SIGINT,  # "fast" shutdown: roll back open transactions, then stop
        stop_timeout=30.0,
        start_timeout=60.0,
        health=lambda: probe(settings),
    )


def components(settings: QactlSettings) -> list[Component]:
    p = settings.postgres
    if p.external:
        return [
            Component(
                name="postgres",
                health=lambda: health(settings),
                after_start=lambda report: setup(settings, report, create_database=False),
                external=True,
                endpoint=_safe_dsn(p.url),
            )
        ]
    supervisor = Supervisor(settings)
    return [
        Component(
            name="postgres",
            health=lambda: health(settings, supervisor),
            processes=lambda: [process(settings)],
            provision=lambda report: provision(settings, report),
            after_start=lambda report: setup(settings, report, create_database=True),
            endpoint=p.url,
        )
    ]


def _safe_dsn(dsn: str) -> str:
    return re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", dsn)
