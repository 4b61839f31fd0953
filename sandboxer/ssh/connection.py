"""Opening SSH connections to the hosts in the hosts file.

Everything a connection uses comes from the :class:`HostConfig`, nothing
from the machine's SSH setup: no ``~/.ssh/config``, no agent, no default
keys, no passwords. That keeps a worker's behaviour the same on every
machine and stops a stray agent key from being offered to a host. The
host's key is always checked against ``known_hosts`` and/or ``host_key``
unless the hosts file explicitly says ``insecure_accept_any_host_key``.

asyncssh's and the socket layer's errors are mapped here to
:class:`HostKeyRejected` and :class:`HostUnreachable`, with messages that
name the host and say what to change. Messages carry paths, never keys.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from sandboxer.config.hosts import HostConfig
from sandboxer.errors import HostKeyRejected, HostUnreachable

if TYPE_CHECKING:
    # asyncssh (and the cryptography it loads, ~15 MB) is imported by the functions that
    # talk SSH, on first use: `up` runs the SSH backends with no hosts, which never do.
    import asyncssh

__all__ = [
    "Connection",
    "connect",
    "host_key_line",
    "known_hosts_text",
    "presented_host_key",
    "session",
]

log = logging.getLogger(__name__)

Connection: TypeAlias = "asyncssh.SSHClientConnection"
"""An open, authenticated connection to a host. Outside this package it is only passed
back to the functions here: nothing else in sandboxer calls asyncssh."""

KEEPALIVE_INTERVAL = 15.0
KEEPALIVE_COUNT_MAX = 4


def _where(name: str, host: HostConfig) -> str:
    return f"host {name} ({host.address}:{host.port})"


def host_key_line(host: HostConfig) -> str:
    """``host.host_key`` as a known_hosts line for its address and port.

    OpenSSH writes hosts on a non-default port as ``[address]:port``.
    """
    assert host.host_key is not None
    pattern = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
    return f"{pattern} {host.host_key.strip()}"


async def known_hosts_text(name: str, host: HostConfig) -> str | None:
    """The known_hosts entries trusted for ``host``, or ``None`` when checking is off.

    Both sources count when both are set: the ``known_hosts`` file's lines
    and a line made from ``host_key``. ``insecure_accept_any_host_key`` turns
    checking off even when either is set, because it is the explicit choice.
    """
    import asyncssh

    if host.insecure_accept_any_host_key:
        return None
    parts: list[str] = []
    path = host.known_hosts_path()
    if path is not None:
        try:
            parts.append(await asyncio.to_thread(path.read_text, encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise HostKeyRejected(
                f"{_where(name, host)}: cannot read its known_hosts file {path} ({exc}); "
                "create it (e.g. ssh-keyscan -p PORT ADDRESS > FILE, then compare the "
                "fingerprint with the host's own) or set host_key in the hosts file"
            ) from exc
    if host.host_key is not None:
        if "\n" in host.host_key or "\r" in host.host_key:
            raise HostKeyRejected(
                f'{_where(name, host)}: host_key must be a single line like "ssh-ed25519 AAAA..."'
            )
        try:
            asyncssh.import_public_key(host.host_key)
        except (ValueError, asyncssh.KeyImportError) as exc:
            raise HostKeyRejected(
                f"{_where(name, host)}: host_key is not a valid public key ({exc}); it must "
                'look like "ssh-ed25519 AAAA..." as in the host\'s '
                "/etc/ssh/ssh_host_ed25519_key.pub"
            ) from exc
        parts.append(host_key_line(host))
    return "\n".join(part.rstrip("\n") for part in parts) + "\n"


def _trusted(name: str, host: HostConfig, text: str | None) -> asyncssh.SSHKnownHosts | None:
    import asyncssh

    if text is None:
        return None
    try:
        return asyncssh.import_known_hosts(text)
    except (ValueError, asyncssh.KeyImportError) as exc:
        raise HostKeyRejected(
            f"{_where(name, host)}: {host.known_hosts} is not valid known_hosts data ({exc}); "
            "fix or regenerate it (ssh-keyscan, then compare fingerprints)"
        ) from exc


async def _client_key(name: str, host: HostConfig) -> asyncssh.SSHKey:
    import asyncssh

    path = host.key_path()
    if path is None:
        raise HostUnreachable(
            f"{_where(name, host)}: no key_file is set in the hosts file; sandboxer uses "
            "only the key named there (no agent, no default keys): add e.g. "
            "key_file: ~/.ssh/id_ed25519 (see docs/hosts.md)"
        )
    try:
        return await asyncio.to_thread(asyncssh.read_private_key, str(path))
    except (OSError, asyncssh.KeyImportError, ValueError) as exc:
        raise HostUnreachable(
            f"{_where(name, host)}: cannot load the private key {path} ({exc}); "
            "it must exist, be readable and be unencrypted (sandboxer runs unattended); "
            "see docs/hosts.md"
        ) from exc


def _unreachable(
    name: str, host: HostConfig, exc: BaseException, timeout: float, key: Path | None
) -> HostUnreachable:
    import asyncssh

    where = _where(name, host)
    if isinstance(exc, TimeoutError):
        cause = (
            f"no SSH answer within {timeout:g}s; check that the host is up, the "
            "address and port are right and no firewall drops the connection"
        )
    elif isinstance(exc, ConnectionRefusedError):
        cause = (
            f"connection refused on port {host.port}; check that sshd is running "
            "there and listening on that port"
        )
    elif isinstance(exc, socket.gaierror):
        cause = (
            f"cannot resolve {host.address!r} ({exc.strerror}); fix the address in "
            "the hosts file or the DNS"
        )
    elif isinstance(exc, asyncssh.PermissionDenied):
        cause = (
            f"the host refused key {key} for user {host.user}; add {key}.pub to that "
            "user's authorized_keys on the host, or fix user/key_file in the hosts file"
        )
    elif isinstance(exc, asyncssh.DisconnectError):
        cause = f"the SSH handshake failed ({exc.reason}); check sshd's log on the host"
    else:
        cause = f"{type(exc).__name__}: {exc}; check that the host is up and reachable"
    return HostUnreachable(f"{where}: {cause}")


async def connect(name: str, host: HostConfig, *, timeout: float = 10.0) -> Connection:
    """An authenticated SSH connection to ``host``, its key verified.

    Raises :class:`HostKeyRejected` when the host's key is unknown or does
    not match, :class:`HostUnreachable` for everything else that stops the
    connection (refused, timed out, unresolvable, our key refused).
    """
    import asyncssh

    trusted = _trusted(name, host, await known_hosts_text(name, host))
    if trusted is None:
        log.warning(
            "%s: insecure_accept_any_host_key is set, so its host key is NOT checked; "
            "anyone on the network path can impersonate it",
            _where(name, host),
        )
    key = await _client_key(name, host)
    try:
        async with asyncio.timeout(timeout):
            return await asyncssh.connect(
                host.address,
                host.port,
                username=host.user,
                known_hosts=trusted,
                client_keys=[key],
                # Nothing from the local SSH setup: no config file, agent or
                # default keys; only public-key authentication.
                config=None,
                agent_path=None,
                agent_forwarding=False,
                x509_trusted_certs=None,
                x509_trusted_cert_paths=[],
                pkcs11_provider=None,
                preferred_auth="publickey",
                password_auth=False,
                kbdint_auth=False,
                gss_auth=False,
                gss_kex=False,
                host_based_auth=False,
                connect_timeout=timeout,
                keepalive_interval=KEEPALIVE_INTERVAL,
                keepalive_count_max=KEEPALIVE_COUNT_MAX,
            )
    except asyncssh.HostKeyNotVerifiable as exc:
        source = host.known_hosts or "the host_key in the hosts file"
        raise HostKeyRejected(
            f"{_where(name, host)}: its host key does not match {source} (or is not listed "
            "there); this can mean someone is impersonating the host. If the host was "
            f"reinstalled, verify its new key out of band and update {source}"
        ) from exc
    except (TimeoutError, OSError, asyncssh.Error) as exc:
        raise _unreachable(name, host, exc, timeout, host.key_path()) from exc


def presented_host_key(conn: Connection) -> str | None:
    """The host key ``conn``'s server presented, as an OpenSSH public key line (checked
    against the hosts file unless it turns checking off); None when asyncssh has none."""
    key = conn.get_server_host_key()
    if key is None:
        return None
    return key.export_public_key("openssh").decode().strip()


@asynccontextmanager
async def session(
    name: str, host: HostConfig, *, timeout: float = 10.0
) -> AsyncIterator[Connection]:
    """:func:`connect` for the length of an ``async with`` block, closed afterwards."""
    conn = await connect(name, host, timeout=timeout)
    try:
        yield conn
    finally:
        conn.close()
        await conn.wait_closed()
