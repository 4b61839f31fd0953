"""Warm pools, pure: a member's state and decisions, and the index a keeper plans from.

A member (docs/pools.md) goes ``adding → ready → claimed`` or ends ``removed``.
:func:`decide_member` turns a keeper's or a worker's intent into the member's
next events; :class:`PoolIndex` folds every member's events into what a keeper
needs: which members each pool has, in what state, and who claimed what.
:func:`plan_pool` says how many members to add and which to drain.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from sandboxer.errors import Rejected
from sandboxer.events.actor import SYSTEM_ACTOR
from sandboxer.events.pool_events import (
    PoolEvent,
    PoolMemberAdded,
    PoolMemberClaimed,
    PoolMemberReady,
    PoolMemberRemoved,
)

__all__ = [
    "AddMember",
    "ClaimMember",
    "MarkMemberReady",
    "MemberCommand",
    "MemberState",
    "PoolIndex",
    "PoolPlan",
    "RemoveMember",
    "decide_member",
    "evolve_member",
    "is_member_id",
    "new_member_id",
    "plan_pool",
    "pool_key",
    "profile_digest",
]

MemberStatus = Literal["new", "adding", "ready", "claimed", "removed"]

_MEMBER_ID = re.compile(r"^pool[0-9a-f]{16}$")
CLAIMS_REMEMBERED = 10_000
"""Claims an index keeps (sandbox -> member): a retried job asks within minutes, not days."""


def new_member_id() -> str:
    """A fresh member id: also a valid sandbox id and a subject token."""
    return "pool" + secrets.token_hex(8)


def is_member_id(value: object) -> bool:
    return isinstance(value, str) and _MEMBER_ID.fullmatch(value) is not None


def pool_key(extension: str, node: str, profile: str) -> str:
    """The name of one pool: a profile's members on one backend at one node."""
    return f"{extension}@{node}:{profile}"


def profile_digest(profile_json: bytes) -> str:
    """What a member was made for: a hash of the (effective) profile's canonical JSON."""
    return hashlib.sha256(profile_json).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class MemberState:
    member_id: str
    version: int = 0
    status: MemberStatus = "new"
    pool: str = ""
    profile: str = ""
    digest: str = ""
    node: str = ""
    worker: str = ""
    claimed_by: str | None = None
    added_at: str | None = None


def evolve_member(state: MemberState, event: PoolEvent) -> MemberState:
    version = state.version + 1
    if isinstance(event, PoolMemberAdded):
        return MemberState(
            member_id=event.member_id,
            version=version,
            status="adding",
            pool=event.pool,
            profile=event.profile,
            digest=event.profile_digest,
            node=event.node,
            worker=event.worker,
            added_at=event.at,
        )
    if isinstance(event, PoolMemberReady):
        return replace(state, status="ready", version=version)
    if isinstance(event, PoolMemberClaimed):
        return replace(state, status="claimed", claimed_by=event.sandbox_id, version=version)
    return replace(state, status="removed", version=version)


@dataclass(frozen=True, kw_only=True)
class AddMember:
    member_id: str
    pool: str
    profile: str
    profile_version: int
    digest: str
    extension: str
    node: str
    worker: str
    round_id: str


@dataclass(frozen=True, kw_only=True)
class MarkMemberReady:
    round_id: str


@dataclass(frozen=True, kw_only=True)
class ClaimMember:
    sandbox_id: str
    job_id: str


@dataclass(frozen=True, kw_only=True)
class RemoveMember:
    reason: str
    round_id: str


MemberCommand = AddMember | MarkMemberReady | ClaimMember | RemoveMember


