"""A reroute's hold covers the sandbox's TTL as extended (workers/credit_reservation.py)."""

from __future__ import annotations

from sandboxer.bus.memory_store import MemoryEventStore
from sandboxer.config.catalog import Catalog
from sandboxer.domain.account_decide import extend_command_id
from sandboxer.domain.deadlines import ttl_with_extensions
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.events.account_events import CreditsAdded, CreditsReserved
from sandboxer.events.actor import Actor
from sandboxer.workers.credit_reservation import reserve_for_reroute

ACTOR = Actor(type="agt", id="a", project="p")
AT = "2026-12-04T10:00:00.000Z"


def extended_while_provisioning() -> SandboxState:
    """Created for 10 minutes, extended by an hour while provisioning, then refused."""
    return SandboxState(
        sandbox_id="sbxextended1",
        status="rerouting",
        actor=ACTOR,
        ttl_seconds=600.0,
        created_at=AT,
        expires_at="2026-12-04T11:10:00.000Z",
        refused_by=("ext.saas-stub",),
        handled=("create-1", "ext-1"),  # the extension was appended
    )


def test_the_ttl_with_extensions_counts_every_extension_and_no_pause() -> None:
    state = extended_while_provisioning()
    assert ttl_with_extensions(state) == 4200.0
    paused = SandboxState(
        sandbox_id="sbxpaused001",
        ttl_seconds=600.0,
        created_at=AT,
        expires_at="2026-12-04T10:15:00.000Z",  # a 5-minute pause moved it
        paused_seconds=300.0,
    )
    assert ttl_with_extensions(paused) == 600.0
    assert ttl_with_extensions(SandboxState(sandbox_id="sbxnottl0001", ttl_seconds=None)) is None


async def test_a_reroute_holds_the_extensions_the_refused_backend_held() -> None:
    """The stub held 10 minutes and the hour an extend_ttl added while the sandbox was
    provisioning; it refused, and the reroute to E2B held 10 minutes there: the hour the
    sandbox still had was held nowhere, so the project could spend past its balance."""
    store = MemoryEventStore()
    head = {"project": "p", "actor": ACTOR, "at": AT}
    loaded = await store.load_account("p")
    await store.append_account(
        loaded,
        [
            CreditsAdded(**head, command_id="add-1", amount=10_000_000),
            CreditsReserved(
                **head,
                command_id="reserve-sbxextended1",
                causation_id="create-1",
                sandbox_id="sbxextended1",
                amount=1000 + 100 * 600,
                price="100",
                create_price="1000",
                extension="ext.saas-stub",
            ),
            CreditsReserved(
                **head,
                command_id=extend_command_id("sbxextended1", "ext-1"),
                causation_id="ext-1",
                sandbox_id="sbxextended1",
                amount=100 * 3600,
                price="100",
                create_price="1000",
                extension="ext.saas-stub",
                reason="extend",
            ),
        ],
    )
    state = extended_while_provisioning()
    await reserve_for_reroute(store, Catalog.load(), state, "ext.e2b", "reroute-1")
    account = (await store.load_account("p")).state
    held = account.reservations["sbxextended1"]
    assert (held.extension, held.price) == ("ext.e2b", "30.25")
    # 30.25 micro-USD a second for 4200 s (on the old code 600 s: 18150)
    assert held.amount == 127_050, held
    assert account.reserved == 127_050


async def test_a_reroute_carries_the_hold_of_an_extension_not_yet_appended() -> None:
    """A second extension held its half hour at the stub and had not been appended when the
    stub refused: the reroute's estimate (the TTL as extended) cannot count it, and its
    hold, replaced, was lost, its time held nowhere once appended. It is carried over at
    E2B's price."""
    store = MemoryEventStore()
    head = {"project": "p", "actor": ACTOR, "at": AT}
    in_flight = extend_command_id("sbxextended1", "ext-2")
    loaded = await store.load_account("p")
    await store.append_account(
        loaded,
        [
            CreditsAdded(**head, command_id="add-1", amount=10_000_000),
            *(
                CreditsReserved(
                    **head,
                    command_id=command_id,
                    causation_id=cause,
                    sandbox_id="sbxextended1",
                    amount=amount,
                    price="100",
                    create_price="1000",
                    extension="ext.saas-stub",
                    reason=reason,
                )
                for command_id, cause, amount, reason in (
                    ("reserve-sbxextended1", "create-1", 1000 + 100 * 600, "create"),
                    (extend_command_id("sbxextended1", "ext-1"), "ext-1", 100 * 3600, "extend"),
                    (in_flight, "ext-2", 100 * 1800, "extend"),
                )
            ),
        ],
    )
    await reserve_for_reroute(store, Catalog.load(), extended_while_provisioning(), "ext.e2b", "r")
    held = (await store.load_account("p")).state.reservations["sbxextended1"]
    # 4200 s estimated, and 1800 s carried: 30.25 a second (on the old code 127050 only)
    assert held.extensions == {in_flight: 54_450}
    assert held.amount == 127_050 + 54_450, held
