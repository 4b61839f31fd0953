"""The profile schema: a named, versioned recipe for a sandbox (``profiles/profile.<name>.yaml``).

Every section forbids unknown fields so that a typo is an error naming the
file and the field, never a silently ignored setting.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sandboxer.config.network_policy import NetworkPolicy, parse_egress
from sandboxer.durations import parse_duration
from sandboxer.errors import InvalidInput, InvalidNetworkPolicy

__all__ = [
    "InputSpec",
    "Isolation",
    "Network",
    "Placement",
    "Profile",
    "Resources",
    "Route",
    "RouteConstraints",
    "Setup",
    "Ttl",
    "Workspace",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # no .nan cap


def _check_duration(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_duration(value)
        except InvalidInput as exc:  # pydantic only wraps ValueError into a field error
            raise ValueError(exc.message) from None
    return value


class Isolation(_Strict):
    """How strongly the sandbox is separated from its host."""

    level: Literal["container", "microvm", "policy", "namespace"] = "namespace"


class Network(_Strict):
    """The network policy (docs/network.md): under ``deny`` only the ``egress`` entries are
    reachable; under ``allow`` everything is.

    Entries come as compact strings (``pypi.org:443``, ``10.1.2.0/24``, ``*.pypi.org``) or
    objects (``{to, ports, protocol}``) and are kept in their canonical compact form, so an
    older profile's ``host:port`` entries read as they always did.
    """

    default: Literal["deny", "allow"] = "deny"
    egress: list[str] = Field(default_factory=list)

    @field_validator("egress", mode="before")
    @classmethod
    def _canonical_entries(cls, raw: object) -> object:
        try:
            return [entry.compact() for entry in parse_egress(raw, "network.egress")]
        except InvalidNetworkPolicy as exc:  # pydantic only wraps ValueError into a field error
            raise ValueError(exc.message) from None

    def policy(self) -> NetworkPolicy:
        """The parsed policy (entries are canonical already, so this cannot fail)."""
        return NetworkPolicy(self.default, parse_egress(self.egress))

    @classmethod
    def of(cls, policy: NetworkPolicy) -> Network:
        return cls(default=policy.default, egress=[e.compact() for e in policy.egress])


class Workspace(_Strict):
    """Where the sandbox's files live and whether the sandbox may write them.

    ``mode`` ``mirror`` (an agent harness's checkout copied in, the copy the agent works
    on; nothing flows back) and ``remote`` (the files live in the sandbox only, read and
    written through exec and files) describe an agent's workspace (docs/profiles.md#workspace).
    ``access`` is enforced by the backends that can (ext.local: ``ro`` binds the workspace
    read-only, ``none`` binds none); on another backend anything but ``rw`` is a warning in
    ``ready`` saying it is not enforced.
    """

    mode: Literal["ephemeral", "persistent", "mirror", "remote"] = "ephemeral"
    access: Literal["rw", "ro", "none"] = "rw"


class Ttl(_Strict):
    """Lifetime limits, as durations (``90s``, ``15m``, ``2h``, ``1d``)."""

    default: str = "4h"
    max: str = "24h"
    idle_reap: str | None = None
    max_pause: str | None = None
    """The longest a sandbox may stay paused before it expires (default: no limit; the TTL
    clock stands still while paused)."""

    _durations = field_validator("default", "max", "idle_reap", "max_pause")(_check_duration)


class Resources(_Strict):
    """Limits enforced by the backend (cgroups for ext.local)."""

    cpu: float | None = Field(default=None, gt=0, description="CPU cores (fractional allowed)")
    memory_mb: int | None = Field(default=None, gt=0)
    disk_mb: int | None = Field(default=None, gt=0)
    pids: int | None = Field(default=None, gt=0, description="maximum number of processes")
    gpu: str | None = None


MAX_SETUP_COMMANDS = 32
MAX_SETUP_COMMAND = 4096


class Setup(_Strict):
    """Commands run inside the sandbox after it starts, and secrets to deliver to it."""

    instructions: list[str] = Field(
        default_factory=list,
        description="shell steps the backend itself runs while provisioning (ext.local, "
        "ext.vm-packer); their output is not recorded. Prefer 'commands'",
    )
    instructions_ref: str | None = Field(
        default=None,
        max_length=500,
        pattern=r"^(https://|file:/|repo:)[^\x00-\x1f]+$",
        description="where the consumer finds how to work in the sandbox (build steps, "
        "conventions): https://..., file:/PATH on the worker, or repo:PATH in the workspace. "
        "Metadata for the consumer: sandboxer shows it, never runs or fetches it",
    )
    commands: list[str] = Field(
        default_factory=list,
        max_length=MAX_SETUP_COMMANDS,
        description="shell commands the extension worker runs inside the sandbox through the "
        "backend's exec, in order, before 'ready'; each one's exit code and redacted output "
        "tail are in the ready event, and a non-zero exit fails the sandbox (setup_failed)",
    )
    command_timeout: str = Field(
        default="10m",
        description="how long each of 'commands' may run (90s, 10m, 1h); past it, it is "
        "stopped and the sandbox fails (setup_failed)",
    )

    _timeout = field_validator("command_timeout")(_check_duration)
    secret_refs: dict[str, str] = Field(
        default_factory=dict,
        description="NAME -> reference (env:VAR or file:PATH), resolved only inside the worker",
    )

    record_telemetry: bool = Field(
        default=False,
        description="record the host's telemetry (a host 'inspected' event) before "
        "provisioning and once the sandbox is ready, e.g. for a canary",
    )

    @field_validator("commands")
    @classmethod
    def _commands_are_short_text(cls, commands: list[str]) -> list[str]:
        for index, command in enumerate(commands):
            if not command.strip() or len(command) > MAX_SETUP_COMMAND or "\x00" in command:
                raise ValueError(
                    f"commands[{index}] must be a non-empty shell command of at most "
                    f"{MAX_SETUP_COMMAND} characters without NUL bytes"
                )
        return commands

    @field_validator("secret_refs")
    @classmethod
    def _refs_have_a_scheme(cls, refs: dict[str, str]) -> dict[str, str]:
        for name, ref in refs.items():
            if not ref.startswith(("env:", "file:")):
                raise ValueError(f"secret_refs.{name}: {ref!r} must start with env: or file:")
        return refs


class Placement(_Strict):
    """Hosts to try, in order: every ``prefer`` host, then every ``fallback`` host."""

    prefer: list[str] = Field(default_factory=list)
    fallback: list[str] = Field(default_factory=list)
    host_input: str | None = Field(
        default=None,
        description="an input whose value names the host (e.g. the VM to attach to); "
        "when given it overrides prefer and fallback",
    )


class RouteConstraints(_Strict):
    max_cost_per_hour: float | None = Field(default=None, ge=0)
    require_isolation: Literal["container", "microvm", "policy", "namespace"] | None = None
    region: str | None = None
    gpu: str | None = None
    snapshot: bool | None = None
    pause: bool | None = None


class Route(_Strict):
    """Let routing choose among candidate extensions instead of naming one."""

    strategy: Literal["prefer-self-hosted", "lowest-cost", "lowest-latency", "explicit"] = (
        "explicit"
    )
    candidates: list[str] = Field(min_length=1)
    constraints: RouteConstraints = Field(default_factory=RouteConstraints)


class Pool(_Strict):
    """Sandboxes kept made and unclaimed for this profile, so a create claims one instead of
    waiting for a spawn (docs/pools.md). Only on a backend whose declaration says
    ``capabilities.pool: true``; a profile that routes pools on none."""

    min_ready: int = Field(ge=0, le=1000, description="members kept ready")
    max: int = Field(ge=1, le=1000, description="most unclaimed members (ready or being made)")

    @model_validator(mode="after")
    def _bounds(self) -> Pool:
        if self.max < self.min_ready:
            raise ValueError(f"pool.max ({self.max}) is below pool.min_ready ({self.min_ready})")
        return self


class InputSpec(_Strict):
    """One ``--input k=v`` a create must or may pass."""

    type: Literal["string", "directory"] = Field(
        default="string",
        description="directory: a tree the client uploads (object:sha256:<hex>), or a worker "
        "path under SANDBOXER_INPUT_ROOTS; the worker vets it before any copy",
    )
    required: bool = False
    default: str | None = None
    description: str = ""


class Profile(_Strict):
    """A named, versioned sandbox recipe."""

    id: str = Field(pattern=r"^profile\.[a-z0-9][a-z0-9-]*$")
    version: int = Field(default=1, ge=1)
    description: str = ""
    extension: str | None = Field(default=None, pattern=r"^ext\.[a-z0-9][a-z0-9-]*$")
    route: Route | None = None
    image: str | None = Field(
        default=None,
        description="what a hosted backend starts the sandbox from: an E2B template, a "
        "Daytona snapshot, a container image for Modal",
    )
    isolation: Isolation = Field(default_factory=Isolation)
    network: Network = Field(default_factory=Network)
    workspace: Workspace = Field(default_factory=Workspace)
    scope_default: Literal["sandbox", "project", "actor"] = "sandbox"
    scope: Literal["session", "agent", "shared"] | None = Field(
        default=None,
        description="for an agent harness: a sandbox per harness session, per agent, or one "
        "shared by agents. 'session' and 'agent' require the create's consumer to name the "
        "session (consumer.session_id) or the harness (consumer.harness)",
    )
    ttl: Ttl = Field(default_factory=Ttl)
    resources: Resources = Field(default_factory=Resources)
    setup: Setup = Field(default_factory=Setup)
    placement: Placement = Field(default_factory=Placement)
    reachability: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    pool: Pool | None = None

    @model_validator(mode="after")
    def _extension_or_route(self) -> Profile:
        if (self.extension is None) == (self.route is None):
            raise ValueError("set exactly one of 'extension' (a fixed backend) or 'route'")
        if self.pool is not None and self.extension is None:
            raise ValueError("'pool' needs a fixed 'extension': members are made ahead of routing")
        return self

    def with_network(self, policy: NetworkPolicy) -> Profile:
        """This profile with the network policy in force for one sandbox: the profile itself
        when that is its own policy (as for most creates), so callers that remember a profile
        by identity (the pool keeper's digests) see the catalog's one object."""
        if policy == self.network.policy():
            return self
        return self.model_copy(update={"network": Network.of(policy)})

    def candidates(self) -> list[str]:
        """Extensions that may serve this profile, in the order routing considers them."""
        if self.extension is not None:
            return [self.extension]
        assert self.route is not None
        return list(self.route.candidates)
