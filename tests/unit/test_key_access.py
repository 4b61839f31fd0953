"""Who sees what (domain/key_access.py), the bearer header, and the
keys table of the view (no hash in any answer)."""

from __future__ import annotations

import aiosqlite
import pytest

from sandboxer.domain.key_access import (
    create_project,
    event_owner,
    may_see,
    owned_through,
    owner_of,
    scope_of,
)
from sandboxer.domain.key_state import hash_key, key_id_for, new_key
from sandboxer.errors import RequestError
from sandboxer.events.actor import Actor
from sandboxer.events.key_events import KeyCreated, KeyRevoked
from sandboxer.gateway.auth import bearer_key
from sandboxer.projections.key_rows import KEY_SCHEMA, KeyRows, answer_key_query, save_key_rows

ADM = {"type": "adm", "id": "ops", "project": "ops"}
ALPHA = {"type": "agt", "id": "k1", "project": "alpha"}
BETA = {"type": "atm", "id": "k2", "project": "beta"}


def test_administrators_see_everything_others_their_project() -> None:
    assert scope_of(ADM) is None
    assert scope_of(ALPHA) == "alpha"
    assert scope_of({"type": "agt", "id": "x", "project": None}) == "default"
    assert may_see(ADM, "beta")
    assert may_see(ADM, None)
    assert may_see(ALPHA, "alpha")
    assert not may_see(ALPHA, "beta")
    assert not may_see(ALPHA, None)  # hosts and keys
    sandbox = {"sandbox_id": "s1", "actor": ALPHA}
    assert owner_of(sandbox) == "alpha"
    assert owner_of({"actor": {"type": "adm", "id": "o"}}) == "default"


def test_a_confined_key_creates_in_its_own_project_only() -> None:
    assert create_project(ALPHA, None) == (None, None)
    assert create_project(ALPHA, "alpha") == ("alpha", None)
    project, refusal = create_project(ALPHA, "beta")
    assert project is None
    assert refusal is not None
    assert "alpha" in refusal
    assert create_project(ADM, "beta") == ("beta", None)


def test_which_project_an_event_belongs_to() -> None:
    ready = {"type": "ready", "sandbox_id": "s1", "actor": ADM}
    assert owned_through(ready) == ("sandbox", "s1")
    assert event_owner(ready, "alpha") == "alpha"  # its sandbox's, whoever acted
    assert event_owner(ready, None) is None
    created = {"type": "snapshot_created", "snapshot_id": "p1", "actor": ADM}
    assert owned_through(created) == ("snapshot", "p1")
    metered = {"type": "usage_metered", "project": "beta", "sandbox_id": "s1"}
    assert owned_through(metered) is None
    assert event_owner(metered) == "beta"
    rejected = {"type": "rejected", "sandbox_id": "s1", "actor": BETA}
    assert event_owner(rejected) == "beta"  # the rejected actor's, not the sandbox's
    assert event_owner({"type": "key_created", "key_id": "k"}) is None
    assert event_owner({"type": "host_inspected", "host": "h1"}) is None


def test_bearer_key_takes_our_keys_only() -> None:
    key = new_key()
    assert bearer_key(f"Bearer {key}") == key
    assert bearer_key(f"bearer   {key}") == key
    for value in (None, "", "Bearer", f"Basic {key}", f"Bearer {key} x", "Bearer sbx_short",
                  "Bearer " + "a" * 5000, f"Bearer {key}\x00"):  # fmt: skip
        assert bearer_key(value) is None, value


async def test_the_keys_table_answers_without_hashes() -> None:
    key = new_key()
    key_hash = hash_key(key)
    key_id = key_id_for(key_hash)
    adm = Actor(type="adm", id="ops")
    created = KeyCreated(
        key_id=key_id,
        command_id="c1",
        actor=adm,
        at="2026-12-02T10:00:00.000Z",
        key_hash=key_hash,
        project="alpha",
        key_type="agt",
        max_live=2,
        rate_per_second=5,
    )
    async with aiosqlite.connect(":memory:") as db:
        await db.executescript(KEY_SCHEMA)
        rows = KeyRows()
        await rows.apply(created, 1, None)
        await save_key_rows(db, rows)
        found = await answer_key_query("key.get", db, {"key_hash": key_hash})
        assert found["key"]["key_id"] == key_id
        assert found["key"]["status"] == "active"
        assert key_hash not in str(found)
        assert (await answer_key_query("key.get", db, {"key_hash": "0" * 64}))["key"] is None
        listed = await answer_key_query("key.list", db, {"project": "alpha"})
        assert [k["key_id"] for k in listed["keys"]] == [key_id]
        assert key_hash not in str(listed)
        revoked = KeyRevoked(key_id=key_id, command_id="r1", actor=adm, at=created.at)
        rows.take()  # what the flush does: the next save writes only the revocation
        await rows.apply(revoked, 2, None)
        await save_key_rows(db, rows)
        assert (await answer_key_query("key.list", db, {}))["keys"] == []
        everything = await answer_key_query("key.list", db, {"include_revoked": True})
        assert [k["status"] for k in everything["keys"]] == ["revoked"]
        for bad in ({"key_hash": key}, {"key_hash": None}):
            with pytest.raises(RequestError):
                await answer_key_query("key.get", db, bad)
        with pytest.raises(RequestError):
            await answer_key_query("key.list", db, {"project": "../x"})
