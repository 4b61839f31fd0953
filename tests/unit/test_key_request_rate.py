"""A key's requests on the bus within its rate (bus/key_request_rate.py), and which worker
counts and answers them (workers/key_reach.py): only the one whose sandbox it is, each
request once, and past the rate without reading the sandbox or the key again."""

from __future__ import annotations

from typing import Any

import pytest

from sandboxer.bus.key_request_rate import KeyRequestRates, logged_keys
from sandboxer.bus.memory_store import MemoryEventStore
from sandboxer.commands.types import CreateKey, RevokeKey
from sandboxer.domain.key_state import KeyState, hash_key, key_id_for, new_key
from sandboxer.domain.rate_limit import REFILL_SECONDS, RateLimiter
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.errors import RateLimited
from sandboxer.events.actor import Actor
from sandboxer.workers.deciding import apply_key
from sandboxer.workers.key_reach import OWNER_MEMORY, KeyReach

ADM = Actor(type="adm", id="ops")
RATE = 3
SANDBOX = "sbxreach0001"


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


async def make_key(store: MemoryEventStore, project: str = "alpha") -> str:
    key_hash = hash_key(new_key())
    command = CreateKey(
        command_id=f"c-{key_hash[:8]}",
        actor=ADM,
        project=project,
        key_type="agt",
        key_hash=key_hash,
        rate_per_second=RATE,
    )
    await apply_key(store, command)
    return key_id_for(key_hash)


class Reads:
    """A key loader that counts its reads."""

    def __init__(self, store: MemoryEventStore) -> None:
        self.load = logged_keys(store)
        self.count = 0

    async def __call__(self, key_id: str) -> KeyState | None:
        self.count += 1
        return await self.load(key_id)


def test_a_peek_takes_nothing() -> None:
    limiter = RateLimiter()
    assert limiter.wait("k", 2, 0.0) is None
    assert limiter.take("k", 2, 0.0) is None
    assert limiter.take("k", 2, 0.0) is None
    assert limiter.wait("k", 2, 0.0) == pytest.approx(0.5)
    assert limiter.wait("k", 2, 0.25) == pytest.approx(0.25)
    assert limiter.take("k", 2, 0.5) is None  # the peeks took nothing


async def test_a_keys_requests_past_its_rate_are_refused_and_its_rate_read_once() -> None:
    store, clock = MemoryEventStore(), Clock()
    rates = KeyRequestRates(clock)
    key_id = await make_key(store)
    reads = Reads(store)
    for _ in range(RATE):
        await rates.hold(key_id, reads)
    with pytest.raises(RateLimited) as limited:
        await rates.hold(key_id, reads)
    assert limited.value.code == "rate_limited"
    assert limited.value.retry_after == pytest.approx(1 / RATE, abs=0.001)
    assert f"key {key_id} may make {RATE} requests a second" in limited.value.message
    assert reads.count == 1  # a key's rate never changes: read on its first request only
    assert await rates.refusal(key_id, reads) is not None
    clock.now += REFILL_SECONDS
    assert await rates.refusal(key_id, reads) is None
    # A revoked key is not held (the service refuses it as revoked); nor a made-up id.
    other = await make_key(store)
    await apply_key(store, RevokeKey(command_id="r1", actor=ADM, key_id=other))
    for _ in range(2 * RATE):
        await rates.hold(other, reads)
        await rates.hold("not-a-key", reads)


