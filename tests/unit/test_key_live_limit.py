"""An API key's live-sandbox limit: the rule (domain/key_access.py), the count the control
worker takes it from (workers/key_limit.py over RouteLookup), and the view's count."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import msgspec
import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js import JetStreamContext

from sandboxer.bus.memory_store import MemoryEventStore
from sandboxer.commands.types import (
    Command,
    CreateKey,
    CreateSandbox,
    RecreateSandbox,
    RestoreSnapshot,
)
from sandboxer.config.catalog import Catalog
from sandboxer.config.settings import Settings
from sandboxer.domain.account_state import project_of
from sandboxer.domain.admission import admit_create
from sandboxer.domain.key_access import KEY_LIVE_STATUSES, live_limit_refusal
from sandboxer.domain.key_state import KeyState, hash_key, key_id_for, new_key
from sandboxer.domain.route_signals import RouteSignals
from sandboxer.domain.sandbox_decide import AdmittedCreate
from sandboxer.errors import Rejected, StreamUnavailable
from sandboxer.events.types import (
    Actor,
    SandboxDestroyed,
    SandboxDestroying,
    SandboxEvent,
    SandboxFailed,
    SandboxRequested,
    SandboxRouted,
)
from sandboxer.projections.folding import Batch
from sandboxer.projections.sandbox_view import SandboxView
from sandboxer.workers import route_lookup
from sandboxer.workers.deciding import apply_key
from sandboxer.workers.key_limit import LiveLimit, check_live_limit, limiting_key
from sandboxer.workers.route_lookup import RouteLookup
from tests.unit.test_routing import NOW, decl, profile

KEY_ID = "keyabcdefghijklmnopq"
ALPHA = Actor(type="agt", id=KEY_ID, project="alpha")
KEY = KeyState(key_id=KEY_ID, status="active", project="alpha", key_type="agt", max_live=2)
ENABLED = {"ext.local": decl("ext.local", kind="self-hosted")}
LOCAL = profile("prefer-self-hosted", ["ext.local"])


def test_a_create_past_the_keys_limit_is_refused_with_the_fix() -> None:
    assert live_limit_refusal(KEY_ID, 2, "alpha", 1) is None
    refusal = live_limit_refusal(KEY_ID, 2, "alpha", 2)
    assert refusal is not None
    code, reason = refusal
    assert code == "live_limit"
    for part in (
        "project alpha",
        "has 2 live sandboxes",
        f"key {KEY_ID}",
        "allows 2",
        "--max-live",
    ):
        assert part in reason, reason
    assert live_limit_refusal(KEY_ID, 0, "alpha", 0) is not None  # 0 refuses every create


def test_a_limit_that_cannot_be_counted_refuses() -> None:
    refusal = live_limit_refusal(KEY_ID, 5, "alpha", None)
    assert refusal is not None
    assert refusal[0] == "live_count_unavailable"  # the service is degraded: not a full project
    assert "could not be counted" in refusal[1]


def test_every_sandbox_neither_destroyed_nor_failed_counts() -> None:
    assert {"paused", "expired", "destroying", "rerouting", "requested"} <= KEY_LIVE_STATUSES
    assert not {"new", "destroyed", "failed"} & KEY_LIVE_STATUSES


def test_a_projects_count_travels_in_the_signals() -> None:
    signals = RouteSignals(live_by_project={"alpha": 3})
    assert RouteSignals.from_dict(signals.to_dict()).live_by_project == {"alpha": 3}
    assert RouteSignals.from_dict({}).live_by_project == {}  # an older view's answer


@dataclass
class Reply:
    data: bytes


class View:
    """Answers route signals as the projector would: ``live`` sandboxes in the asked
    project, ``caught_up`` of them once it has folded up to ``min_seq`` (at position 1, or
    at ``min_seq`` when it ``follows``)."""

    def __init__(self, live: int | None, caught_up: int | None = None, follows: bool = False):
        self.live = live
        self.caught_up = caught_up
        self.follows = follows
        self.asked: list[dict[str, Any]] = []

    async def request(self, subject: str, payload: bytes, timeout: float) -> Reply:
        del subject, timeout
        request = msgspec.json.decode(payload)
        self.asked.append(request)
        if self.live is None:
            raise NoRespondersError
        live = self.caught_up if request.get("min_seq") and self.caught_up is not None else None
        count = {request["project"]: self.live if live is None else live}
        signals = RouteSignals(live_by_project=count if "project" in request else {})
        position = request.get("min_seq", 1) if self.follows else 1
        answer = {"ok": True, "position": position, "signals": signals.to_dict()}
        return Reply(msgspec.json.encode(answer))


class Log:
    """The events stream's info: its last sequence."""

    async def stream_info(self, name: str) -> Any:
        del name
        return SimpleNamespace(state=SimpleNamespace(last_seq=42))


