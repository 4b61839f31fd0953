"""What a provider's spec accepts as an egress destination, for the doubles to hold creates to.

Written from the providers' own descriptions, not from sandboxer's policy module, so a
double disagrees with the compiler when the compiler is wrong.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["is_address", "is_cidr", "is_domain"]

_NAME = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}$")


def is_address(text: object) -> bool:
    """A bare IP address (``8.8.8.8``)."""
    try:
        ipaddress.ip_address(str(text))
    except ValueError:
        return False
    return isinstance(text, str)


def is_cidr(text: object) -> bool:
    """A CIDR block with its prefix length written out (``8.8.8.8/32``), host bits clear."""
    if not isinstance(text, str) or "/" not in text:
        return False
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError:
        return False
    return True


def is_domain(text: object) -> bool:
    """A domain name, or a wildcard over one (``*.example.com``)."""
    return isinstance(text, str) and len(text) <= 253 and bool(_NAME.match(text))
