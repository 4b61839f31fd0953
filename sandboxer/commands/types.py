"""The command types of the public contract, as msgspec Structs.

Clients publish them as JSON on ``sandboxer.cmd.<verb>`` with ``Nats-Msg-Id``
set to ``command_id``. Unknown fields are refused so that a misspelt field is a
rejection with a reason, not a silently ignored wish.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from sandboxer.config.network_policy import NetworkPolicy, parse_policy
from sandboxer.events.types import Actor, ConsumerRecord
from sandboxer.ids import derive_sandbox_id

__all__ = [
    "COMMAND_TYPES",
    "AddCredits",
    "Command",
    "ConsumerAsk",
    "CreateKey",
    "CreateSandbox",
    "DeleteSnapshot",
    "DestroySandbox",
    "EgressObject",
    "ExpireSandbox",
    "ExtendTtl",
    "NetworkAsk",
    "PauseSandbox",
    "RecreateSandbox",
    "RerouteSandbox",
    "RestoreSnapshot",
    "ResumeSandbox",
    "RevokeKey",
    "SetBudget",
    "SetByok",
    "SnapshotSandbox",
    "TouchSandbox",
    "asked_policy",
    "consumer_ask",
    "consumer_record",
    "target_sandbox",
]


class _CommandBase(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    command_id: str
    """Idempotency key; also the ``Nats-Msg-Id`` header of the publish."""
    actor: Actor


class EgressObject(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One egress entry in its object form (docs/network.md#entries)."""

    to: str
    """An address, a CIDR, a domain name or a wildcard name (``*.pypi.org``)."""
    ports: list[int | str] | None = None
    """Ports (``443``) and ranges (``"8000-8100"``); left out: every port."""
    protocol: Literal["tcp", "udp"] | None = None
    """Left out: TCP and UDP."""


