"""Host-wide slots whose sandbox is gone: what a lost directory leaves behind.

A root-run sandbox holds a uid and, with network access, a link slot, each a file under
``/run/sandboxer`` (:mod:`.host_slots`) that only its teardown removes. A directory that
disappears any other way (removed by hand, a crash between steps, a test that never tore
down) leaves them taken until the machine reboots, and 65536 uids or the link slots run
out on a host that lives long enough. Those named by this root (its tag) and by no sandbox
directory of it are **leftovers**: ``inspect stale`` reports them, ``reap-stale --apply``
frees them (docs/ext-local.md#users-and-keyrings, "Leftover slots"). The rule
(:func:`find_leftovers`) is pure; :func:`scan_leftovers` reads the machine for it, for the
backend and for the fault suite's ``leaked_slots`` alike. Whether a process still runs as
the uid, or in the sandbox's cgroups, is the backend's to check before it calls one
unowned.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from sandboxer.domain.found import FoundSandbox
from sandboxer.extensions.local.egress import link_slots
from sandboxer.extensions.local.inventory import owners
from sandboxer.extensions.local.resource_names import owner_of, root_tag
from sandboxer.extensions.local.sandbox_uids import uid_slots
from sandboxer.extensions.local.workspace import POOL_DIR

__all__ = ["Leftover", "find_leftovers", "scan_leftovers"]


@dataclass(frozen=True)
class Leftover:
    """The slots a sandbox of this root holds, with no directory of it left."""

    sandbox_id: str
    uids: tuple[int, ...] = ()
    link_slots: tuple[int, ...] = ()

    def found(self) -> FoundSandbox:
        """As stale detection sees it: a sandbox with nothing alive, only its slots left."""
        held = [f"uid {uid}" for uid in self.uids]
        held += [f"link slot {slot}" for slot in self.link_slots]
        return FoundSandbox(
            sandbox_id=self.sandbox_id,
            alive=False,
            leftover=True,
            detail={
                "uids": list(self.uids),
                "link_slots": list(self.link_slots),
                "dead": f"its directory is gone, and {' and '.join(held)} still taken",
            },
        )


def find_leftovers(
    uids: Mapping[int, str], links: Mapping[int, str], tag: str, owners: Collection[str]
) -> list[Leftover]:
    """The slots in ``uids`` and ``links`` (slot -> the name its file holds) that the root
    tagged ``tag`` took for a sandbox not in ``owners`` (the ids its directories account
    for), by sandbox id. Another root's names, and names no root writes, are left out."""
    by_owner: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for index, held in enumerate((uids, links)):
        for slot, name in held.items():
            sandbox_id = owner_of(name, tag)
            if sandbox_id is not None and sandbox_id not in owners:
                by_owner[sandbox_id][index].append(slot)
    return [
        Leftover(sandbox_id, tuple(sorted(taken[0])), tuple(sorted(taken[1])))
        for sandbox_id, taken in sorted(by_owner.items())
    ]


def scan_leftovers(
    root: Path, *, uids_dir: Path, links_dir: Path, tag: str | None = None
) -> list[Leftover]:
    """:func:`find_leftovers` over this machine: the uid and link-slot files in ``uids_dir``
    and ``links_dir`` that the root ``root`` (tagged ``tag``, by default its own tag) took,
    against the directories under it and its pool (blocking). No process is looked at."""
    # The slot files before the directories: a sandbox's directory is made before its
    # slots are taken and removed after they are freed, so one made meanwhile is seen.
    uids = uid_slots(uids_dir).held()
    links = link_slots(links_dir).held()
    tag = root_tag(root) if tag is None else tag
    return find_leftovers(uids, links, tag, owners([root / POOL_DIR, root]))
