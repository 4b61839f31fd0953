"""Host-wide slots and groups whose sandbox is gone: what a lost directory leaves behind.

A root-run sandbox holds a uid and, with network access, a link slot, each a file under
``/run/sandboxer`` (:mod:`.host_slots`) that only its teardown removes, and its cgroups
(``pids`` and ``freezer`` at least, :mod:`.cgroups`), which only its teardown removes too.
A directory that disappears any other way (removed by hand, a crash between steps, a test
that never tore down) leaves them until the machine reboots: 65536 uids or the link slots
run out on a host that lives long enough, and the groups pile up in the kernel's
hierarchies. Those named by this root (its tag) and by no sandbox directory of it are
**leftovers**: ``inspect stale`` reports them, ``reap-stale --apply`` frees them
(docs/ext-local.md#users-and-keyrings, "Leftover slots"). The rule (:func:`find_leftovers`)
is pure; :func:`scan_leftovers` reads the machine for it, for the backend and for the fault
suite's ``leaked_slots`` alike. Whether a process still runs as the uid, or in the
sandbox's cgroups, is the backend's to check before it calls one unowned.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from sandboxer.domain.found import FoundSandbox
from sandboxer.extensions.local.cgroups import CGROUP_BASE, groups_by_name
from sandboxer.extensions.local.egress import link_slots
from sandboxer.extensions.local.inventory import owners
from sandboxer.extensions.local.resource_names import owner_of, root_tag
from sandboxer.extensions.local.sandbox_uids import uid_slots
from sandboxer.extensions.local.workspace import POOL_DIR

__all__ = ["Leftover", "find_leftovers", "scan_leftovers"]


@dataclass(frozen=True)
class Leftover:
    """The slots and groups a sandbox of this root holds, with no directory of it left."""

    sandbox_id: str
    uids: tuple[int, ...] = ()
    link_slots: tuple[int, ...] = ()
    cgroups: tuple[str, ...] = ()
    """Its groups' directories, one per hierarchy it has one in."""

    def found(self) -> FoundSandbox:
        """As stale detection sees it: a sandbox with nothing alive, only its slots left."""
        held = [f"uid {uid}" for uid in self.uids]
        held += [f"link slot {slot}" for slot in self.link_slots]
        held += [f"cgroup {path}" for path in self.cgroups]
        return FoundSandbox(
            sandbox_id=self.sandbox_id,
            alive=False,
            leftover=True,
            detail={
                "uids": list(self.uids),
                "link_slots": list(self.link_slots),
                "cgroups": list(self.cgroups),
                "dead": f"its directory is gone, and {' and '.join(held)} still taken",
            },
        )


def find_leftovers(
    uids: Mapping[int, str],
    links: Mapping[int, str],
    tag: str,
    owners: Collection[str],
    groups: Mapping[str, Collection[Path]] | None = None,
) -> list[Leftover]:
    """The slots in ``uids`` and ``links`` (slot -> the name its file holds), and the groups
    in ``groups`` (name -> its directories), that the root tagged ``tag`` made for a sandbox
    not in ``owners`` (the ids its directories account for), by sandbox id. Another root's
    names, and names no root writes, are left out."""

    def lost(name: str) -> str | None:
        sandbox_id = owner_of(name, tag)
        return sandbox_id if sandbox_id is not None and sandbox_id not in owners else None

    uids_of: dict[str, list[int]] = defaultdict(list)
    links_of: dict[str, list[int]] = defaultdict(list)
    groups_of: dict[str, list[str]] = defaultdict(list)
    for into, held in ((uids_of, uids), (links_of, links)):
        for slot, name in held.items():
            if (sandbox_id := lost(name)) is not None:
                into[sandbox_id].append(slot)
    for name, directories in (groups or {}).items():
        if (sandbox_id := lost(name)) is not None:
            groups_of[sandbox_id] += map(str, directories)
    return [
        Leftover(
            sandbox_id,
            tuple(sorted(uids_of[sandbox_id])),
            tuple(sorted(links_of[sandbox_id])),
            tuple(sorted(groups_of[sandbox_id])),
        )
        for sandbox_id in sorted({*uids_of, *links_of, *groups_of})
    ]


def scan_leftovers(
    root: Path,
    *,
    uids_dir: Path,
    links_dir: Path,
    tag: str | None = None,
    cgroup_base: Path = CGROUP_BASE,
) -> list[Leftover]:
    """:func:`find_leftovers` over this machine: the uid and link-slot files in ``uids_dir``
    and ``links_dir``, and the groups under ``cgroup_base``, that the root ``root`` (tagged
    ``tag``, by default its own tag) made, against the directories under it and its pool
    (blocking). No process is looked at."""
    # The slot files and groups before the directories: a sandbox's directory is made
    # before its slots are taken and its groups made, and removed after they are freed and
    # removed, so one made meanwhile is seen.
    uids = uid_slots(uids_dir).held()
    links = link_slots(links_dir).held()
    groups = groups_by_name(cgroup_base)
    tag = root_tag(root) if tag is None else tag
    return find_leftovers(uids, links, tag, owners([root / POOL_DIR, root]), groups)