def decide_member(state: MemberState, command: MemberCommand, now: str) -> list[PoolEvent]:
    """The member's next events; [] when the intent is already met (a retry).

    Raises :class:`~sandboxer.errors.Rejected` when a claim reaches a member that is not
    ready or that another sandbox has: the claimer picks another member.
    """
    if isinstance(command, AddMember):
        if state.status != "new":
            return []
        added = MemberState(member_id=command.member_id, pool=command.pool)
        return [
            _event(
                PoolMemberAdded,
                added,
                now,
                command.round_id,
                profile=command.profile,
                profile_version=command.profile_version,
                profile_digest=command.digest,
                extension=command.extension,
                node=command.node,
                worker=command.worker,
            )
        ]
    if isinstance(command, MarkMemberReady):
        if state.status != "adding":
            return []
        return [_event(PoolMemberReady, state, now, command.round_id)]
    if isinstance(command, ClaimMember):
        if state.status == "claimed" and state.claimed_by == command.sandbox_id:
            return []
        if state.status != "ready":
            raise Rejected("pool_member_taken", f"pool member {state.member_id} is {state.status}")
        return [
            _event(PoolMemberClaimed, state, now, command.job_id, sandbox_id=command.sandbox_id)
        ]
    if state.status in {"new", "claimed", "removed"}:
        return []  # a claimed member is a sandbox now: its own teardown removes it
    return [_event(PoolMemberRemoved, state, now, command.round_id, reason=command.reason)]


E = TypeVar("E", PoolMemberAdded, PoolMemberReady, PoolMemberClaimed, PoolMemberRemoved)


def _event(kind: type[E], state: MemberState, now: str, command_id: str, **fields: Any) -> E:
    """One of the member's events, with what every one of them carries."""
    return kind(
        member_id=state.member_id,
        pool=state.pool,
        actor=SYSTEM_ACTOR,
        at=now,
        command_id=command_id,
        **fields,
    )


@dataclass
class PoolIndex:
    """Every member the log knows, folded in log order (a keeper's cache of the log)."""

    members: dict[str, MemberState] = field(default_factory=dict)
    claimed_by: dict[str, str] = field(default_factory=dict)
    """sandbox id -> the member it claimed."""
    position: int = 0

    def apply(self, seq: int, event: PoolEvent) -> None:
        if seq <= self.position:
            return
        self.position = seq
        known = self.members.get(event.member_id) or MemberState(member_id=event.member_id)
        state = evolve_member(known, event)
        if state.status == "claimed" and state.claimed_by is not None:
            self.note_claim(state.claimed_by, state.member_id)
        self.members[event.member_id] = state

    def note_claim(self, sandbox_id: str, member_id: str) -> None:
        """Remember who claimed what, for the retries of recent claims only."""
        self.claimed_by[sandbox_id] = member_id
        if len(self.claimed_by) > CLAIMS_REMEMBERED:
            del self.claimed_by[next(iter(self.claimed_by))]  # the oldest

    def of_pool(self, pool: str) -> list[MemberState]:
        return [member for member in self.members.values() if member.pool == pool]

    def forget(self, member_id: str) -> None:
        """Drop a member whose story is over (removed, or claimed and renamed)."""
        self.members.pop(member_id, None)

    def summary(self) -> list[dict[str, object]]:
        """Each pool's counts, for ``sandboxer pools``."""
        pools: dict[str, dict[str, object]] = {}
        for member in self.members.values():
            entry = pools.setdefault(
                member.pool,
                {
                    "pool": member.pool,
                    "profile": member.profile,
                    "node": member.node,
                    "ready": 0,
                    "provisioning": 0,
                },
            )
            if member.status == "ready":
                entry["ready"] = int(str(entry["ready"])) + 1
            elif member.status == "adding":
                entry["provisioning"] = int(str(entry["provisioning"])) + 1
        return sorted(pools.values(), key=lambda entry: str(entry["pool"]))


@dataclass(frozen=True, kw_only=True)
class PoolPlan:
    add: int
    """Members to start making now."""
    drain: list[str]
    """Unclaimed members to tear down: made for another profile, or beyond ``max``."""


def plan_pool(
    members: list[MemberState], *, digest: str, min_ready: int, max_members: int
) -> PoolPlan:
    """What one pool needs now: members of an older profile drained, the rest kept between
    ``min_ready`` ready and ``max_members`` unclaimed (ready or being made)."""
    stale = [m.member_id for m in members if m.status == "ready" and m.digest != digest]
    current = [m for m in members if m.digest == digest and m.status in {"adding", "ready"}]
    ready = [m for m in current if m.status == "ready"]
    making = len(current) - len(ready)
    excess = max(0, len(current) - max_members)
    drain = stale + [m.member_id for m in ready[:excess]]
    add = max(0, min(min_ready - len(ready) - making, max_members - len(current)))
    return PoolPlan(add=add, drain=drain)
