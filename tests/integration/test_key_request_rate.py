"""A key's requests on the bus (queries, execs, copies) are held to its rate, one bucket per
key in each serving process (bus/key_request_rate.py, workers/key_reach.py).

The roles run for real on nats-server, in this test's process as `sandboxer up` runs them,
with a real ext.local sandbox; only the clock the buckets are measured by is the test's,
so how many of a burst pass does not depend on how fast this machine answers. The key
publishes on its own subjects as its NATS identity does (test_key_identities runs that
under auth). Before, every request of a burst was answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client

from sandboxer import service as service_module
from sandboxer import subjects
from sandboxer.bus.ask import RATE_PATIENCE
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.key_request_rate import KeyRequestRates
from sandboxer.bus.key_users import key_inbox_prefix
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.client import SandboxerClient
from sandboxer.commands.types import CreateKey
from sandboxer.domain.key_state import hash_key, key_id_for, new_key
from sandboxer.domain.rate_limit import REFILL_SECONDS
from sandboxer.errors import RateLimited, SandboxerError
from sandboxer.events.types import Actor
from sandboxer.ids import new_command_id
from sandboxer.workers.deciding import apply_key
from tests.integration.conftest import Service, reap_local, start_service

pytestmark = pytest.mark.integration

PROJECT = "alpha"
RATE = 5
WAIT = 1 / RATE
"""What an emptied bucket says to wait: a token comes in 1/rate s."""


class Clock:
    """The monotonic clock of the process's request buckets, moved by the test alone."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def refill(self) -> None:
        self.now += REFILL_SECONDS


class Keyed:
    """The roles, a ready sandbox of the key's project, the key's own client, and the
    client identity acting for the key (as the gateway does)."""

    def __init__(
        self, running: Service, clock: Clock, key: SandboxerClient, sandbox_id: str
    ) -> None:
        self.running = running
        self.clock = clock
        self.key = key
        self.sandbox_id = sandbox_id


@pytest.fixture
async def keyed(
    nats_server: NatsServerProcess, home: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Keyed]:
    clock = Clock()
    # The one bucket run_roles makes for the process, on the test's clock.
    monkeypatch.setattr(service_module, "KeyRequestRates", lambda: KeyRequestRates(clock))
    running = await start_service(
        home, nats_server.url, roles=["control", "projector", "ext.local"]
    )
    key_nc: Client | None = None
    try:
        store = JetStreamEventStore(running.client.nc, running.client.js)
        key_hash = hash_key(new_key())
        key_id = key_id_for(key_hash)
        created = CreateKey(
            command_id=new_command_id(),
            actor=Actor(type="adm", id="ops"),
            project=PROJECT,
            key_type="atm",
            key_hash=key_hash,
            rate_per_second=RATE,
        )
        await apply_key(store, created)
        own = msgspec.to_builtins(Actor(type="atm", id=key_id, project=PROJECT))
        # Made as the gateway makes a key's: its outcome is not polled with the key's rate.
        made = await SandboxerClient(running.client.nc, actor=own).create(
            "profile.local", timeout=60
        )
        # The key's answers come to its own inbox only (bus/replies.py).
        key_nc = await nats.connect(nats_server.url, inbox_prefix=key_inbox_prefix(key_id))
        key = SandboxerClient(key_nc, actor=own, key_id=key_id)
        key.rate_patience = 0  # a refusal raised at once; the default waits (tested below)
        yield Keyed(running, clock, key, made["sandbox_id"])
    finally:
        if key_nc is not None:
            await key_nc.close()
        await running.client.close()
        await running.shutdown()
        await reap_local(home)


async def _burst(*asks: Any) -> tuple[list[Any], list[RateLimited]]:
    """The answers of ``asks`` made at once: those given, and those refused for the rate."""
    outcomes = await asyncio.gather(*asks, return_exceptions=True)
    limited = [o for o in outcomes if isinstance(o, RateLimited)]
    others = [o for o in outcomes if isinstance(o, BaseException) and o not in limited]
    assert not others, others
    return [o for o in outcomes if not isinstance(o, BaseException)], limited


async def _exec(key: SandboxerClient, sandbox_id: str) -> int:
    return await key.exec(sandbox_id, ["true"], None, timeout=30)


async def _get(key: SandboxerClient, sandbox_id: str) -> Any:
    """The sandbox's row as the key asks it (a refusal for its rate raised at once: the
    fixture's client has no patience)."""
    return (await key.query(subjects.QUERY_GET, {"sandbox_id": sandbox_id}))["sandbox"]


