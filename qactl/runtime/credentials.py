"""The stack's credentials: generated once per state dir, kept 0600, used by everything it starts.

``<state_dir>/secrets/credentials.json`` (dir 0700, file 0600) holds the PostgreSQL superuser's and
application role's passwords, Redis's ``requirepass`` and the gateway's admin token. It is made
the first time the stack is declared for a state dir (normally the first `qactl up`) and never
rewritten: a later `up`, `down` or `up` reads it back, and a key a newer qactl adds is appended
without touching the others. A value the user set (``QACTL_POSTGRES__PASSWORD``, a TOML key) wins
over the stored one; an external ``postgres.dsn`` or ``redis.url`` is used exactly as given.

The settings carry the credentials as ``SecretStr`` to every process: children read them from
their settings file (0600), never from a command line or the environment.

The state dir itself is private (``make_private``): 0700, or 0710 with the server user's group
when PostgreSQL runs as another OS user (qactl as root), and the process's umask 077, so every
log, pid and data file qactl or a child creates is its owner's only.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import stat
from pathlib import Path

from pydantic import BaseModel, SecretStr

from qactl.errors import ConfigError
from services.common.settings import QactlSettings, write_private_file

PRIVATE_UMASK = 0o077


class Credentials(BaseModel):
    """What ``credentials.json`` holds; a field missing from an older file is generated."""

    postgres_password: SecretStr
    postgres_admin_password: SecretStr
    redis_password: SecretStr
    gateway_admin_token: SecretStr


def _generated() -> str:
    return secrets.token_urlsafe(24)  # 192 bits; URL-safe, so it needs no quoting in a DSN


def secrets_dir(settings: QactlSettings) -> Path:
    return settings.state_dir / "secrets"


def path(settings: QactlSettings) -> Path:
    return secrets_dir(settings) / "credentials.json"


def load(settings: QactlSettings) -> Credentials | None:
    """The stored credentials, or None when this state dir has none (yet)."""
    try:
        stored = json.loads(path(settings).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the stack's credentials {path(settings)}: {exc}") from None
    try:
        return Credentials.model_validate(stored)
    except ValueError:
        return None  # a field is missing: `ensure` completes the file


def ensure(settings: QactlSettings) -> Credentials:
    """The stored credentials; generated (and stored, 0600) for whatever is missing."""
    existing = load(settings)
    if existing is not None:
        return existing
    make_private(settings)
    try:
        stored = json.loads(path(settings).read_text())
    except (OSError, ValueError):
        stored = {}
    stored = stored if isinstance(stored, dict) else {}
    complete = {name: stored.get(name) or _generated() for name in Credentials.model_fields}
    directory = secrets_dir(settings)
    directory.mkdir(mode=0o700, exist_ok=True)
    directory.chmod(0o700)
    write_private_file(path(settings), json.dumps(complete, indent=2) + "\n")
    return Credentials.model_validate(complete)


def applied(settings: QactlSettings, creds: Credentials) -> QactlSettings:
    """``settings`` with every credential the user left unset taken from ``creds``."""
    p, r, g = settings.postgres, settings.redis, settings.gateway
    return settings.model_copy(
        update={
            "postgres": p.model_copy(
                update={
                    "password": p.password or creds.postgres_password,
                    "admin_password": p.admin_password or creds.postgres_admin_password,
                }
            ),
            "redis": r.model_copy(update={"password": r.password or creds.redis_password}),
            "gateway": g.model_copy(update={"admin_token": g.admin_token or creds.gateway_admin_token}),
        }
    )


def with_stored(settings: QactlSettings, create: bool = False) -> QactlSettings:
    """``settings`` with the state dir's credentials; ``create``: generate them if there are none."""
    creds = ensure(settings) if create else load(settings)
    return settings if creds is None else applied(settings, creds)


def secret_values(settings: QactlSettings) -> list[str]:
    """Every secret the stack runs with (for tests and checks that none leaks)."""
    values = [
        settings.postgres.password,
        settings.postgres.admin_password,
        settings.redis.password,
        settings.gateway.admin_token,
    ]
    return [v.get_secret_value() for v in values if v is not None]


# --- the state dir's privacy ---


def _server_group(settings: QactlSettings) -> int | None:
    """The group of the OS user PostgreSQL runs as, when that is not us (qactl as root)."""
    if os.geteuid() != 0 or settings.postgres.external:
        return None
    for candidate in (settings.postgres.run_as, "nobody"):
        try:
            return pwd.getpwnam(candidate).pw_gid
        except KeyError:
            continue
    return None


def make_private(settings: QactlSettings) -> None:
    """The state dir 0700 (0710 for the PostgreSQL server's group), its logs and run files the
    owner's only, and this process's umask 077 so every file it or a child creates is too."""
    os.umask(PRIVATE_UMASK)
    state = settings.state_dir
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        group = _server_group(settings)
        if group is None:
            state.chmod(0o700)
        else:
            # PostgreSQL's server user must traverse the state dir to its own home below it.
            os.chown(state, -1, group)
            state.chmod(0o710)
        for directory in (settings.log_dir, settings.run_dir):
            _owner_only(directory)
    except OSError as exc:
        raise ConfigError(f"cannot make the state dir {state} private: {exc}") from None


def _owner_only(directory: Path) -> None:
    """Files from an older qactl (default umask) become the owner's only."""
    if not directory.is_dir():
        return
    directory.chmod(0o700)
    for entry in directory.iterdir():
        mode = entry.lstat().st_mode
        if stat.S_ISREG(mode) and stat.S_IMODE(mode) & 0o077:
            entry.chmod(stat.S_IMODE(mode) & 0o700)
