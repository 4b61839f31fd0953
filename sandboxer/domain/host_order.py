"""Host order: which hosts to try for a sandbox, from the profile's placement, in order. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from sandboxer.config.profile import Placement

__all__ = ["host_order"]


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
