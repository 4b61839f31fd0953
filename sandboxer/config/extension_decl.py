"""The extension declaration schema (``extensions/ext.<name>.yaml``): what a backend offers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from sandboxer.config.network_policy import Enforcement
from sandboxer.config.profile import Pool

__all__ = ["Capabilities", "Capacity", "ExtensionDecl", "Pricing"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # no .inf price


class Capabilities(_Strict):
    isolation: list[Literal["container", "microvm", "policy", "namespace"]] = Field(min_length=1)
    snapshot: bool = False
    pause: bool = False
    gpu: bool = False
    exec: bool = False
    regions: list[str] = Field(default_factory=list)
    pool: bool = False
    """The backend keeps warm pools for profiles that ask (docs/pools.md)."""
    network: Enforcement = "none"
    """What of a network policy this backend enforces (docs/network.md#enforcement), weakest
    first: ``none`` (nothing: the sandbox has whatever network the backend gives),
    ``all-or-nothing`` (no network at all, or all of it), ``cidr`` (also an allowlist of
    addresses and CIDRs), ``domain`` (also of names and wildcard names). Routing sends a
    profile only to a backend whose level covers what its policy needs; a declaration that
    does not say is ``none``."""
    network_max_cidrs: int | None = Field(default=None, ge=0, le=1_000_000)
    """The most CIDR blocks the backend's address allowlist takes (Daytona's: 5), counted as
    the policy's address entries merged into blocks (``NetworkPolicy.address_blocks``);
    routing does not send a policy with more here. None: no limit."""
    network_ipv6: bool = True
    """Whether the backend's address allowlist takes IPv6 addresses and CIDRs; ``false``
    (Daytona's and E2B's: their docs speak of IPv4 only) keeps a policy naming one away."""


class Pricing(_Strict):
    """What one sandbox costs on this backend, in USD."""

    per_second: float = Field(default=0.0, ge=0)
    per_create: float = Field(default=0.0, ge=0)
    gpu_per_second: float = Field(default=0.0, ge=0)


class Capacity(_Strict):
    """How many sandboxes this backend may hold at once (per worker for ext.local); routing
    treats a backend at capacity as ineligible (docs/routing.md#capacity)."""

    max_sandboxes: int = Field(ge=0, le=1_000_000)


class ExtensionDecl(_Strict):
    """A backend declaration; ``entry_point`` is ``module:Class`` implementing the Extension protocol."""

    id: str = Field(pattern=r"^ext\.[a-z0-9][a-z0-9-]*$")
    description: str = ""
    kind: Literal["self-hosted", "saas"]
    enabled: bool = True
    uses_hosts: bool = Field(
        default=False, validation_alias=AliasChoices("uses_hosts", "placement")
    )
    """Runs on hosts from the hosts file: the control worker chooses one for each sandbox,
    following the profile's ``placement``. (``placement: true`` is the older spelling.)"""
    capabilities: Capabilities
    pricing: Pricing = Field(default_factory=Pricing)
    capacity: Capacity | None = None
    pool: Pool | None = None
    """A warm pool for every profile fixed to this backend that does not set its own (needs
    ``capabilities.pool``; docs/pools.md)."""
    """None: routing puts no limit on live sandboxes (a provider's quota still refuses)."""
    entry_point: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    settings: dict[str, Any] = Field(default_factory=dict)
    """What this backend needs to reach its provider or to behave as asked (endpoints,
    key references, a stub's latency and quota); the backend validates its own keys."""
