"""API keys as NATS identities: the hash a key logs in with, and the server's users kept current.

A key created with a bus identity (``keys create`` always asks for one) records
``bus_hash``, a bcrypt of the key, in ``key_created``. Its NATS user is the key's
id and its password the key itself; nats-server checks the password against the
bcrypt hash in its configuration, so neither the key nor anything that opens it
is ever written to the log or the configuration.

The process that owns the embedded server follows the key events
(:class:`KeyUsersFollower`): each created key with a ``bus_hash`` becomes a user
with the permissions of :func:`sandboxer.bus.permissions.key_permissions`, a
revoked key's user disappears, and the server reloads its configuration (SIGHUP),
which also closes the connections of users that no longer exist. For a shared
NATS, ``sandboxer keys nats-users`` prints the same users for the operator's
configuration (docs/security.md#keys-on-the-bus).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import bcrypt
import msgspec
import stamina
from nats.js import JetStreamContext

from sandboxer.bus.event_reader import read_events
from sandboxer.bus.nats_auth import NatsCredentials, write_server_config
from sandboxer.bus.permissions import KeyUser
from sandboxer.domain.key_state import hash_key, is_valid_bus_hash, key_id_for

__all__ = [
    "BUS_HASH_ROUNDS",
    "KeyUsers",
    "KeyUsersFollower",
    "bus_hash_for",
    "key_credentials",
    "key_inbox_prefix",
    "signal_reload",
]

log = logging.getLogger(__name__)

BUS_HASH_ROUNDS = 10
"""bcrypt's cost for a key's bus hash: the key is 256 random bits, so the cost only needs
to make each NATS login cheap for the server (about 50 ms at 10), not to slow guessing."""


def bus_hash_for(key: str) -> str:
    """The bcrypt of ``key`` that ``key_created`` records and nats-server checks logins against."""
    return bcrypt.hashpw(key.encode(), bcrypt.gensalt(BUS_HASH_ROUNDS)).decode()


def key_credentials(key: str) -> NatsCredentials:
    """How a client holding ``key`` logs in to NATS: as the key's id, with the key."""
    return NatsCredentials(user=key_id_for(hash_key(key)), password=key)


def key_inbox_prefix(key_id: str) -> str:
    """A key identity's inbox prefix: the only replies it may receive (``_INBOX.<key id>.>``)."""
    return f"_INBOX.{key_id}"


class KeyUsers:
    """The key users the log asks for now, folded from key events (pure)."""

    def __init__(self) -> None:
        self._users: dict[str, KeyUser] = {}

    def apply(self, event: dict[str, object]) -> bool:
        """Fold one key event; True when the set of users changed."""
        key_id = event.get("key_id")
        if not isinstance(key_id, str):
            return False
        kind = event.get("type")
        if kind == "key_revoked":
            return self._users.pop(key_id, None) is not None
        bus_hash, project, key_type = (
            event.get("bus_hash"),
            event.get("project"),
            event.get("key_type"),
        )
        if kind != "key_created" or key_id in self._users or not is_valid_bus_hash(bus_hash):
            return False
        if not isinstance(project, str) or key_type not in {"adm", "agt", "atm"}:
            return False
        assert isinstance(bus_hash, str)
        assert isinstance(key_type, str)
        self._users[key_id] = KeyUser(key_id, key_type, project, bus_hash)
        return True

    def users(self) -> list[KeyUser]:
        return sorted(self._users.values(), key=lambda user: user.key_id)


class KeyUsersFollower:
    """Keeps the embedded server's users equal to the log's keys (see the module's doc).

    ``reload`` asks the server to read its configuration again (SIGHUP to its pid).
    """

    def __init__(self, js: JetStreamContext, home: Path, reload: Callable[[], None]) -> None:
        self._js = js
        self._home = home
        self._reload = reload
        self._keys = KeyUsers()

    async def follow(self) -> None:
        """:meth:`run`, from the start again whenever it fails (the configuration not
        written on a full disk, the bus away): a follower that ended would leave every new
        key off the bus and every revoked one on it, for as long as the service runs."""
        async for attempt in stamina.retry_context(
            on=Exception, attempts=None, timeout=None, wait_initial=1.0, wait_max=30.0
        ):
            with attempt:
                await self.run()

    async def run(self) -> None:
        # Written once caught up even when nothing changed here: an earlier run may have
        # failed to write what it had.
        changed = True
        async for _seq, _subject, data, pending in read_events(
            self._js, filter_subject="sandboxer.evt.key.>", follow=True, idle_timeout=0.5
        ):
            try:
                event = msgspec.json.decode(data)
            except msgspec.DecodeError:
                continue
            changed = (isinstance(event, dict) and self._keys.apply(event)) or changed
            if pending == 0 and changed:  # a burst at once: one reload, not one per key
                self._apply()
                changed = False

    def _apply(self) -> None:
        users = self._keys.users()
        write_server_config(self._home, users)
        self._reload()
        log.info("NATS users reloaded: %d key identities", len(users))


def signal_reload(pid: Callable[[], int]) -> Callable[[], None]:
    """A ``reload`` for :class:`KeyUsersFollower`: SIGHUP makes nats-server reread its config.
    ``pid`` says the server's process now: a server started again has another (and reads
    the users afresh as it starts)."""

    def reload() -> None:
        now = pid()
        try:
            os.kill(now, signal.SIGHUP)
        except ProcessLookupError:
            log.warning("NATS server %d is gone: its users were not reloaded", now)

    return reload
