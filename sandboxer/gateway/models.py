"""Request and response bodies of the HTTP API (pydantic: the OpenAPI document comes from here).

Request bodies are strict: an unknown field or a value of the wrong type is
refused (422) before anything reaches the bus, as commands are strict on the
bus. What a field may hold beyond its type and length (a profile that exists,
a TTL within the profile's limit, input names) is the service's to decide:
its rejection comes back verbatim. Response bodies name the fields the
contract promises and let the service add more (``docs/protocol.md#compatibility``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sandboxer.commands.consumer_rules import label_refusal

__all__ = [
    "Accepted",
    "CreateSandbox",
    "CreditsList",
    "EgressEntry",
    "ErrorBody",
    "ErrorInfo",
    "ExtendTtl",
    "Health",
    "NetworkPolicy",
    "Pending",
    "RestoreSnapshot",
    "Sandbox",
    "SandboxList",
    "Snapshot",
    "SnapshotList",
    "TakeSnapshot",
]

SANDBOX_ID = r"^[a-z0-9]{8,32}$"
"""Sandbox and snapshot ids (docs/protocol.md#identifiers)."""
PROJECT = r"^[a-z0-9][a-z0-9_-]{0,62}$"
INPUT_VALUE_MAX = 4096


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorInfo(BaseModel):
    code: str = Field(
        description="machine-readable: a rejection code of docs/protocol.md, or the gateway's own"
    )
    message: str = Field(
        description="what happened and how to fix it; a rejection's reason verbatim"
    )
    details: dict[str, Any] | None = Field(
        default=None,
        description="more: the rejected or failed event (`event`), validation errors (`errors`)",
    )


class ErrorBody(BaseModel):
    """Every error answer of the API has this shape."""

    error: ErrorInfo


class EgressEntry(_Strict):
    """An egress entry in its object form (docs/network.md#entries)."""

    to: str = Field(min_length=1, max_length=300, description="an address, CIDR, name or *.name")
    ports: list[int | str] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description='ports and ranges: [443, "8000-8100"]',
    )
    protocol: Literal["tcp", "udp"] | None = Field(default=None, description="default: both")


class NetworkPolicy(_Strict):
    """A network policy that narrows the profile's (docs/network.md)."""

    default: Literal["deny", "allow"] = "deny"
    egress: list[str | EgressEntry] = Field(
        default_factory=list,
        max_length=256,
        description='entries: "pypi.org:443", "10.1.2.0/24", "*.pypi.org", or objects',
    )


HARNESS = r"^[a-z0-9][a-z0-9._-]{0,63}$"
CONSUMER_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,127}$"


class Consumer(_Strict):
    """Who the sandbox is for (docs/protocol.md#consumer-attribution); every part optional."""

    harness: str | None = Field(default=None, pattern=HARNESS, description="the calling service")
    session_id: str | None = Field(default=None, pattern=CONSUMER_ID)
    run_id: str | None = Field(default=None, pattern=CONSUMER_ID)
    job_id: str | None = Field(default=None, pattern=CONSUMER_ID)
    labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=16,
        description="free labels: keys of lowercase letters, digits and ._/-, values of at "
        "most 256 printable characters",
    )

    @field_validator("labels")
    @classmethod
    def _labels_are_valid(cls, labels: dict[str, str]) -> dict[str, str]:
        """The service's own rule, here too, so a bad label is a 422 rather than a 202
        whose command is then rejected."""
        for key, value in labels.items():
            refusal = label_refusal(key, value)
            if refusal is not None:
                raise ValueError(refusal)
        return labels


class CreateSandbox(_Strict):
    profile: str = Field(
        default="profile.local", min_length=1, max_length=200, description="a profile id"
    )
    inputs: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description="the profile's inputs; a directory input is a workspace reference object:sha256:<hex>",
    )
    sandbox_id: str | None = Field(
        default=None, pattern=SANDBOX_ID, description="default: derived from the command id"
    )
    host: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="a hosts-file name (remote backends)",
    )
    ttl: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="lifetime such as 2h (default: the profile's)",
    )
    project: str | None = Field(
        default=None,
        pattern=PROJECT,
        description="the project the sandbox is for, whose credits pay for it",
    )
    network: NetworkPolicy | None = Field(
        default=None,
        description="narrows the profile's network policy; a widening is refused "
        "(network_widened) unless the key is adm; default: the profile's",
    )
    consumer: Consumer | None = Field(
        default=None, description="who the sandbox is for: list and usage filter by it"
    )


class ExtendTtl(_Strict):
    duration: str = Field(
        min_length=1, max_length=32, description="how much later it expires, e.g. 2h"
    )


class TakeSnapshot(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=100)


class RestoreSnapshot(_Strict):
    profile: str | None = Field(
        default=None, min_length=1, max_length=200, description="default: the snapshot's profile"
    )
    sandbox_id: str | None = Field(default=None, pattern=SANDBOX_ID)
    inputs: dict[str, str] = Field(default_factory=dict, max_length=64)
    project: str | None = Field(default=None, pattern=PROJECT)
    consumer: Consumer | None = Field(default=None, description="as in a create")


class Accepted(BaseModel):
    """The command is accepted: its outcome is at ``status_url`` (and on the events stream)."""

    status: Literal["accepted"] = "accepted"
    command_id: str
    sandbox_id: str | None = None
    snapshot_id: str | None = None
    status_url: str = Field(
        description="poll it: 202 while the command is pending, then the resource or the rejection"
    )


class Pending(BaseModel):
    """The command is accepted but the view does not show its work yet: ask again."""

    status: Literal["pending"] = "pending"
    command_id: str
    sandbox_id: str | None = None
    snapshot_id: str | None = None


class Sandbox(_Open):
    """A sandbox as the view holds it (docs/protocol.md#queries lists every field)."""

    sandbox_id: str
    status: str
    profile: str | None = None
    extension: str | None = None
    host: str | None = None
    actor: dict[str, Any] | None = None
    generation: int | None = None
    reachability: dict[str, Any] | None = None
    failure: str | None = None
    expires_at: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    consumer: dict[str, Any] | None = None


def _next() -> Any:
    return Field(
        default=None,
        description="the cursor of the page after this one, to pass as ?after= (null: the last)",
    )


class SandboxList(BaseModel):
    sandboxes: list[Sandbox]
    next: str | None = _next()


class Snapshot(_Open):
    snapshot_id: str
    status: str
    sandbox_id: str | None = None
    project: str | None = Field(
        None, description="the project it belongs to: its sandbox's, whoever took it"
    )
    name: str | None = None
    size: int | None = None
    sha256: str | None = None
    warnings: list[str] = Field(
        default_factory=list,
        description="what the copy left out (FIFOs, sockets, device nodes), one line per kind, "
        "e.g. 'left out 2 FIFOs: run/a.fifo, run/b.fifo': a restore lacks it",
    )
    failure: str | None = None


class SnapshotList(BaseModel):
    snapshots: list[Snapshot]
    next: str | None = _next()


class CreditsList(BaseModel):
    accounts: list[dict[str, Any]] = Field(
        description="per project: balance, reserved, available, budget ... (docs/payments.md)"
    )
    next: str | None = _next()


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    gateway: dict[str, Any]
    service: dict[str, Any] = Field(
        description="the projector's health answer: version, roles, position ..."
    )
