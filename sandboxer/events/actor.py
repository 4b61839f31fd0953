"""Who asks: the actor every command and event carries."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "SYSTEM_ACTOR",
    "Actor",
]


class Actor(msgspec.Struct, frozen=True, kw_only=True):
    """Who asked: an administrator (``adm``), an agent (``agt``) or an automation (``atm``).

    Inside events it tolerates fields it does not know (a later version may
    add some); commands check their actor strictly when they are parsed.
    """

    type: Literal["adm", "agt", "atm"]
    id: str
    project: str | None = None


SYSTEM_ACTOR = Actor(type="atm", id="sandboxer")
