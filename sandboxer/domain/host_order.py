"""Host order: which hosts to try for a sandbox, from the profile's placement, in order, and
which of them can take one without asking the host. Pure.

Placement (``workers/host_choice.py``) tries the hosts in this order, skipping each one
:func:`host_unusable` names, and probes the rest over SSH. Routing counts a backend on hosts
as having room only when one of its :func:`placement_hosts` is usable, so it does not choose
a backend whose hosts placement would all skip. (Whether a host answers only the probe
knows: when it finds every usable host down, the control worker routes the create again
without that backend, docs/routing.md#no-reachable-host.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sandboxer.config.profile import Placement

__all__ = ["HOSTS_FILE", "host_order", "host_unusable", "placement_hosts"]

HOSTS_FILE = "the hosts file"


def host_order(
    placement: Placement, requested: str | None, known: Sequence[str]
) -> list[tuple[str, str]]:
    """(host, why it is a candidate) in the order to try them.

    A requested host (``--host`` or ``SANDBOXER_HOST``) overrides the profile.
    Otherwise every ``prefer`` host, then every ``fallback`` host; a profile
    that names none may use any host in the hosts file.
    """
    if requested:
        return [(requested, "requested")]
    order: list[tuple[str, str]] = []
    for name in placement.prefer:
        order.append((name, "preferred"))
    for name in placement.fallback:
        if name not in placement.prefer:
            order.append((name, "fallback"))
    if not order:
        order = [(name, "any host") for name in sorted(known)]
    return order


def host_unusable(
    name: str, limits: Mapping[str, int | None], held: int, hosts_file: str = HOSTS_FILE
) -> str | None:
    """Why no sandbox can go on host ``name`` whatever its health (None: it can, if it
    answers). ``limits``: each host of the hosts file and its ``max_sandboxes`` (None: no
    limit; 0 drains it); ``held``: the backend's live sandboxes on it."""
    if name not in limits:
        return f"{name} is not in {hosts_file} (add it there, see docs/hosts.md)"
    limit = limits[name]
    if limit is not None and held >= limit:
        return f"{name} is full ({held} of its max_sandboxes {limit})"
    return None


def placement_hosts(
    placement: Placement,
    requested: str | None,
    limits: Mapping[str, int | None],
    live: Mapping[str, int],
) -> list[tuple[str, str | None]]:
    """Each host placement would try, in order, with why it cannot take a sandbox (None: it
    can, if it answers). ``live``: the backend's live sandboxes per host."""
    return [
        (name, host_unusable(name, limits, live.get(name, 0)))
        for name, _role in host_order(placement, requested, list(limits))
    ]