def lookup(view: View, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RouteLookup:
    monkeypatch.setenv("SANDBOXER_HOME", str(tmp_path))
    return RouteLookup(cast(Client, view), Catalog.load(tmp_path), Settings.from_env())


def create(n: int, actor: Actor = ALPHA) -> CreateSandbox:
    return CreateSandbox(command_id=f"c{n}", actor=actor, profile=LOCAL.id)


async def admitted_by(routing: RouteLookup, command: CreateSandbox, seq: int = 10) -> None:
    """What the control worker does with a key's create: count, route, hold, and once
    appended (at ``seq``, past the view's position) say so."""
    await counted(routing, command)
    routing.appended(admitted(command).sandbox_id, seq)


async def counted(routing: RouteLookup, command: CreateSandbox) -> None:
    """A key's create counted, routed and held, not yet appended."""
    log = cast(JetStreamContext, Log())
    limit = LiveLimit(KEY, project_of(command.actor))
    signals = await check_live_limit(routing, log, limit, ENABLED)
    routing.hold(admit_create(command, LOCAL, ENABLED, signals, NOW))


def admitted(command: CreateSandbox) -> AdmittedCreate:
    return admit_create(command, LOCAL, ENABLED, None, NOW)


async def test_a_keys_burst_is_counted_before_the_view_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = View(live=0)
    routing = lookup(view, tmp_path, monkeypatch)
    await admitted_by(routing, create(1))
    await admitted_by(routing, create(2))  # the first is held: 1 of 2
    with pytest.raises(Rejected) as refused:
        await admitted_by(routing, create(3))
    assert refused.value.code == "live_limit"
    assert "project alpha has 2 live sandboxes" in refused.value.reason
    assert view.asked[0] == {"project": "alpha"}
    # Another project's held creates are not alpha's, and are not told to anyone asking.
    routing.hold(admitted(create(4, Actor(type="agt", id="x", project="beta"))))
    assert (await routing.signals(ENABLED, "alpha")).live_by_project == {"alpha": 2}
    assert (await routing.signals(ENABLED)).live_by_project == {}
    routing.release_command(create(2))  # rejected after it was routed: holds no place
    await admitted_by(routing, create(5))


async def test_a_create_being_appended_is_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The view counts a create from its ``requested``, stored before its ``routed``: while
    the worker waits for that append, the create is the view's and still held. A count at the
    limit waits for it to be appended (then forgotten by a view caught up past it), so the
    create before it is counted once: 1 of 2 here, not 2."""
    view = View(live=0, follows=True)
    routing = lookup(view, tmp_path, monkeypatch)
    first = create(1)
    await counted(routing, first)  # held; its requested in the log, its routed not yet acked
    view.live = view.caught_up = 1  # which the view has folded already
    second = asyncio.create_task(admitted_by(routing, create(2)))
    await asyncio.sleep(0.05)
    assert not second.done()  # waits for the first's append
    routing.appended(admitted(first).sandbox_id, 7)
    async with asyncio.timeout(1):
        await second  # not refused: 1 live of 2
    assert view.asked[-1] == {"project": "alpha", "min_seq": 42}
    view.live = view.caught_up = 2  # the second, folded
    with pytest.raises(Rejected, match="project alpha has 2 live"):
        await admitted_by(routing, create(3))


async def test_the_wait_for_appends_ends_under_a_stream_of_the_projects_creates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create at the limit waits for the project's holds being appended when it came, and
    for UNAPPENDED_SECONDS at most: creates held after it (an admin's, another key's under
    its limit, one every 20 ms here, never appended) neither extend the wait nor are waited
    for. Before, each new hold pushed the deadline out and the wait never ended."""
    monkeypatch.setattr(route_lookup, "UNAPPENDED_SECONDS", 0.3)
    routing = lookup(View(live=0), tmp_path, monkeypatch)

    async def stream(start: int) -> None:
        for n in itertools.count(start):
            routing.hold(admitted(create(n)))
            await asyncio.sleep(0.02)

    routing.hold(admitted(create(1)))  # never appended: waited for its 0.3 s, no more
    streaming = asyncio.create_task(stream(1000))
    try:
        began = asyncio.get_running_loop().time()
        async with asyncio.timeout(2):
            await routing.settled("alpha")
        assert asyncio.get_running_loop().time() - began < 0.6
    finally:
        streaming.cancel()
    await asyncio.sleep(0.35)  # the stream's holds forgotten

    # The hold there on entry appended ends the wait at once: the stream's since are not waited.
    routing.hold(admitted(create(2)))
    waiting = asyncio.create_task(routing.settled("alpha"))
    streaming = asyncio.create_task(stream(2000))
    try:
        await asyncio.sleep(0.05)
        assert not waiting.done()
        routing.appended(admitted(create(2)).sandbox_id, 7)
        async with asyncio.timeout(0.1):
            await waiting
    finally:
        streaming.cancel()


async def test_a_count_at_the_limit_is_asked_again_of_the_view_caught_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A destroy the view has not folded yet does not refuse the create after it."""
    view = View(live=2, caught_up=1)
    await admitted_by(lookup(view, tmp_path, monkeypatch), create(1))
    assert view.asked == [{"project": "alpha"}, {"project": "alpha", "min_seq": 42}]


async def test_a_keys_create_waits_for_a_silent_view_and_is_refused_by_one_that_cannot_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A view that does not answer (a restart) is waited out as the bus is: the command comes
    back (a key's create rides out a restart). One that answers without counting (older than
    the control worker) refuses: the limit cannot be checked."""
    with pytest.raises(StreamUnavailable, match="cannot be counted yet"):
        await admitted_by(lookup(View(live=None), tmp_path, monkeypatch), create(1))

    class OldView(View):
        async def request(self, subject: str, payload: bytes, timeout: float) -> Reply:
            del subject, payload, timeout
            signals = RouteSignals().to_dict()
            del signals["live_by_project"]
            return Reply(msgspec.json.encode({"ok": True, "position": 1, "signals": signals}))

    with pytest.raises(Rejected) as refused:
        await admitted_by(lookup(OldView(live=0), tmp_path, monkeypatch), create(1))
    assert refused.value.code == "live_count_unavailable"
    assert "could not be counted" in refused.value.reason


def _sandbox(n: int, project: str, *, end: str | None = None) -> list[SandboxEvent]:
    head = {
        "sandbox_id": f"sbx{n:04d}",
        "command_id": f"c{n}",
        "actor": Actor(type="agt", id=KEY_ID, project=project),
        "at": NOW,
    }
    events: list[SandboxEvent] = [
        SandboxRequested(**head, profile="profile.local", profile_version=1),
        SandboxRouted(**head, extension="ext.local", reason="test"),
    ]
    if end == "failed":
        events.append(SandboxFailed(**head, reason="x", stage="provision", retryable=False))
    elif end == "destroyed":
        events += [SandboxDestroying(**head), SandboxDestroyed(**head)]
    elif end == "destroying":
        events.append(SandboxDestroying(**head))
    return events


async def test_the_view_counts_the_asked_projects_live_sandboxes(tmp_path: Path) -> None:
    events = (
        _sandbox(1, "alpha")
        + _sandbox(2, "alpha", end="destroying")
        + _sandbox(3, "alpha", end="destroyed")
        + _sandbox(4, "alpha", end="failed")
        + _sandbox(5, "beta")
    )
    view = await SandboxView.open(tmp_path / "v.db")
    try:
        batch = Batch(view)
        for seq, event in enumerate(events, start=1):
            await batch.apply(seq, msgspec.json.encode(event))
        await batch.flush()
        counted, _ = await view.route_signals(NOW, "alpha")
        plain, _ = await view.route_signals(NOW)
    finally:
        await view.close()
    assert counted.live_by_project == {"alpha": 2}
    assert plain.live_by_project == {}


async def test_what_a_keys_limit_holds() -> None:
    """Held: a create, a restore, and a recreate of a sandbox that counts no more (a failed
    one: recreating it adds one). Not held: a command sent again, whose sandbox was admitted
    when first decided (one crashed between requested and routed would be refused by its own
    sandbox, left requested for good), a recreate of one that counts already, another actor."""
    store = MemoryEventStore()
    key_hash = hash_key(new_key())
    key_id = key_id_for(key_hash)
    await apply_key(
        store,
        CreateKey(
            command_id="k1",
            actor=Actor(type="adm", id="ops"),
            project="alpha",
            key_type="agt",
            key_hash=key_hash,
        ),
    )
    own = Actor(type="agt", id=key_id, project="alpha")
    subject = f"sandboxer.cmd.create.{key_id}"

    async def held(command: Command) -> str | None:
        limit = await limiting_key(store, subject, command)
        return None if limit is None else limit.project

    fresh = CreateSandbox(
        command_id="c1", actor=own, profile="profile.local", sandbox_id="sbxfresh1"
    )
    assert await held(fresh) == "alpha"
    assert await held(RestoreSnapshot(command_id="c2", actor=own, snapshot_id="snp1")) == "alpha"
    for n, end in (
        (1, None),
        (4, "failed"),
    ):  # a requested one, crashed before routed; a failed one
        head = {"sandbox_id": f"sbx{n:04d}", "command_id": f"c{n}", "actor": own, "at": NOW}
        events: list[SandboxEvent] = [
            SandboxRequested(**head, profile="profile.local", profile_version=1)
        ]
        if end == "failed":
            events.append(SandboxFailed(**head, reason="x", stage="provision", retryable=False))
        await store.append(await store.load(f"sbx{n:04d}"), events)
    again = CreateSandbox(command_id="c1", actor=own, profile="profile.local", sandbox_id="sbx0001")
    resent = await limiting_key(store, subject, again)
    assert resent is not None
    assert await resent.resent()  # at the limit, not held by itself
    first = await limiting_key(store, subject, fresh)
    assert first is not None
    assert not await first.resent()
    assert await held(RecreateSandbox(command_id="r1", actor=own, sandbox_id="sbx0004")) == "alpha"
    assert await held(RecreateSandbox(command_id="r2", actor=own, sandbox_id="sbx0001")) is None
    other = CreateSandbox(command_id="c9", actor=Actor(type="adm", id="ops"), profile="p")
    assert await limiting_key(store, "sandboxer.cmd.create", other) is None
