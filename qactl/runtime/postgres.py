"""PostgreSQL from the system's binaries, with its own data dir under ``state_dir/postgres``.

``initdb`` on first start, then ``postgres`` in the foreground under the supervisor, listening
on 127.0.0.1 only by default. PostgreSQL refuses to run as root: when qactl is root the server
runs as ``settings.postgres.run_as`` (else ``nobody``), owning its data dir.

Authentication is scram-sha-256 everywhere (``pg_hba.conf`` is qactl's, rewritten at each `up`);
the passwords come from the stack's credentials (``credentials.py``). Two roles:

- ``postgres.admin_user`` (``postgres``): the cluster's bootstrap superuser, used by qactl only,
  to create the application role and the database;
- ``postgres.user`` (``qactl``): the application role every service, the Flink job and qactl's
  commands connect as. Not a superuser (no ``COPY ... TO PROGRAM``, no server files), no
  CREATEDB / CREATEROLE; it owns the ``qactl`` database and everything in it, and the
  migrations run as it. One path for the cluster qactl runs and an external DSN (whose role
  migrates too), and a new migration's tables need no grants.

A data dir from an older qactl (``trust`` authentication, ``qactl`` the bootstrap superuser) is
upgraded by `up` when the server is stopped: ``provision`` leaves trust on the Unix socket only
(a directory under the private state dir), ``setup`` renames the bootstrap superuser to
``admin_user``, gives it its password, creates the application role, hands it the database and
its objects, then writes the scram-only ``pg_hba.conf`` and reloads. Data is kept. A server an
older qactl left running (trust everywhere) is refused with the one-line way out: `qactl down`,
then `qactl up`.
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
import psycopg2.extensions
from psycopg2 import sql

from pydantic import SecretStr

from qactl.client import pg
from qactl.errors import ConfigError, PrerequisiteError, ProvisionError
from qactl.runtime.component import Component, Report
from qactl.runtime.exposure import is_loopback
from qactl.runtime.supervisor import Health, Port, ProcessSpec, Supervisor, demote_fn
from services.common import db
from services.common.settings import QactlSettings, write_private_file

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
    """Create the cluster on first start, its superuser with its password; True if it did."""
    data = data_dir(settings)
    if (data / "PG_VERSION").exists():
        return False
    report("initdb (first start)")
    if data.exists():
        shutil.rmtree(data)  # a half-made cluster from an interrupted initdb
    p = settings.postgres
    if p.admin_password is None:
        raise ConfigError("no PostgreSQL superuser password: the stack's credentials were not loaded")
    # A file, not an argument: initdb reads the password from it (readable by the server's user).
    pwfile = write_private_file(home(settings) / ".initdb-password", p.admin_password.get_secret_value() + "\n")
    user = server_user(settings)
    if user is not None:
        record = pwd.getpwnam(user)
        os.chown(pwfile, record.pw_uid, record.pw_gid)
    argv = [
        str(require_bin_dir() / "initdb"),
        "-D", str(data),
        "-U", p.admin_user,
        f"--pwfile={pwfile}",
        "--auth=scram-sha-256",
        "-E", "UTF8",
        "--locale=C.UTF-8",
        "--no-instructions",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            cwd=home(settings),
            preexec_fn=demote_fn(user),
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        raise ProvisionError(f"initdb failed:\n{(done.stdout + done.stderr).strip()[-2000:]}")
    write_hba(settings, upgrading=False)
    return True


# --- authentication: pg_hba.conf ---

HBA_UPGRADING = "# qactl: upgrading from trust authentication"


def hba_file(settings: QactlSettings) -> Path:
    return data_dir(settings) / "pg_hba.conf"


def hba_text(settings: QactlSettings, upgrading: bool = False) -> str:
    """Password (scram-sha-256) for every connection; from beyond loopback only when the server
    listens there. ``upgrading``: trust on the Unix socket alone, until ``setup`` has set the
    passwords of a data dir from an older qactl."""
    lines = ["# Written by qactl at each `qactl up` (qactl/runtime/postgres.py); edits are replaced."]
    if upgrading:
        lines += [HBA_UPGRADING, "local all all trust"]
    else:
        lines += ["local all all scram-sha-256"]
    lines += ["host all all 127.0.0.1/32 scram-sha-256", "host all all ::1/128 scram-sha-256"]
    if not is_loopback(settings.postgres.host):
        lines += ["host all all 0.0.0.0/0 scram-sha-256", "host all all ::/0 scram-sha-256"]
    return "\n".join(lines) + "\n"


def write_hba(settings: QactlSettings, upgrading: bool) -> bool:
    """Write ``pg_hba.conf`` (owned by the server's user, 0600); True if it changed."""
    path = hba_file(settings)
    text = hba_text(settings, upgrading)
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    write_private_file(path, text)
    user = server_user(settings)
    if user is not None:
        record = pwd.getpwnam(user)
        os.chown(path, record.pw_uid, record.pw_gid)
    return True


def auth_state(settings: QactlSettings) -> str:
    """``current`` (passwords), ``upgrading`` (an older data dir being upgraded) or ``legacy``
    (trust authentication: a data dir of an older qactl, not yet upgraded)."""
    try:
        text = hba_file(settings).read_text()
    except OSError:
        return "current"
    if HBA_UPGRADING in text:
        return "upgrading"
    rules = [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return "legacy" if any(rule[-1] == "trust" for rule in rules) else "current"


def provision(settings: QactlSettings, report: Report) -> None:
    require_bin_dir()
    prepare_dirs(settings)
    if initdb(settings, report):
        return
    state = auth_state(settings)
    if state == "current":
        write_hba(settings, upgrading=False)
    elif state == "legacy" and not Supervisor(settings).is_running("postgres"):
        report("data dir of an older qactl (trust authentication): upgrading to passwords")
        write_hba(settings, upgrading=True)


# --- connections ---

UPGRADE_ROLE = "qactl_upgrade"  # a temporary superuser: a role cannot rename itself


def _socket_connect(settings: QactlSettings, user: str, dbname: str = "postgres") -> psycopg2.extensions.connection:
    """A connection over the Unix socket (trust only while upgrading an older data dir)."""
    return pg.connect(
        f"host={socket_dir(settings)} port={settings.postgres.port} user={user} dbname={dbname}", timeout=5
    )


def _admin_connect(settings: QactlSettings, dbname: str = "postgres", timeout: float = 5.0) -> psycopg2.extensions.connection:
    """The superuser; while an older data dir is not upgraded yet, over the trusted socket."""
    if auth_state(settings) == "current":
        return pg.connect(settings.postgres.admin_url, timeout, dbname=dbname)
    for user in (settings.postgres.admin_user, settings.postgres.user):
        try:
            return _socket_connect(settings, user, dbname)
        except psycopg2.OperationalError as exc:
            failure = exc
    raise failure


def probe(settings: QactlSettings) -> Health:
    """The server accepts the superuser's connections (the qactl database may not exist yet)."""
    conn = _admin_connect(settings, timeout=2)
    try:
        return Health(True, f"PostgreSQL {pg.server_version(conn)} accepting connections")
    finally:
        conn.close()


def _scram(conn: psycopg2.extensions.connection, user: str, password: SecretStr) -> str:
    """The password as its scram-sha-256 verifier: the cleartext never reaches the server (or its log)."""
    return psycopg2.extensions.encrypt_password(password.get_secret_value(), user, conn, "scram-sha-256")


def _set_password(conn: psycopg2.extensions.connection, user: str, password: SecretStr) -> None:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(user)), (_scram(conn, user, password),))