class Service:
    """One backend's service: the sandboxes it holds (id -> project), and how many looks it
    took at a sandbox."""

    def __init__(self, store: MemoryEventStore, rates: KeyRequestRates, **holds: str) -> None:
        self.holds = holds
        self.looks = 0
        self.reach = KeyReach(store, rates, self.owner)
        self.refused: list[RateLimited] = []

    async def owner(self, sandbox_id: str) -> SandboxState | None:
        self.looks += 1
        if sandbox_id not in self.holds:
            return None
        actor = Actor(type="agt", id="someone", project=self.holds[sandbox_id])
        return SandboxState(sandbox_id=sandbox_id, status="ready", actor=actor)

    async def refuse(self, _reply: str, limited: RateLimited) -> None:
        self.refused.append(limited)

    async def ask(self, key_id: str | None, sandbox_id: str = SANDBOX) -> Any:
        msg = Msg(f"sandboxer.exec.{sandbox_id}" + (f".{key_id}" if key_id else ""), key_id)
        return await self.reach.reach(msg, self.refuse)  # type: ignore[arg-type]


class Msg:
    def __init__(self, subject: str, key_id: str | None) -> None:
        self.subject = subject
        self.reply = f"_INBOX.{key_id}.r1" if key_id else "_INBOX.r1"


async def test_only_the_sandboxs_service_counts_and_answers_a_keys_request() -> None:
    store, clock = MemoryEventStore(), Clock()
    rates = KeyRequestRates(clock)  # one per process: both services share it
    key_id = await make_key(store)
    mine, other = Service(store, rates, **{SANDBOX: "alpha"}), Service(store, rates)
    for _ in range(RATE):  # each request counted once, though two services heard it
        assert await other.ask(key_id) is None
        reached = await mine.ask(key_id)
        assert reached is not None
        assert reached.actor is not None
        assert reached.actor["id"] == key_id
    assert await other.ask(key_id) is None
    assert await mine.ask(key_id) is None
    assert (other.refused, len(mine.refused)) == ([], 1)  # the one that would answer says
    assert mine.refused[0].retry_after == pytest.approx(1 / RATE, abs=0.001)
    # Past the rate, neither looks at the sandbox again: both looked within the second.
    looks = (mine.looks, other.looks)
    for _ in range(10):
        assert await other.ask(key_id) is None
        assert await mine.ask(key_id) is None
    assert (mine.looks, other.looks) == looks
    assert len(mine.refused) == 11
    # A token later, the request is looked at (the state must be fresh to run it).
    clock.now += 1 / RATE
    assert await mine.ask(key_id) is not None
    assert mine.looks == looks[0] + 1
    # A sandbox last looked at longer ago is looked at again before it is refused.
    mine.holds["sbxreach0002"] = "alpha"
    assert await mine.ask(key_id, "sbxreach0002") is None  # past the rate: looked at
    assert mine.looks == looks[0] + 2
    clock.now += OWNER_MEMORY * 1.5  # its bucket refills meanwhile: empty it again
    for _ in range(RATE):
        assert await mine.ask(key_id) is not None
    assert await mine.ask(key_id, "sbxreach0002") is None
    assert mine.looks == looks[0] + 2 + RATE + 1
    assert len(mine.refused) == 13
    # The client identity is not held, whatever the key did.
    for _ in range(2 * RATE):
        assert await mine.ask(None) is not None


async def test_what_a_key_may_not_reach_is_neither_counted_nor_refused() -> None:
    """Counted, or refused past the rate, a request about another project's sandbox would
    tell the key it exists: it stays unanswered either way, as for no sandbox at all."""
    store = MemoryEventStore()
    rates = KeyRequestRates(Clock())
    beta_key = await make_key(store, project="beta")
    service = Service(store, rates, **{SANDBOX: "alpha", "sbxbetabox01": "beta"})
    for _ in range(3 * RATE):
        assert await service.ask(beta_key) is None
        assert await service.ask(beta_key, "sbxnothere01") is None
    for _ in range(RATE):  # none of those took a token
        assert await service.ask(beta_key, "sbxbetabox01") is not None
    assert await service.ask(beta_key, "sbxbetabox01") is None
    assert len(service.refused) == 1
    for _ in range(3):  # past its rate: still silent about alpha's, looked at or not
        assert await service.ask(beta_key) is None
        assert await service.ask(beta_key, "sbxnothere02") is None
    assert len(service.refused) == 1
