"""Warm pool rules, pure: a member is claimed once, plans keep pools between their bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandboxer.bus.memory_store import MemoryEventStore
from sandboxer.config.network_policy import parse_policy
from sandboxer.config.profile import Profile
from sandboxer.domain.pool_state import (
    AddMember,
    ClaimMember,
    MarkMemberReady,
    MemberState,
    PoolIndex,
    RemoveMember,
    decide_member,
    evolve_member,
    is_member_id,
    new_member_id,
    plan_pool,
)
from sandboxer.errors import ConcurrencyConflict, Rejected
from sandboxer.events.codec import decode_event, encode_event
from sandboxer.workers.pool_keeper import digest_of

NOW = "2026-12-02T12:00:00.000Z"


def add(member_id: str = "pool00000000000000aa", digest: str = "d1") -> AddMember:
    return AddMember(
        member_id=member_id,
        pool="ext.local@node:profile.warm",
        profile="profile.warm",
        profile_version=1,
        digest=digest,
        extension="ext.local",
        node="node",
        worker="node:1:ab",
        round_id="cmd1",
    )


def ready_member(member_id: str = "pool00000000000000aa", digest: str = "d1") -> MemberState:
    state = MemberState(member_id=member_id)
    for command in (add(member_id, digest), MarkMemberReady(round_id="cmd2")):
        for event in decide_member(state, command, NOW):
            state = evolve_member(state, event)
    return state


def test_member_ids_are_sandbox_ids_and_subject_tokens() -> None:
    member = new_member_id()
    assert is_member_id(member)
    assert "." not in member
    assert not is_member_id("pool../etc")
    assert not is_member_id(None)


def test_a_ready_member_is_claimed_once_and_a_retry_is_no_op() -> None:
    state = ready_member()
    (claimed,) = decide_member(state, ClaimMember(sandbox_id="sbxa", job_id="j1"), NOW)
    state = evolve_member(state, claimed)
    assert (state.status, state.claimed_by) == ("claimed", "sbxa")
    assert decide_member(state, ClaimMember(sandbox_id="sbxa", job_id="j1"), NOW) == []
    with pytest.raises(Rejected):
        decide_member(state, ClaimMember(sandbox_id="sbxb", job_id="j2"), NOW)
    assert decide_member(state, RemoveMember(reason="drain", round_id="r"), NOW) == []


def test_a_member_being_made_cannot_be_claimed() -> None:
    state = evolve_member(MemberState(member_id="pool00000000000000aa"), *_events(add()))
    with pytest.raises(Rejected):
        decide_member(state, ClaimMember(sandbox_id="sbxa", job_id="j1"), NOW)


def _events(command: AddMember) -> list[object]:
    return list(decide_member(MemberState(member_id=command.member_id), command, NOW))


async def test_two_claimers_of_one_member_only_one_lands() -> None:
    store = MemoryEventStore()
    member = "pool00000000000000aa"
    loaded = await store.load_member(member)
    for command in (add(member), MarkMemberReady(round_id="c")):
        loaded = await store.append_member(loaded, decide_member(loaded.state, command, NOW))
    first = second = loaded  # both read the member while it was ready
    await store.append_member(
        first, decide_member(first.state, ClaimMember(sandbox_id="sbxa", job_id="a"), NOW)
    )
    with pytest.raises(ConcurrencyConflict):
        await store.append_member(
            second, decide_member(second.state, ClaimMember(sandbox_id="sbxb", job_id="b"), NOW)
        )
    assert (await store.load_member(member)).state.claimed_by == "sbxa"


def test_events_round_trip_through_the_codec() -> None:
    state = ready_member()
    for event in decide_member(state, ClaimMember(sandbox_id="sbxa", job_id="j"), NOW):
        assert decode_event(encode_event(event)) == event


def test_the_index_folds_in_log_order_and_knows_claims() -> None:
    index = PoolIndex()
    store_events = [
        *decide_member(MemberState(member_id="pool00000000000000aa"), add(), NOW),
    ]
    state = evolve_member(MemberState(member_id="pool00000000000000aa"), store_events[0])
    store_events += decide_member(state, MarkMemberReady(round_id="r"), NOW)
    state = evolve_member(state, store_events[-1])
    store_events += decide_member(state, ClaimMember(sandbox_id="sbxa", job_id="j"), NOW)
    for seq, event in enumerate(store_events, start=1):
        index.apply(seq, event)  # type: ignore[arg-type]
    index.apply(2, store_events[1])  # a repeat of an old sequence changes nothing
    assert index.claimed_by == {"sbxa": "pool00000000000000aa"}
    assert index.members["pool00000000000000aa"].status == "claimed"
    assert index.summary() == [
        {
            "pool": "ext.local@node:profile.warm",
            "profile": "profile.warm",
            "node": "node",
            "ready": 0,
            "provisioning": 0,
        }
    ]


@given(
    ready=st.integers(0, 12),
    making=st.integers(0, 12),
    stale=st.integers(0, 5),
    min_ready=st.integers(0, 10),
    extra=st.integers(0, 10),
)
def test_a_plan_keeps_the_pool_within_its_bounds(
    ready: int, making: int, stale: int, min_ready: int, extra: int
) -> None:
    max_members = max(1, min_ready + extra)
    members = (
        [ready_member(f"pool{n:016x}") for n in range(ready)]
        + [
            evolve_member(MemberState(member_id=f"pool{n:016x}"), *_events(add(f"pool{n:016x}")))
            for n in range(100, 100 + making)
        ]
        + [ready_member(f"pool{n:016x}", digest="old") for n in range(200, 200 + stale)]
    )
    plan = plan_pool(members, digest="d1", min_ready=min_ready, max_members=max_members)
    stale_ids = {m.member_id for m in members if m.digest == "old"}
    assert stale_ids <= set(plan.drain)  # an older profile's members always go
    kept = ready + making - len(set(plan.drain) - stale_ids)
    assert plan.add >= 0
    assert kept + plan.add <= max(max_members, kept)
    if ready + making < min_ready and ready + making < max_members:
        assert plan.add > 0  # short of the target, and room to grow: it refills


def test_the_digest_ignores_the_pool_and_follows_the_profile() -> None:
    base = Profile(id="profile.warm", extension="ext.local")
    pooled = base.model_copy(update={"pool": {"min_ready": 1, "max": 2}})
    assert digest_of(base) == digest_of(pooled)
    changed = base.model_copy(update={"version": 2})
    assert digest_of(changed) != digest_of(base)


def test_a_create_that_keeps_the_profiles_policy_claims_with_the_catalogs_own_profile() -> None:
    """The keeper remembers digests by profile object: a create whose policy in force is the
    profile's own must hand it the catalog's object, not an equal copy made per create."""
    base = Profile(
        id="profile.warm",
        extension="ext.local",
        network={"default": "deny", "egress": ["pypi.org:443"]},
    )
    assert base.with_network(base.network.policy()) is base
    narrowed = base.with_network(parse_policy({"default": "deny"}))
    assert narrowed is not base
    assert narrowed.network.egress == []
    assert digest_of(narrowed) != digest_of(base)
    assert digest_of(base.with_network(parse_policy(base.network.model_dump()))) == digest_of(base)


def test_a_keeper_whose_pid_another_process_took_is_not_alive() -> None:
    """After a restart (a container's pid 1, a reboot) a dead keeper's pid is another
    process's: its members being made were kept, and counted, for good."""
    import os
    import socket

    from sandboxer.incarnation import incarnation
    from sandboxer.workers.pool_keeper import _process_alive

    host, pid = socket.gethostname(), os.getpid()
    assert _process_alive(f"{host}:{pid}:abcd:{incarnation(pid)}")
    assert not _process_alive(f"{host}:{pid}:abcd:1@00000000")  # the pid, not the process
    assert _process_alive(f"{host}:{pid}:abcd")  # recorded before the start was: by pid
    assert not _process_alive(f"elsewhere:{pid}:abcd:{incarnation(pid)}")
