"""The doors on the real processes: passwords, a non-superuser role, private files, no secret in
any process's argv or log, credentials that survive `down`/`up`, an older state dir upgraded.

PostgreSQL and Redis run on a stack of their own (``port_base() + 500``, its own state dir), so
`down`/`up` here never touches the session's stack; the end-to-end test runs the whole pipeline
on the session's infrastructure.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg2
import pytest
import redis

from qactl.client import pg, redis_client
from qactl.client.api import StorageApiClient
from qactl.errors import ConfigError
from qactl.runtime import credentials, postgres
from qactl.runtime import redis as redis_runtime
from qactl.runtime.stack import Stack
from qactl.runtime.supervisor import Port, ProcessSpec, Supervisor, demote_fn
from services.common import db
from services.common.knowledge_base import load_knowledge_base
from services.common.settings import QactlSettings
from tests.services.pipeline import terminal_rows, wait_terminal
from tests.stack import INFRA, port_base, port_layout, running, test_settings

pytestmark = pytest.mark.stack

DATA_STORES = ("postgres", "redis")


def _fresh(base: int) -> QactlSettings:
    state = Path(f"/tmp/qactl-test-{base}")
    Stack(test_settings(base, state_dir=str(state)), only=DATA_STORES).down()  # an interrupted run's
    shutil.rmtree(state, ignore_errors=True)
    return test_settings(base, state_dir=str(state))


@pytest.fixture(scope="module")
def stores() -> Iterator[QactlSettings]:
    """PostgreSQL and Redis of a fresh state dir, started by the runtime as `qactl up` does."""
    settings = _fresh(port_base() + 500)
    with running(settings, DATA_STORES):
        yield settings


# --- the passwords ---


def test_postgres_refuses_a_connection_without_the_password(stores: QactlSettings) -> None:
    p = stores.postgres
    for dsn in (
        f"postgresql://{p.user}@{p.host}:{p.port}/{p.database}",  # no password over TCP
        f"postgresql://{p.user}:wrong@{p.host}:{p.port}/{p.database}",
        f"postgresql://{p.admin_user}@{p.host}:{p.port}/postgres",  # nor the superuser
        f"host={postgres.socket_dir(stores)} port={p.port} user={p.admin_user} dbname=postgres",  # nor the socket
    ):
        with pytest.raises(psycopg2.OperationalError, match="password"):
            pg.connect(dsn, timeout=3).close()
    assert "trust" not in postgres.hba_file(stores).read_text()
    pg.connect(p.url).close()  # the generated password opens it


def test_redis_refuses_a_client_without_the_password(stores: QactlSettings) -> None:
    r = stores.redis
    with pytest.raises(redis.AuthenticationError):
        redis_client.ping(f"redis://{r.host}:{r.port}/0")
    with pytest.raises(redis.AuthenticationError):
        redis_client.ping(f"redis://:wrong@{r.host}:{r.port}/0")
    with redis_client.connect(r.connection_url) as client:
        assert client.config_get("protected-mode") == {"protected-mode": "yes"}
        assert client.config_get("requirepass")["requirepass"] == r.password.get_secret_value()


def test_the_application_role_is_not_a_superuser_and_cannot_run_programs(stores: QactlSettings) -> None:
    conn = pg.connect(stores.postgres.url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user")
            assert cur.fetchone() == (False, False, False)
            for forbidden in (
                "COPY (SELECT 1) TO PROGRAM 'touch /tmp/qactl-doors-pwned'",
                "SELECT pg_read_file('/etc/passwd')",
                "CREATE DATABASE qactl_doors_forbidden",
                "CREATE ROLE qactl_doors_forbidden",
            ):
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute(forbidden)
            # It owns what the pipeline needs: its database and every table the migrations made.
            cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()")
            assert cur.fetchone() == (stores.postgres.user,)
            cur.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
            assert cur.fetchall() == [(stores.postgres.user,)]
    finally:
        conn.close()
    assert not Path("/tmp/qactl-doors-pwned").exists()


# --- files ---


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_state_dir_its_secrets_logs_and_run_files_are_private(stores: QactlSettings) -> None:
    state = stores.state_dir
    assert _mode(state) & 0o007 == 0, oct(_mode(state))  # nothing for others (0710 lets the server's group in)
    assert _mode(state) in (0o700, 0o710)
    assert _mode(credentials.secrets_dir(stores)) == 0o700
    assert _mode(credentials.path(stores)) == 0o600
    assert _mode(redis_runtime.config_file(stores)) == 0o600
    for directory in (stores.log_dir, stores.run_dir):
        assert _mode(directory) == 0o700
        files = [f for f in directory.iterdir() if f.is_file()]
        assert files and all(_mode(f) == 0o600 for f in files), {f.name: oct(_mode(f)) for f in files}


# --- survive down / up ---


def test_the_credentials_and_the_data_survive_down_and_up(stores: QactlSettings) -> None:
    stored = credentials.path(stores).read_bytes()
    with db.connect(stores.postgres.url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO questions (question_id, question, state) VALUES ('q-doors-survives', 'x', 'queued')")
    conn.close()
    with redis_client.connect(stores.redis.connection_url) as client:
        client.set("doors:survives", "yes")

    stack = Stack(stores, only=DATA_STORES)
    assert set(stack.down()) == set(DATA_STORES)
    # Settings built again, as a new `qactl up` builds them.
    result = Stack(test_settings(port_base() + 500, state_dir=str(stores.state_dir)), only=DATA_STORES).up()
    assert sorted(result.started) == sorted(DATA_STORES)

    assert credentials.path(stores).read_bytes() == stored
    with db.connect(stores.postgres.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT state FROM questions WHERE question_id = 'q-doors-survives'")
        assert cur.fetchone() == ("queued",)
    conn.close()
    with redis_client.connect(stores.redis.connection_url) as client:
        assert client.get("doors:survives") == "yes"


# --- an older state dir ---


def _legacy_specs(settings: QactlSettings) -> list[ProcessSpec]:
    """PostgreSQL and Redis exactly as the qactl before the doors ran them (trust, no password)."""
    p, r = settings.postgres, settings.redis
    pg_argv = [
        str(postgres.require_bin_dir() / "postgres"), "-D", str(postgres.data_dir(settings)), "-p", str(p.port),
        "-k", str(postgres.socket_dir(settings)), "-c", f"listen_addresses={p.host}", "-c", "logging_collector=off",
    ]  # fmt: skip
    redis_argv = [
        redis_runtime.redis_server(), "--port", str(r.port), "--bind", r.host, "--dir", str(redis_runtime.home(settings)),
        "--daemonize", "no", "--supervised", "no", "--logfile", "", "--appendonly", "yes", "--protected-mode", "no",
    ]  # fmt: skip
    return [
        ProcessSpec("postgres", pg_argv, (Port(p.port, "", p.host),), cwd=postgres.home(settings),
                    run_as=postgres.server_user(settings), stop_signal=2),
        ProcessSpec("redis", redis_argv, (Port(r.port, "", r.host),), cwd=redis_runtime.home(settings)),
    ]  # fmt: skip


def _make_legacy_state_dir(settings: QactlSettings) -> list[ProcessSpec]:
    """A state dir as an older qactl left it, running: trust, `qactl` the bootstrap superuser
    owning the database, Redis without a password, files with the default umask; some data."""
    previous = os.umask(0o022)
    try:
        postgres.prepare_dirs(settings)
        redis_runtime.home(settings).mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [str(postgres.require_bin_dir() / "initdb"), "-D", str(postgres.data_dir(settings)), "-U", "qactl",
             "--auth-local=trust", "--auth-host=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions"],
            capture_output=True, text=True, cwd=postgres.home(settings),
            preexec_fn=demote_fn(postgres.server_user(settings)), check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        specs = _legacy_specs(settings)
        supervisor = Supervisor(settings)
        for spec in specs:
            supervisor.start(spec)
        p, r = settings.postgres, settings.redis
        superuser = f"postgresql://qactl@{p.host}:{p.port}"
        wait = lambda: pg.connect(f"{superuser}/postgres", timeout=2).close() or True  # noqa: E731
        from services.common.waiting import poll_until

        assert poll_until(lambda: _quiet(wait), timeout=60, interval=0.3)
        admin = pg.connect(f"{superuser}/postgres")
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("CREATE DATABASE qactl OWNER qactl ENCODING 'UTF8' TEMPLATE template0")
        admin.close()
        db.migrate(f"{superuser}/qactl")
        with db.connect(f"{superuser}/qactl") as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO questions (question_id, question, state) VALUES ('q-legacy', 'old', 'queued')")
        conn.close()
        assert poll_until(lambda: _quiet(lambda: redis_client.ping(f"redis://{r.host}:{r.port}/0")), timeout=20, interval=0.2)
        with redis_client.connect(f"redis://{r.host}:{r.port}/0") as client:
            client.set("legacy:key", "kept")
            client.execute_command("BGREWRITEAOF")
    finally:
        os.umask(previous)
    return specs


def _quiet(probe) -> bool:
    try:
        return bool(probe())
    except Exception:
        return False


def test_an_older_state_dir_is_refused_while_running_then_upgraded_without_losing_data() -> None:
    base = port_base() + 600
    state = Path(f"/tmp/qactl-test-{base}")
    layout = port_layout(base, str(state))
    legacy = QactlSettings.model_validate(layout)  # no credentials: the older qactl had none
    Stack(test_settings(base, state_dir=str(state)), only=DATA_STORES).down()  # an interrupted run's
    shutil.rmtree(state, ignore_errors=True)
    try:
        _make_legacy_state_dir(legacy)
        assert not credentials.path(legacy).exists()
        assert _mode(legacy.log_dir / "postgres.log") == 0o644  # the default umask of then

        # Running: `up` would leave its clients without passwords; it says how to upgrade.
        with pytest.raises(ConfigError, match=r"qactl down`, then `qactl up"):
            Stack(legacy, only=DATA_STORES).up()
        with pytest.raises(ConfigError, match=r"qactl down`, then `qactl up"):
            Stack(legacy, only=["redis"]).up()

        Stack(legacy, only=DATA_STORES).down()
        events: list[str] = []
        result = Stack(legacy, only=DATA_STORES).up(lambda name, phase, detail: events.append(f"{name}: {detail}"))
        assert sorted(result.started) == sorted(DATA_STORES)
        assert any("upgrading to passwords" in e for e in events), events

        upgraded = credentials.with_stored(legacy)
        assert upgraded.postgres.password is not None
        # The data is kept, now behind passwords, owned by a role that is not a superuser.
        with db.connect(upgraded.postgres.url) as conn, conn.cursor() as cur:
            cur.execute("SELECT question FROM questions WHERE question_id = 'q-legacy'")
            assert cur.fetchone() == ("old",)
            cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            assert cur.fetchone() == (False,)
            cur.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
            assert cur.fetchall() == [("qactl",)]
            cur.execute("SELECT rolname FROM pg_roles WHERE oid = 10 OR rolname = 'qactl_upgrade'")
            assert cur.fetchall() == [("postgres",)]  # the old superuser renamed, the helper role gone
        conn.close()
        p = upgraded.postgres
        with pytest.raises(psycopg2.OperationalError, match="password"):
            pg.connect(f"postgresql://qactl@{p.host}:{p.port}/qactl", timeout=3).close()
        assert postgres.auth_state(upgraded) == "current"
        with redis_client.connect(upgraded.redis.connection_url) as client:
            assert client.get("legacy:key") == "kept"
        with pytest.raises(redis.AuthenticationError):
            redis_client.ping(f"redis://{upgraded.redis.host}:{upgraded.redis.port}/0")
        assert _mode(legacy.log_dir / "postgres.log") == 0o600
        assert _mode(state) & 0o007 == 0

        # And the next `up` finds nothing to do.
        again = Stack(legacy, only=DATA_STORES).up()
        assert sorted(again.unchanged) == sorted(DATA_STORES)
    finally:
        Stack(legacy, only=DATA_STORES).down()
        shutil.rmtree(state, ignore_errors=True)


# --- the whole pipeline: it answers, and no secret is on a command line or in a log ---


def test_the_pipeline_answers_and_no_secret_is_in_any_argv_or_log(infra_stack: QactlSettings) -> None:
    settings = test_settings(llm={"backend": "simulated"})
    names = [c.name for c in Stack(settings).components if c.name not in INFRA]
    entry = load_knowledge_base().entries[0]
    with running(settings, names):
        with StorageApiClient(settings.api.base_url) as api:
            submitted = api.submit(f"{entry.question} (doors {os.getpid()})", entry.reference_answer)
            status = wait_terminal(api, submitted.question_id, timeout=600)
        assert status.state in ("validated", "low_quality")
        assert terminal_rows(settings, [submitted.question_id])[submitted.question_id] == [status.state]

        secrets = credentials.secret_values(settings)
        assert len(secrets) == 4
        exposed = {
            proc.pid: " ".join(proc.info["cmdline"] or [])[:120]
            for proc in psutil.process_iter(["cmdline"])
            if any(secret in " ".join(proc.info["cmdline"] or []) for secret in secrets)
        }
        assert exposed == {}, exposed
        # The services' settings (secrets included) are in their settings files, the owner's only.
        settings_files = list(settings.run_dir.glob("*.settings.json"))
        assert settings_files and all(_mode(f) == 0o600 for f in settings_files)
        assert json.loads(settings_files[0].read_text())["redis"]["password"]  # where the secrets are

    leaks = {
        str(path): [s[:4] + "..." for s in secrets if s in path.read_text(errors="replace")]
        for path in settings.log_dir.rglob("*")
        if path.is_file()
    }
    assert {p: found for p, found in leaks.items() if found} == {}