def upgrade_superuser(settings: QactlSettings, report: Report) -> None:
    """An older data dir: its bootstrap superuser (named ``postgres.user``) becomes ``admin_user``
    with its password, so the application role can take the name. Idempotent."""
    p = settings.postgres
    conn = _admin_connect(settings)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolname FROM pg_roles WHERE oid = 10")  # the bootstrap superuser
            bootstrap = cur.fetchone()[0]
            if bootstrap != p.admin_user:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (p.admin_user,))
                if cur.fetchone() is not None:
                    raise ProvisionError(
                        f"cannot upgrade PostgreSQL in {data_dir(settings)}: role {p.admin_user!r} exists besides "
                        f"the superuser {bootstrap!r}; set postgres.admin_user to another name"
                    )
                if not _role_exists(cur, UPGRADE_ROLE):
                    cur.execute(sql.SQL("CREATE ROLE {} SUPERUSER LOGIN").format(sql.Identifier(UPGRADE_ROLE)))
                renamer = _socket_connect(settings, UPGRADE_ROLE)
                renamer.autocommit = True
                try:
                    with renamer.cursor() as rcur:
                        rcur.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(sql.Identifier(bootstrap), sql.Identifier(p.admin_user)))
                finally:
                    renamer.close()
                report(f"superuser {bootstrap!r} renamed {p.admin_user!r}")
    finally:
        conn.close()
    conn = _socket_connect(settings, p.admin_user)
    conn.autocommit = True
    try:
        _set_password(conn, p.admin_user, p.admin_password)  # type: ignore[arg-type]
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(UPGRADE_ROLE)))
    finally:
        conn.close()