async def test_a_keys_query_burst_past_its_rate_is_refused_saying_when(keyed: Keyed) -> None:
    key, sandbox_id = keyed.key, keyed.sandbox_id
    answered, limited = await _burst(*(_get(key, sandbox_id) for _ in range(2 * RATE)))
    assert len(answered) == RATE, (answered, limited)
    assert all(row is not None and row["sandbox_id"] == sandbox_id for row in answered)
    assert len(limited) == RATE
    for refusal in limited:  # the error answer names the limit and says when
        assert refusal.code == "rate_limited"
        assert refusal.retry_after == pytest.approx(WAIT, abs=0.001)
        assert f"{RATE} requests a second" in refusal.message

    # The answer on the wire: the query's error shape, with the code and the wait.
    reply = await keyed.key.nc.request(
        subjects.stamped(subjects.QUERY_GET, keyed.key.key_id or ""),
        msgspec.json.encode({"sandbox_id": sandbox_id}),
        timeout=5,
    )
    answer = msgspec.json.decode(reply.data)
    assert (answer["ok"], answer["code"]) == (False, "rate_limited"), answer
    assert answer["retry_after"] == pytest.approx(WAIT, abs=0.001)

    # The client identity is not held to the key's rate (its requests are the gateway's).
    assert await keyed.running.client.get(sandbox_id) is not None
    # After the wait it was told, one more; not two.
    keyed.clock.now += WAIT
    assert await _get(key, sandbox_id) is not None
    with pytest.raises(RateLimited):
        await _get(key, sandbox_id)
    # route.explain, answered by the control worker of this process, shares the bucket.
    explain = {"profile": "profile.local"}
    with pytest.raises(RateLimited):
        await key.query(subjects.QUERY_ROUTE_EXPLAIN, explain, 10.0)
    # By default the client asks again when a refusal says: its read waits for a token.
    key.rate_patience = RATE_PATIENCE
    waiting = asyncio.create_task(key.get(sandbox_id))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    keyed.clock.now += WAIT
    async with asyncio.timeout(5):
        assert (await waiting) is not None
    keyed.clock.refill()
    assert (await key.route_explain("profile.local"))["decision"]["chosen"]


async def test_a_keys_exec_burst_past_its_rate_is_refused_and_nothing_runs(keyed: Keyed) -> None:
    key, sandbox_id = keyed.key, keyed.sandbox_id
    answered, limited = await _burst(*(_exec(key, sandbox_id) for _ in range(2 * RATE)))
    assert answered == [0] * RATE, (answered, limited)
    assert len(limited) == RATE
    for refusal in limited:  # the exit's code, raised as RateLimited with its wait
        assert refusal.code == "rate_limited"
        assert refusal.retry_after == pytest.approx(WAIT, abs=0.001)
    # The client identity's exec is not held to it.
    assert await keyed.running.client.exec(sandbox_id, ["true"], None, timeout=30) == 0

    # One bucket per key in the process: the key's queries, execs and copies share it.
    keyed.clock.refill()
    answered, limited = await _burst(*(_get(key, sandbox_id) for _ in range(RATE)))
    assert (len(answered), limited) == (RATE, [])
    with pytest.raises(RateLimited):
        await _exec(key, sandbox_id)
    with pytest.raises(RateLimited) as copy_refused:
        await key.copy_out(sandbox_id, ".", keyed.running.settings.home / "out")
    assert copy_refused.value.retry_after == pytest.approx(WAIT, abs=0.001)
    keyed.clock.now += WAIT
    assert await _exec(key, sandbox_id) == 0


async def _paced(keyed: Keyed, ask: Any) -> Any:
    """``ask`` made by the key with its bucket empty, as a client makes it by default: it
    waits, refused, until the bucket has a token again, and is then answered."""
    keyed.clock.refill()
    answered, _ = await _burst(*(_get(keyed.key, keyed.sandbox_id) for _ in range(RATE)))
    assert len(answered) == RATE
    keyed.key.rate_patience = RATE_PATIENCE
    try:
        waiting = asyncio.create_task(ask)
        await asyncio.sleep(0.5)  # refused, and asked again, more than once meanwhile
        assert not waiting.done()
        keyed.clock.now += WAIT
        async with asyncio.timeout(10):
            return await waiting
    finally:
        keyed.key.rate_patience = 0


