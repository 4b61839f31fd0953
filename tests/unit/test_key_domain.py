"""API keys as an aggregate: what a key is, who may create or revoke one, strict commands,
and the one deciding loop on the in-memory store."""

from __future__ import annotations

import msgspec
import pytest

from sandboxer.bus.memory_store import MemoryEventStore
from sandboxer.commands.parse import parse_command
from sandboxer.commands.types import CreateKey, RevokeKey
from sandboxer.domain.key_decide import decide_key
from sandboxer.domain.key_state import (
    KeyState,
    fold_key,
    hash_key,
    is_valid_key_id,
    key_id_for,
    looks_like_key,
    new_key,
)
from sandboxer.errors import InvalidCommand, Rejected
from sandboxer.events.codec import decode_event, encode_event
from sandboxer.events.key_events import KeyCreated, KeyRevoked
from sandboxer.events.types import Actor
from sandboxer.workers.deciding import apply_key

ADM = Actor(type="adm", id="ops")
AGT = Actor(type="agt", id="bot", project="alpha")
NOW = "2026-12-02T10:00:00.000Z"


def create(key_hash: str, actor: Actor = ADM, command_id: str = "c1") -> CreateKey:
    return CreateKey(
        command_id=command_id, actor=actor, project="alpha", key_type="agt", key_hash=key_hash
    )


def test_a_key_is_random_prefixed_and_its_id_comes_from_its_hash() -> None:
    key = new_key()
    assert key.startswith("sbx_")
    assert looks_like_key(key)
    assert new_key() != key
    key_hash = hash_key(key)
    assert len(key_hash) == 64
    assert key not in key_hash
    key_id = key_id_for(key_hash)
    assert is_valid_key_id(key_id)
    assert key_id == key_id_for(hash_key(key))
    assert not looks_like_key("Bearer " + key)
    assert not looks_like_key("sbx_short")


def test_only_an_administrator_creates_or_revokes() -> None:
    key_hash = hash_key(new_key())
    state = KeyState(key_id=key_id_for(key_hash))
    with pytest.raises(Rejected) as refused:
        decide_key(state, create(key_hash, AGT), NOW)
    assert refused.value.code == "forbidden"
    (created,) = decide_key(state, create(key_hash), NOW)
    assert isinstance(created, KeyCreated)
    state = fold_key(state.key_id, [created])
    assert state.status == "active"
    assert state.actor == Actor(type="agt", id=state.key_id, project="alpha")
    assert decide_key(state, create(key_hash), NOW) == []  # the same command again
    with pytest.raises(Rejected) as again:
        decide_key(state, create(key_hash, command_id="c2"), NOW)
    assert again.value.code == "key_exists"
    revoke = RevokeKey(command_id="r1", actor=AGT, key_id=state.key_id)
    with pytest.raises(Rejected):
        decide_key(state, revoke, NOW)
    (revoked,) = decide_key(state, RevokeKey(command_id="r1", actor=ADM, key_id=state.key_id), NOW)
    assert isinstance(revoked, KeyRevoked)
    state = fold_key(state.key_id, [created, revoked])
    assert state.status == "revoked"
    assert state.actor is None
    with pytest.raises(Rejected) as twice:
        decide_key(state, RevokeKey(command_id="r2", actor=ADM, key_id=state.key_id), NOW)
    assert twice.value.code == "already_revoked"
    unknown = KeyState(key_id=key_id_for(hash_key(new_key())))
    with pytest.raises(Rejected) as missing:
        decide_key(unknown, RevokeKey(command_id="r3", actor=ADM, key_id=unknown.key_id), NOW)
    assert missing.value.code == "unknown_key"


def test_events_round_trip_through_the_codec() -> None:
    key_hash = hash_key(new_key())
    (created,) = decide_key(KeyState(key_id=key_id_for(key_hash)), create(key_hash), NOW)
    assert decode_event(encode_event(created)) == created


def _parse(verb: str, **fields: object) -> object:
    body = {"command_id": "k1", "actor": {"type": "adm", "id": "ops"}, **fields}
    return parse_command(f"sandboxer.cmd.{verb}", msgspec.json.encode(body))


def test_key_commands_are_parsed_strictly() -> None:
    key_hash = hash_key(new_key())
    good = _parse("create_key", project="alpha", key_type="atm", key_hash=key_hash)
    assert isinstance(good, CreateKey)
    assert (good.max_live, good.rate_per_second) == (10, 10)
    bad: list[tuple[str, dict[str, object], str]] = [
        ("create_key", {"project": "alpha", "key_type": "agt", "key_hash": new_key()}, "key_hash"),
        ("create_key", {"project": "Alpha", "key_type": "agt", "key_hash": key_hash}, "project"),
        ("create_key", {"project": "alpha", "key_type": "root", "key_hash": key_hash}, "key_type"),
        ("create_key", {"project": "a", "key_type": "agt", "key_hash": key_hash, "x": 1}, "x"),
        (
            "create_key",
            {"project": "a", "key_type": "agt", "key_hash": key_hash, "max_live": -1},
            "max_live",
        ),
        (
            "create_key",
            {"project": "a", "key_type": "agt", "key_hash": key_hash, "rate_per_second": 0},
            "rate_per_second",
        ),
        (
            "create_key",
            {"project": "a", "key_type": "agt", "key_hash": key_hash, "name": "a\nb"},
            "name",
        ),
        ("revoke_key", {"key_id": "../../x"}, "key_id"),
        ("revoke_key", {"key_id": key_id_for(key_hash), "reason": "x" * 501}, "reason"),
    ]
    for verb, fields, word in bad:
        with pytest.raises(InvalidCommand) as invalid:
            _parse(verb, **fields)
        assert word in invalid.value.reason, (fields, invalid.value.reason)


async def test_keys_change_through_the_deciding_loop() -> None:
    store = MemoryEventStore()
    key_hash = hash_key(new_key())
    loaded, changed = await apply_key(store, create(key_hash))
    assert changed
    assert loaded.state.status == "active"
    _, again = await apply_key(store, create(key_hash))
    assert not again
    revoke = RevokeKey(command_id="r1", actor=ADM, key_id=key_id_for(key_hash))
    loaded, _ = await apply_key(store, revoke)
    assert loaded.state.status == "revoked"
    assert (await store.load_key(key_id_for(key_hash))).state.status == "revoked"
    assert [type(e) for e in store.log] == [KeyCreated, KeyRevoked]
    assert all(e.event_id for e in store.log)
