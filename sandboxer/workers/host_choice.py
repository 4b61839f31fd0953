"""Choosing the host for a sandbox: the profile's host order, each host's health checked over SSH.

The control worker calls this before it decides a create for an extension
that places on hosts; the chosen host and the reasons (hosts skipped and
why) go into the ``routed`` event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from sandboxer.config.hosts import HostConfig
from sandboxer.config.profile import Placement
from sandboxer.domain.host_order import HOSTS_FILE, host_order, host_unusable
from sandboxer.errors import Rejected, SandboxerError

__all__ = ["Probe", "Take", "choose_host", "ssh_probe"]

Probe = Callable[[str, HostConfig], Awaitable[str | None]]
"""Returns None when the host can take work, else why not."""
Take = Callable[[str, int], Awaitable[None]]
"""Takes one of a host's ``max_sandboxes`` places in the log, or raises Rejected (full)."""

PROBE_TIMEOUT = 5.0


async def ssh_probe(name: str, host: HostConfig) -> str | None:
    """A host is healthy when it accepts our key and runs a command."""
    from sandboxer.ssh import remote, session

    try:
        async with session(name, host, timeout=PROBE_TIMEOUT) as conn:
            await remote.run(conn, ["true"], env=host.env, timeout=PROBE_TIMEOUT)
    except SandboxerError as exc:
        return exc.message
    return None


async def choose_host(
    placement: Placement,
    requested: str | None,
    hosts: Mapping[str, HostConfig],
    probe: Probe = ssh_probe,
    *,
    hosts_file: str = HOSTS_FILE,
    live: Callable[[], Mapping[str, int]] | None = None,
    take: Take | None = None,
) -> tuple[str, str]:
    """The first healthy host in placement order with room, and the reason; Rejected when
    none is.

    ``hosts_file`` names the file in messages (e.g. "the hosts file /path/hosts.yaml").
    ``live``: the backend's live sandboxes on each host now, which a host's
    ``max_sandboxes`` caps: a full host is skipped before any probe, and a host is looked
    at again once its probe answers, since other creates may have taken its last place
    meanwhile. The caller holds the host it gets back before it awaits anything, so the
    last look and that hold are one step.
    ``take``: a healthy host with a limit has one of its places taken in the log
    (:mod:`sandboxer.workers.host_places`) before it is chosen, and is skipped when the
    log finds it full: ``live`` counts only this worker's routes beside the view, and
    another control worker may have filled the host meanwhile.
    """
    skipped: list[str] = []
    limits = {name: config.max_sandboxes for name, config in hosts.items()}

    def unusable(name: str) -> str | None:  # the rule routing applies too: it expects ours
        return host_unusable(name, limits, (live() if live else {}).get(name, 0), hosts_file)

    for name, role in host_order(placement, requested, list(hosts)):
        if (full := unusable(name)) is not None:
            skipped.append(full)
            continue
        why_not = await probe(name, hosts[name])
        if why_not is None and (full := unusable(name)) is not None:
            skipped.append(full)  # filled while it was probed
            continue
        limit = limits[name]
        if why_not is None and take is not None and limit is not None:
            try:
                await take(name, limit)
            except Rejected as taken:  # another control worker took its last place
                skipped.append(taken.reason)
                continue
        if why_not is None:
            reason = f"placed on {name} ({role})"
            if skipped:
                reason += "; skipped: " + "; ".join(skipped)
            return name, reason
        skipped.append(f"{name} unhealthy: {why_not}")
    if not skipped:
        raise Rejected(
            "no_host",
            "no hosts are configured; add them to the hosts file "
            "($SANDBOXER_HOME/hosts.yaml, see docs/hosts.md)",
        )
    raise Rejected("no_host", "no host can take this sandbox: " + "; ".join(skipped))
