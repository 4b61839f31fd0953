"""How a client outside sandboxer reaches a ready sandbox: ``reachability.access``.

A ``ready`` event's ``reachability`` is the backend's own descriptor (its
fields differ per backend). Its ``access`` entry is the same for every
backend of one kind, so a consumer (a scheduler, an agent harness) handles
three shapes, not one per backend (docs/protocol.md#reachability):

``local-exec``
    The sandbox lives on a worker's machine and is entered only through
    sandboxer (``sandboxer exec``): no network endpoint.
``ssh``
    An SSH endpoint: ``host``, ``port``, ``user`` and the host key's
    ``host_key_fingerprint`` (``SHA256:...``, as ``ssh-keygen -lf`` prints
    it), plus, where the hosts file names them, the ``tunnel_ref`` of an SSH
    tunnel service and the ``ssh_principal`` an SSH CA issues certificates for.
``provider``
    A hosted provider's sandbox: the provider's own id for it (and its URL
    where the provider's API gives one); reach it with the provider's tools
    or through ``sandboxer exec``.

``access`` sits inside ``reachability`` (an open object), so adding it changed
no event type's shape: older events simply lack it, and a reader meeting an
unknown ``kind`` ignores the entry.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import msgspec

__all__ = [
    "ACCESS_KEY",
    "Access",
    "LocalExecAccess",
    "ProviderAccess",
    "SshAccess",
    "access_of",
    "exec_hint",
    "fingerprint_of_public_key",
    "provider_access",
]

ACCESS_KEY = "access"
"""The entry of ``reachability`` that holds the access shape."""


def exec_hint(sandbox_id: str) -> str:
    """How to run a command in any sandbox through sandboxer."""
    return f"sandboxer exec {sandbox_id} -- CMD"


class _Shape(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="kind"):
    def as_dict(self) -> dict[str, Any]:
        """The JSON object recorded in ``reachability.access`` (unset optionals left out)."""
        built = msgspec.to_builtins(self)
        assert isinstance(built, dict)
        return built


class LocalExecAccess(_Shape, frozen=True, kw_only=True, tag="local-exec"):
    """Entered through sandboxer only, on the worker machine ``node``."""

    node: str
    """The machine (hostname) the sandbox lives on; only its worker can enter it."""
    workdir: str
    """The sandbox's workspace directory, as seen on ``node``."""
    exec: str
    """The command that runs ``CMD`` inside it."""


class SshAccess(_Shape, frozen=True, kw_only=True, tag="ssh"):
    """An SSH endpoint on the host that holds the sandbox."""

    host: str
    """The address to connect to (name or IP), from the hosts file."""
    port: int
    user: str
    host_key_fingerprint: str | None = None
    """``SHA256:<base64>`` of the key the host presented to the worker, checked against the
    hosts file's ``known_hosts``/``host_key``. None when it could not be read."""
    host_key_verified: bool
    """False when the hosts file turns checking off (``insecure_accept_any_host_key``): the
    fingerprint is then only what the host presented, not something anyone vouched for."""
    host_name: str
    """The host's name in the hosts file."""
    workdir: str
    """The sandbox's directory on the host."""
    enter: str | None = None
    """For a sandbox inside the host (a compose project's containers): the command, run on
    the host after logging in, that runs ``CMD`` inside it (``SERVICE`` names the part)."""
    tunnel_ref: str | None = None
    """The hosts file's ``tunnel_ref``: the name an SSH tunnel service knows the host by."""
    ssh_principal: str | None = None
    """The hosts file's ``ssh_principal``: the principal an SSH CA issues user certificates
    for on this host (log in as ``user`` with a certificate carrying it)."""


class ProviderAccess(_Shape, frozen=True, kw_only=True, tag="provider"):
    """A hosted provider's sandbox, reached with the provider's tools or ``sandboxer exec``."""

    provider: str
    """The provider: ``e2b``, ``modal``, ``daytona``, ``saas-stub``."""
    provider_sandbox_id: str | None = None
    """The provider's own id of the sandbox (what its API and SDK take)."""
    url: str | None = None
    """Where the provider serves it, when its API says (E2B: ``{port}`` is a port number)."""
    exec: str
    """The command that runs ``CMD`` inside it through sandboxer."""


Access = LocalExecAccess | SshAccess | ProviderAccess


def access_of(reachability: dict[str, Any]) -> Access | None:
    """The access shape of a recorded ``reachability``; None when it has none (events from
    before it existed), or when its ``kind`` or fields are not ones this version knows."""
    found = reachability.get(ACCESS_KEY)
    if not isinstance(found, dict):
        return None
    try:
        shape: Access = msgspec.convert(found, type=Access)
    except msgspec.ValidationError:
        return None
    return shape


def fingerprint_of_public_key(line: str) -> str:
    """``SHA256:<base64, unpadded>`` of an OpenSSH public key line (``ssh-ed25519 AAAA...``),
    the form ``ssh-keygen -lf`` prints.

    Raises ValueError when the line holds no base64 key blob.
    """
    parts = line.split()
    if len(parts) < 2:
        raise ValueError("an OpenSSH public key line is '<type> <base64> [comment]'")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError as exc:
        raise ValueError(f"the key of type {parts[0]!r} is not valid base64") from exc
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def provider_access(
    provider: str, sandbox_id: str, provider_sandbox_id: str | None, *, url: str | None = None
) -> dict[str, Any]:
    """``{"access": {...}}`` of a hosted provider's sandbox, to merge into its descriptor."""
    access = ProviderAccess(
        provider=provider,
        provider_sandbox_id=provider_sandbox_id,
        url=url,
        exec=exec_hint(sandbox_id),
    )
    return {ACCESS_KEY: access.as_dict()}
