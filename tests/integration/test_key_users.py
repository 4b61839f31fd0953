"""The follower that keeps the embedded server's users equal to the log's API keys, against a
real nats-server: it outlives a failure (a configuration it could not write)."""

from __future__ import annotations

import asyncio
import errno
import json
from pathlib import Path

import pytest

from sandboxer import subjects
from sandboxer.bus import key_users
from sandboxer.bus.connect import connect
from sandboxer.bus.key_users import KeyUsersFollower, bus_hash_for
from sandboxer.bus.nats_auth import AUTH_DIR_NAME, ensure_embedded_auth
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.streams import ensure_streams
from sandboxer.cleanup_waits import cancel_until_done
from sandboxer.domain.key_state import hash_key, key_id_for

pytestmark = pytest.mark.integration


async def test_a_failed_write_of_the_users_is_tried_again(
    nats_server: NatsServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The configuration could not be written once (a full disk): the follower ended, and
    no key created since ever reached the bus, nor did a revocation leave it."""
    home = tmp_path / "home"
    ensure_embedded_auth(home)
    real_write = key_users.write_server_config
    failures = {"left": 1}

    def full_disk_once(at: Path, users: list[key_users.KeyUser]) -> Path:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(at, users)

    monkeypatch.setattr(key_users, "write_server_config", full_disk_once)
    key = "sbx_" + "k" * 43
    key_id = key_id_for(hash_key(key))
    created = {
        "type": "key_created",
        "v": 1,
        "event_id": "e1",
        "key_id": key_id,
        "command_id": "c1",
        "actor": {"type": "adm", "id": "ops"},
        "at": "2026-12-03T10:00:00.000Z",
        "key_hash": hash_key(key),
        "project": "alpha",
        "key_type": "agt",
        "max_live": 5,
        "rate_per_second": 10,
        "bus_hash": bus_hash_for(key),
    }
    nc = await connect([nats_server.url], name="test", long_lived=False)
    follower = None
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        await js.publish(
            subjects.key_event_subject(key_id, "key_created"), json.dumps(created).encode()
        )
        follower = asyncio.create_task(KeyUsersFollower(js, home, lambda: None).follow())
        config = home / AUTH_DIR_NAME / "nats-server.conf"
        async with asyncio.timeout(30):
            while not (config.exists() and key_id in config.read_text()):
                await asyncio.sleep(0.1)
        assert failures["left"] == 0  # it did fail once, and went on
    finally:
        if follower is not None:
            await cancel_until_done(follower)
        await nc.close()