class NetworkAsk(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A network policy a create asks for (docs/network.md): it may narrow the profile's,
    never widen it unless an ``adm`` actor asks."""

    default: Literal["deny", "allow"] = "deny"
    egress: list[str | EgressObject] = []
    """Entries as compact strings (``pypi.org:443``, ``10.1.2.0/24``) or objects."""


class ConsumerAsk(ConsumerRecord, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Who a create or restore is for (docs/protocol.md#consumer-attribution): checked strictly
    here, recorded as a :class:`~sandboxer.events.types.ConsumerRecord` in ``requested``."""


def consumer_record(ask: ConsumerRecord | None) -> ConsumerRecord | None:
    """The record a command's consumer becomes (an event's type, not the strict command's)."""
    return None if ask is None else msgspec.convert(msgspec.to_builtins(ask), ConsumerRecord)


def consumer_ask(record: ConsumerRecord | None) -> ConsumerAsk | None:
    """A recorded consumer as a command's again (a reroute admits the create once more)."""
    return None if record is None else msgspec.convert(msgspec.to_builtins(record), ConsumerAsk)


def asked_policy(ask: NetworkAsk) -> NetworkPolicy:
    """The policy a create's ``network`` asks for; InvalidNetworkPolicy names the entry at fault."""
    return parse_policy(msgspec.to_builtins(ask), "network")


class CreateSandbox(_CommandBase, frozen=True, kw_only=True):
    """Establish a sandbox from a profile (``sandboxer.cmd.create``)."""

    profile: str
    inputs: dict[str, str] = {}
    sandbox_id: str | None = None
    """Chosen by the client (lowercase letters and digits, 8-32 chars); else derived from command_id."""
    host: str | None = None
    """For extensions that place on hosts: this host instead of the profile's placement."""
    ttl: str | None = None
    """Lifetime (``90s``, ``2h``, ``1d``) instead of the profile's ``ttl.default``; at most
    its ``ttl.max``."""
    network: NetworkAsk | None = None
    """A narrower network policy than the profile's (docs/network.md#narrowing); left out:
    the profile's."""
    consumer: ConsumerAsk | None = None
    """Who the sandbox is for: harness, session, run, job and labels
    (docs/protocol.md#consumer-attribution)."""


class DestroySandbox(_CommandBase, frozen=True, kw_only=True):
    """Tear a sandbox down (``sandboxer.cmd.destroy``)."""

    sandbox_id: str


class RecreateSandbox(_CommandBase, frozen=True, kw_only=True):
    """Tear a sandbox down and provision it again from the same profile and inputs."""

    sandbox_id: str


class ExtendTtl(_CommandBase, frozen=True, kw_only=True):
    """Push a sandbox's expiry later by ``duration`` (``sandboxer.cmd.extend_ttl``), within the
    profile's ``ttl.max`` counted from creation."""

    sandbox_id: str
    duration: str


class TouchSandbox(_CommandBase, frozen=True, kw_only=True):
    """Record activity on a sandbox (``sandboxer.cmd.touch``), which holds off idle reaping."""

    sandbox_id: str


class ExpireSandbox(_CommandBase, frozen=True, kw_only=True):
    """Expire a sandbox whose TTL or idle limit ran out, then destroy it
    (``sandboxer.cmd.expire``). Only an ``adm`` actor may expire one that is not due."""

    sandbox_id: str
    reason: str | None = None


class PauseSandbox(_CommandBase, frozen=True, kw_only=True):
    """Freeze every process of a ready or active sandbox (``sandboxer.cmd.pause``); its TTL
    clock stops until it is resumed. Only on a backend whose declaration sets
    ``capabilities.pause``."""

    sandbox_id: str


class ResumeSandbox(_CommandBase, frozen=True, kw_only=True):
    """Thaw a paused sandbox (``sandboxer.cmd.resume``); its TTL clock starts again."""

    sandbox_id: str


class SnapshotSandbox(_CommandBase, frozen=True, kw_only=True):
    """Store a copy of a sandbox's workspace (``sandboxer.cmd.snapshot``); the snapshot's id is
    derived from ``command_id`` (:func:`sandboxer.ids.derive_snapshot_id`)."""

    sandbox_id: str
    name: str | None = None
    """A label for people (at most 100 characters); the snapshot id is what names it."""


class DeleteSnapshot(_CommandBase, frozen=True, kw_only=True):
    """Delete a snapshot's data, keeping its history (``sandboxer.cmd.delete_snapshot``)."""

    snapshot_id: str


class RestoreSnapshot(_CommandBase, frozen=True, kw_only=True):
    """Create a new sandbox from a snapshot (``sandboxer.cmd.restore``), of the snapshot's
    profile or of ``profile`` (any backend): the snapshot's object is its directory input."""

    snapshot_id: str
    profile: str | None = None
    sandbox_id: str | None = None
    """As in a create: chosen by the client, else derived from command_id."""
    inputs: dict[str, str] = {}
    """The profile's other inputs (e.g. the VM a vm-packer profile attaches to); its directory
    input is the snapshot's and may not be given here."""
    consumer: ConsumerAsk | None = None
    """As in a create: who the restored sandbox is for."""


class RerouteSandbox(_CommandBase, frozen=True, kw_only=True):
    """Route a sandbox whose backend refused it (a quota refusal, an outage) to the next
    candidate of its profile (``sandboxer.cmd.reroute``). The extension worker sends it after
    recording ``rerouting``; for a sandbox that is not ``rerouting`` it is rejected."""

    sandbox_id: str


class AddCredits(_CommandBase, frozen=True, kw_only=True):
    """Add ``amount`` credits (1 credit = 1 micro-USD) to ``project``'s account
    (``sandboxer.cmd.add_credits``; docs/payments.md). Only an ``adm`` actor may."""

    project: str
    amount: int


class SetBudget(_CommandBase, frozen=True, kw_only=True):
    """Limit what ``project`` may spend per UTC ``day`` or ``month``, in credits
    (``sandboxer.cmd.set_budget``); ``limit`` null removes the limit. Only an ``adm`` actor may."""

    project: str
    limit: int | None
    period: Literal["day", "month"] = "month"


class SetByok(_CommandBase, frozen=True, kw_only=True):
    """``project`` brings its own key for ``extension`` (``sandboxer.cmd.set_byok``): a secret
    reference (``env:NAME``, ``file:PATH``), never a value; null removes it. Its sandboxes there
    reserve and debit no credits; their usage is still metered."""

    project: str
    extension: str
    key_ref: str | None


class CreateKey(_CommandBase, frozen=True, kw_only=True):
    """Record an API key of ``project`` (``sandboxer.cmd.create_key``): only its SHA-256
    ``key_hash`` travels, never the key; its id is derived from the hash. Requests bearing
    the key act as ``{"type": key_type, "id": key_id, "project": project}``. Only an ``adm``
    actor may."""

    project: str
    key_type: Literal["adm", "agt", "atm"]
    key_hash: str
    name: str | None = None
    max_live: int = 10
    """Live sandboxes the project may have for a create with this key to be accepted."""
    rate_per_second: int = 10
    """Requests per second the key may make (per gateway process)."""
    bus_hash: str | None = None
    """bcrypt of the key (never the key): the key then also logs in to NATS as a project
    identity (docs/security.md#keys-on-the-bus)."""


class RevokeKey(_CommandBase, frozen=True, kw_only=True):
    """Revoke an API key (``sandboxer.cmd.revoke_key``): it stops working at once. Only an
    ``adm`` actor may."""

    key_id: str
    reason: str | None = None


Command = (
    CreateSandbox
    | DestroySandbox
    | RecreateSandbox
    | ExtendTtl
    | TouchSandbox
    | ExpireSandbox
    | SnapshotSandbox
    | DeleteSnapshot
    | RestoreSnapshot
    | PauseSandbox
    | ResumeSandbox
    | AddCredits
    | SetBudget
    | SetByok
    | RerouteSandbox
    | CreateKey
    | RevokeKey
)

COMMAND_TYPES: dict[str, type[Command]] = {
    "create": CreateSandbox,
    "destroy": DestroySandbox,
    "recreate": RecreateSandbox,
    "extend_ttl": ExtendTtl,
    "touch": TouchSandbox,
    "expire": ExpireSandbox,
    "snapshot": SnapshotSandbox,
    "delete_snapshot": DeleteSnapshot,
    "restore": RestoreSnapshot,
    "pause": PauseSandbox,
    "resume": ResumeSandbox,
    "add_credits": AddCredits,
    "set_budget": SetBudget,
    "set_byok": SetByok,
    "reroute": RerouteSandbox,
    "create_key": CreateKey,
    "revoke_key": RevokeKey,
}
"""Verb (last subject token) -> command type."""


def target_sandbox(command: Command) -> str:
    """The sandbox a command is about (a create or restore without one gets an id derived from
    its own; a snapshot delete is about no sandbox and gets that derived id too, unused)."""
    return getattr(command, "sandbox_id", None) or derive_sandbox_id(command.command_id)