def _role_exists(cur: psycopg2.extensions.cursor, name: str) -> bool:
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
    return cur.fetchone() is not None


APP_ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"


def ensure_database(settings: QactlSettings) -> bool:
    """The application role (not a superuser, its password) owning the database and everything
    in it; True if something was created or changed."""
    p = settings.postgres
    if p.password is None:
        raise ConfigError("no PostgreSQL application password: the stack's credentials were not loaded")
    app = sql.Identifier(p.user)
    conn = _admin_connect(settings)
    conn.autocommit = True
    changed = False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls "
                        "FROM pg_roles WHERE rolname = %s", (p.user,))  # fmt: skip
            row = cur.fetchone()
            if row is None:
                cur.execute(sql.SQL(f"CREATE ROLE {{}} {APP_ROLE_ATTRIBUTES}").format(app))
                _set_password(conn, p.user, p.password)
                changed = True
            elif row[0]:
                cur.execute(sql.SQL(f"ALTER ROLE {{}} {APP_ROLE_ATTRIBUTES}").format(app))
                changed = True
            if not _can_log_in(settings):
                _set_password(conn, p.user, p.password)
                changed = True
            cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (p.database,))
            row = cur.fetchone()
            if row is None:
                cur.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
                        sql.Identifier(p.database), app
                    )
                )
                changed = True
            elif row[0] != p.user:
                cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(p.database), app))
                changed = True
    finally:
        conn.close()
    return _own_every_object(settings) or changed


def _can_log_in(settings: QactlSettings) -> bool:
    try:
        pg.connect(settings.postgres.url, 5, dbname="postgres").close()
        return True
    except psycopg2.OperationalError:
        return False


# Relations first: a sequence that belongs to a table's column follows its table.
_NOT_OWNED = """
    SELECT c.relkind, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%%'
      AND c.relkind = ANY(%s) AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = %s)
"""
_ALTER = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "f": "FOREIGN TABLE", "S": "SEQUENCE"}


def _own_every_object(settings: QactlSettings) -> bool:
    """Hand the application role whatever in its database another role owns (an older data dir's
    tables belong to the bootstrap superuser, whose objects REASSIGN OWNED cannot move)."""
    p = settings.postgres
    conn = _admin_connect(settings, dbname=p.database)
    changed = False
    try:
        with conn, conn.cursor() as cur:
            for kinds in (["r", "p", "v", "m", "f"], ["S"]):
                cur.execute(_NOT_OWNED, (kinds, p.user))
                for kind, schema, name in cur.fetchall():
                    cur.execute(
                        sql.SQL(f"ALTER {_ALTER[kind]} {{}}.{{}} OWNER TO {{}}").format(
                            sql.Identifier(schema), sql.Identifier(name), sql.Identifier(p.user)
                        )
                    )
                    changed = True
            cur.execute(
                "SELECT n.nspname FROM pg_namespace n WHERE n.nspname <> 'information_schema' "
                "AND n.nspname NOT LIKE 'pg\\_%%' AND pg_get_userbyid(n.nspowner) NOT IN (%s, 'pg_database_owner')",
                (p.user,),
            )
            for (schema,) in cur.fetchall():
                cur.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(schema), sql.Identifier(p.user)))
                changed = True
    finally:
        conn.close()
    return changed


def _reload(settings: QactlSettings) -> None:
    conn = _admin_connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_reload_conf()")
    finally:
        conn.close()


def setup(settings: QactlSettings, report: Report, create_database: bool) -> bool:
    """Roles, database and migrations (the cluster qactl runs); migrations only for an external DSN."""
    changed = False
    if create_database:
        state = auth_state(settings)
        if state == "legacy":
            raise ConfigError(
                f"PostgreSQL in {data_dir(settings)} runs without passwords (started by an older qactl): "
                "run `qactl down`, then `qactl up` to upgrade it (data is kept)"
            )
        if state == "upgrading":
            upgrade_superuser(settings, report)
        changed = ensure_database(settings)
        if write_hba(settings, upgrading=False):
            _reload(settings)
            report("pg_hba.conf: scram-sha-256 for every connection")
            changed = True
    if changed:
        report(f"database {settings.postgres.database} owned by role {settings.postgres.user} (not a superuser)")
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
        "-c", "unix_socket_permissions=0700",
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
            endpoint=_safe_dsn(p.url),
        )
    ]


def _safe_dsn(dsn: str) -> str:
    """The DSN without its password, for display."""
    return re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", dsn)
