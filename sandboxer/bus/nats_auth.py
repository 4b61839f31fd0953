"""NATS credentials: generated for the embedded server, read by every process that connects.

One directory holds one JSON file per identity (:mod:`sandboxer.bus.permissions`)::

    <dir>/service.json   {"user": "sandboxer-service", "password": "..."}
    <dir>/client.json    {"user": "sandboxer-client", "password": "..."}

For the embedded server the directory is ``$SANDBOXER_HOME/nats-auth`` (mode 0700):
``sandboxer up`` generates both files once (mode 0600, random passwords) and
reuses them on every restart, and writes the server's configuration beside them
(``nats-server.conf``, 0600). For a shared NATS, ``SANDBOXER_NATS_AUTH`` names a
directory of the same layout, holding only the files that machine should have.
A file readable by group or others is refused, as ssh refuses such a key.
Passwords are never logged: :class:`NatsCredentials` leaves them out of its repr.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sandboxer.bus.permissions import ROLES, USERS, KeyUser, authorization_block
from sandboxer.config.settings import Settings
from sandboxer.errors import ConfigError
from sandboxer.synced_files import replace_synced

__all__ = [
    "AUTH_DIR_NAME",
    "EMBEDDED_SERVER_NAME",
    "NatsCredentials",
    "auth_dir",
    "credentials_for",
    "ensure_embedded_auth",
    "read_credentials",
    "write_server_config",
]

AUTH_DIR_NAME = "nats-auth"
EMBEDDED_SERVER_NAME = "sandboxer-embedded"
"""The embedded server's name, in its config too: nats-server refuses a reload whose
configuration names no server when the running one has a name."""
SERVER_CONF = "nats-server.conf"
_PASSWORD_BYTES = 32
_MAX_FILE = 4096
_GENERATED = re.compile(r"[A-Za-z0-9_-]{20,200}")
"""What a generated password looks like: anything else in the embedded files is replaced."""


@dataclass(frozen=True)
class NatsCredentials:
    """A NATS user and its password (the password stays out of repr and logs)."""

    user: str
    password: str = field(repr=False)


def auth_dir(settings: Settings) -> Path | None:
    """Where this process's credentials live, or None (a NATS without authentication)."""
    if settings.embedded:
        return settings.home / AUTH_DIR_NAME
    return settings.nats_auth_dir


def _refuse(path: Path, why: str) -> ConfigError:
    return ConfigError(f"NATS credentials {path}: {why}")


def read_credentials(directory: Path, role: str) -> NatsCredentials | None:
    """``role``'s credentials in ``directory``, or None when it holds no file for it."""
    if role not in ROLES:
        raise ValueError(f"unknown NATS identity {role!r}")
    path = directory / f"{role}.json"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _refuse(path, f"cannot be read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(path, "is not a regular file")
        if info.st_mode & 0o077:
            raise _refuse(
                path,
                f"is readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
                f"run: chmod 600 {path}",
            )
        raw = handle.read(_MAX_FILE + 1)
    try:
        data = json.loads(raw) if len(raw) <= _MAX_FILE else None
    except ValueError:
        data = None
    user = data.get("user") if isinstance(data, dict) else None
    password = data.get("password") if isinstance(data, dict) else None
    if not (isinstance(user, str) and user and isinstance(password, str) and password):
        raise _refuse(path, 'is not {"user": "...", "password": "..."}')
    return NatsCredentials(user=user, password=password)


def credentials_for(settings: Settings, role: str) -> NatsCredentials | None:
    """The credentials ``role`` connects with under ``settings`` (None: connect without).

    With the embedded server they must exist (``sandboxer up`` generated them): a
    missing file says so instead of an anonymous attempt the server refuses.
    """
    directory = auth_dir(settings)
    if directory is None:
        return None
    found = read_credentials(directory, role)
    if found is None and settings.embedded:
        raise _refuse(
            directory / f"{role}.json",
            "is missing; 'sandboxer up' generates it when it starts the embedded NATS",
        )
    return found


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as mode 0600, replacing it atomically."""
    replace_synced(path, text.encode(), mode=0o600)


def ensure_embedded_auth(home: Path) -> Path:
    """Generate the embedded server's credentials once; (re)write its config; return its path.

    The config is rewritten on every start so a new version's permissions apply;
    the passwords in it are those of the files, which stay as they are. Key
    identities are added once the log is read (:mod:`sandboxer.bus.key_users`).
    """
    directory = home / AUTH_DIR_NAME
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    for role in ROLES:
        found = read_credentials(directory, role)
        if found is None or found.user != USERS[role] or not _GENERATED.fullmatch(found.password):
            found = NatsCredentials(USERS[role], secrets.token_urlsafe(_PASSWORD_BYTES))
            _write_private(
                directory / f"{role}.json",
                json.dumps({"user": found.user, "password": found.password}) + "\n",
            )
    return write_server_config(home, ())


def write_server_config(home: Path, keys: Sequence[KeyUser]) -> Path:
    """(Re)write the embedded server's configuration: both identities and ``keys``' users."""
    directory = home / AUTH_DIR_NAME
    passwords: dict[str, str] = {}
    for role in ROLES:
        found = read_credentials(directory, role)
        if found is None:
            raise _refuse(directory / f"{role}.json", "is missing; restart 'sandboxer up'")
        passwords[role] = json.dumps(found.password)
    config = directory / SERVER_CONF
    _write_private(
        config,
        "# Written by 'sandboxer up': users and permissions of the embedded NATS\n"
        "# (docs/security.md). The passwords are those of service.json and client.json;\n"
        "# each API key's user checks its key against the key's bcrypt hash.\n"
        f"server_name: {json.dumps(EMBEDDED_SERVER_NAME)}\n" + authorization_block(passwords, keys),
    )
    return config
