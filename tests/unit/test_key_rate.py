"""Which of a key's commands the control worker holds to its rate (workers/key_rate.py):
those its own identity published on the bus, once each, while the key is active."""

from __future__ import annotations

import pytest

from sandboxer import subjects
from sandboxer.bus.memory_store import MemoryEventStore
from sandboxer.commands.types import CreateKey, RevokeKey
from sandboxer.domain.key_state import hash_key, key_id_for, new_key
from sandboxer.domain.rate_limit import REFILL_SECONDS
from sandboxer.errors import Rejected
from sandboxer.events.actor import Actor
from sandboxer.workers.deciding import apply_key
from sandboxer.workers.key_rate import KeyRates

ADM = Actor(type="adm", id="ops")
RATE = 3


async def key(store: MemoryEventStore) -> str:
    key_hash = hash_key(new_key())
    command = CreateKey(
        command_id=f"c-{key_hash[:8]}",
        actor=ADM,
        project="alpha",
        key_type="agt",
        key_hash=key_hash,
        rate_per_second=RATE,
    )
    await apply_key(store, command)
    return key_id_for(key_hash)


async def test_a_keys_own_commands_past_its_rate_are_refused_with_the_wait() -> None:
    store = MemoryEventStore()
    now = [50.0]
    rates = KeyRates(store, clock=lambda: now[0])
    key_id, other = await key(store), await key(store)
    own = subjects.stamped(subjects.command_subject("destroy"), key_id)
    for _ in range(RATE):
        await rates.hold(own, 1)
    with pytest.raises(Rejected) as limited:
        await rates.hold(subjects.stamped(subjects.command_subject("touch"), key_id), 1)
    wait = limited.value.retry_after
    assert limited.value.code == "rate_limited"
    assert wait is not None
    assert wait == pytest.approx(1 / RATE, abs=0.001)
    assert wait >= 1 / RATE  # rounded up: coming back then is in time
    assert f"key {key_id} may send {RATE} commands a second" in limited.value.reason
    await rates.hold(subjects.stamped(subjects.command_subject("destroy"), other), 1)
    now[0] += wait
    await rates.hold(own, 1)
    with pytest.raises(Rejected):
        await rates.hold(own, 1)
    now[0] += REFILL_SECONDS
    for _ in range(RATE):
        await rates.hold(own, 1)


async def test_what_is_not_counted() -> None:
    store = MemoryEventStore()
    rates = KeyRates(store, clock=lambda: 0.0)
    key_id = await key(store)
    own = subjects.stamped(subjects.command_subject("destroy"), key_id)
    for _ in range(RATE):
        await rates.hold(own, 1)
    # Delivered again: counted the first time, and perhaps decided since.
    await rates.hold(own, 2)
    # Forwarded by the gateway as the key's actor: counted there, as a request.
    await rates.hold(subjects.command_subject("destroy"), 1)
    # Not a key's subject, or a key's subject with no key behind it: nothing to hold.
    await rates.hold("sandboxer.cmd.destroy.x.y", 1)
    await rates.hold(subjects.stamped(subjects.command_subject("destroy"), "key" + "a" * 17), 1)
    # A revoked key's commands are refused as revoked (bus_identity.py), not as too many.
    await apply_key(store, RevokeKey(command_id="r1", actor=ADM, key_id=key_id))
    await rates.hold(own, 1)