async def test_a_keys_exec_and_copies_wait_out_its_rate_by_default(
    keyed: Keyed, tmp_path: Path
) -> None:
    """Refused before anything is done for them, an exec and copies are sent again when the
    refusal says (bus/ask.py paced): a client pacing itself to its rate. Before, a key's
    second copy within a tenth of a second failed with RateLimited."""
    key, sandbox_id = keyed.key, keyed.sandbox_id
    source = tmp_path / "in.txt"
    source.write_bytes(b"paced\n")
    copied_in = await _paced(keyed, key.copy_in(sandbox_id, source, "in.txt"))
    assert copied_in.path == "in.txt"
    seen: list[bytes] = []

    async def output(_stream: str, data: bytes) -> None:
        seen.append(data)

    ran = key.exec(sandbox_id, ["cat", "in.txt"], output, timeout=30)
    assert await _paced(keyed, ran) == 0
    assert b"".join(seen) == b"paced\n"
    back = tmp_path / "back.txt"
    await _paced(keyed, key.copy_out(sandbox_id, "in.txt", back))
    assert back.read_bytes() == b"paced\n"
    # Past its patience the refusal is raised, with its wait.
    keyed.key.rate_patience = WAIT / 2
    with pytest.raises(RateLimited) as refused:
        await _exec(key, sandbox_id)
    assert refused.value.retry_after == pytest.approx(WAIT, abs=0.001)


async def test_only_a_refusal_before_anything_ran_is_sent_again(
    keyed: Keyed, tmp_path: Path
) -> None:
    """An exec whose output callback raises RateLimited (a caller's own limit, say) once its
    command has run is not sent again: only a first answer refusing the request for the
    key's rate is (bus/ask.py RateRefusal). Before, any RateLimited with a wait sent the exec
    again, and its command ran twice. A copy out refused (for the rate, or a missing path)
    leaves its destination as it was; before, the destination was emptied."""
    key, sandbox_id = keyed.key, keyed.sandbox_id
    keyed.clock.refill()

    async def output(_stream: str, _data: bytes) -> None:
        raise RateLimited("the caller's own limit", retry_after=0.01)

    key.rate_patience = RATE_PATIENCE
    try:
        with pytest.raises(RateLimited, match="caller's own"):
            await key.exec(sandbox_id, ["sh", "-c", "echo ran >> runs.txt; cat runs.txt"], output)
    finally:
        key.rate_patience = 0
    runs = tmp_path / "runs.txt"
    await key.copy_out(sandbox_id, "runs.txt", runs)
    assert runs.read_bytes() == b"ran\n"

    kept = tmp_path / "kept.txt"
    kept.write_bytes(b"mine\n")
    keyed.clock.refill()
    answered, _ = await _burst(*(_get(key, sandbox_id) for _ in range(RATE)))
    assert len(answered) == RATE
    with pytest.raises(RateLimited):
        await key.get_files(sandbox_id, "runs.txt", kept)
    assert kept.read_bytes() == b"mine\n"
    keyed.clock.refill()
    with pytest.raises(SandboxerError, match="does not exist"):
        await key.get_files(sandbox_id, "missing.txt", kept)
    assert kept.read_bytes() == b"mine\n"
    await key.get_files(sandbox_id, "runs.txt", kept)
    assert kept.read_bytes() == b"ran\n"


async def test_a_copy_out_writes_through_a_symlink_it_is_given(
    keyed: Keyed, tmp_path: Path
) -> None:
    """A download named by a symlink lands in the link's target, the link kept, as a plain
    write would; only a regular file (or none) is replaced by the rename of a whole copy."""
    key, sandbox_id = keyed.key, keyed.sandbox_id
    keyed.clock.refill()
    source = tmp_path / "in.txt"
    source.write_bytes(b"through\n")
    await key.copy_in(sandbox_id, source, "through.txt")
    target = tmp_path / "target.txt"
    target.write_bytes(b"old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    await key.get_files(sandbox_id, "through.txt", link)
    assert link.is_symlink()
    assert target.read_bytes() == b"through\n"


async def test_a_refusal_reads_nothing_of_the_sandbox_it_named(
    keyed: Keyed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its rate, a key's exec is answered without the worker reading the sandbox again
    (it looked at it within the last second), nor the key."""
    key, sandbox_id = keyed.key, keyed.sandbox_id
    for _ in range(RATE):
        assert await _exec(key, sandbox_id) == 0
    # The exec's touch made it active: the control worker read it for that, and reads it
    # no more (the next touches are skipped within the touch interval).
    while (await keyed.running.client.get(sandbox_id) or {}).get("status") != "active":
        await asyncio.sleep(0.05)
    reads: list[str] = []
    load, load_key = JetStreamEventStore.load, JetStreamEventStore.load_key

    async def counted_load(self: JetStreamEventStore, sandbox_id: str) -> Any:
        reads.append(sandbox_id)
        return await load(self, sandbox_id)

    async def counted_load_key(self: JetStreamEventStore, key_id: str) -> Any:
        reads.append(key_id)
        return await load_key(self, key_id)

    monkeypatch.setattr(JetStreamEventStore, "load", counted_load)
    monkeypatch.setattr(JetStreamEventStore, "load_key", counted_load_key)
    for _ in range(3):
        with pytest.raises(RateLimited):
            await _exec(key, sandbox_id)
    assert reads == []
