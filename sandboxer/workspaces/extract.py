"""Unpacking an uploaded archive on a worker, refusing anything that could reach outside.

The archive came from any bus client, so it is treated as hostile: only
directories, regular files and symlinks are accepted (no hard links,
devices or FIFOs), no name may be absolute, climb with ``..``, come twice or
nest deeper or run longer than :func:`~sandboxer.workspaces.limits.shape_refusal` allows,
nothing is written below a symlink, a symlink's target must stay inside by
the rule of :func:`link_stays_inside`, and the entry count (the directories
the names imply included) and total size are checked against the limits
before a byte is written. The extraction
itself runs under tarfile's ``data`` filter as a second line, which also
drops set-uid and other special mode bits. The archive is read through
:func:`~sandboxer.workspaces.untrusted_tar.open_untrusted`, whose header parsing
refuses an oversized or malformed pax or GNU long-name header rather than spend
minutes on it (CVE-2024-6232) with the worker's GIL held, a GNU sparse map past its
bound rather than fill the worker's memory, and a long chain of extended headers.

A tar that a host's own ``tar`` (or an engine's ``cp``) wrote of a tree a sandbox
wrote, read back for a snapshot, is unpacked by :func:`extract_host_tree`: the
same rules, except that what such a tree may hold and a workspace may not is
turned into what a workspace holds rather than failing the snapshot. A hard
link becomes a copy of the file it names (which must come earlier in the
archive), as ext.local's copy and every packed archive store it; FIFOs and
devices are left out, as everywhere (sockets never reach a tar), and reported
(:class:`~sandboxer.domain.left_out.LeftOut`) for the snapshot to tell its user.
"""

from __future__ import annotations

import logging
import posixpath
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from sandboxer.domain.left_out import Kind, LeftOut, shown_name
from sandboxer.errors import WorkspaceRefused
from sandboxer.workspaces.limits import MAX_PATH_BYTES, ArchiveLimits, shape_refusal
from sandboxer.workspaces.untrusted_tar import open_untrusted

__all__ = ["HostTree", "extract_archive", "extract_host_tree", "link_stays_inside"]

log = logging.getLogger(__name__)

_ACCEPTED = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE})
_SPECIAL: dict[bytes, Kind] = {
    tarfile.FIFOTYPE: "fifo",
    tarfile.CHRTYPE: "device",
    tarfile.BLKTYPE: "device",
}
"""Kinds a host's tar stores that no workspace holds: left out of a host's tree."""
_NAMED = 10
"""How many names of each kind a log line of :func:`extract_host_tree` gives."""


@dataclass(frozen=True)
class HostTree:
    """What :func:`extract_host_tree` unpacked: the entries written, the hard links written
    as copies and the FIFOs and devices left out (names as in the archive, normalised)."""

    entries: int
    copied: tuple[str, ...] = ()
    left_out: LeftOut = field(default_factory=LeftOut)


def link_stays_inside(name: str, target: str) -> bool:
    """Whether a symlink at ``name`` (a relative path in a tree) pointing at ``target`` stays in
    the tree, whatever the tree's other symlinks are.

    The target must be relative, its ``..`` parts must all come first, and there may be no
    more of them than directories above the link. Collapsing ``x/..`` as text (normpath) is
    only true when ``x`` is a real directory; in an archive ``x`` may be, or become once a
    later entry is unpacked, a symlink: with ``z -> .``, ``z/z/q/../../..`` climbs out. This
    one rule serves both the worker's unpacking and the client's packing, so that packing
    never produces what a worker refuses.
    """
    if not target or posixpath.isabs(target):
        return False
    parts = [part for part in target.split("/") if part not in ("", ".")]
    climbs = 0
    while climbs < len(parts) and parts[climbs] == "..":
        climbs += 1
    if ".." in parts[climbs:]:
        return False
    return climbs <= posixpath.normpath(name).count("/")


def _check_member(
    member: tarfile.TarInfo, seen: set[str], links: set[str], parents: set[str]
) -> None:
    """Refuse ``member`` unless it is safe given the entries before it: ``seen`` holds their
    names, ``links`` their symlinks, ``parents`` every directory something is written below."""
    name = member.name
    parts = name.split("/")
    if member.type not in _ACCEPTED:
        raise WorkspaceRefused(
            f"the workspace archive holds {name!r} of a kind a workspace may not hold "
            "(only directories, regular files and symlinks are accepted)"
        )
    path = posixpath.normpath(name)
    if (
        not name
        or posixpath.isabs(name)
        or ".." in parts
        or "\0" in name
        or (path == "." and not member.isdir())
    ):
        raise WorkspaceRefused(f"the workspace archive holds an unsafe name {name[:200]!r}")
    # Refused before a byte is written: deeper, the unpack or a backend's copy failed half-way
    # (PATH_MAX, or RecursionError in a walk that recurses per level).
    shape = shape_refusal(path)
    if shape is not None:
        raise WorkspaceRefused(f"the workspace archive's {name[:200]!r} {shape}")
    # A name that comes twice could turn a checked directory into a link, or the reverse.
    if path in seen:
        raise WorkspaceRefused(f"the workspace archive holds {name[:200]!r} twice")
    seen.add(path)
    # Nothing is written through a symlink of the archive, whichever comes first: a packed
    # tree never holds an entry below a link, and every directory above a link being a real
    # one is what makes link_stays_inside's count of ``..`` hold.
    parent = posixpath.dirname(path)
    while parent:
        if parent in links:
            raise WorkspaceRefused(
                f"the workspace archive writes {name[:200]!r} through its symlink {parent!r}"
            )
        parents.add(parent)
        parent = posixpath.dirname(parent)
    if member.issym():
        if path in parents:
            raise WorkspaceRefused(
                f"the workspace archive makes {name[:200]!r} a symlink after writing below it"
            )
        links.add(path)
        target = len(member.linkname.encode("utf-8", "surrogateescape"))
        if target > MAX_PATH_BYTES:
            raise WorkspaceRefused(
                f"the workspace archive holds a symlink {name[:200]!r} whose target is {target} "
                f"bytes long, more than the {MAX_PATH_BYTES} a workspace path may be"
            )
        if not link_stays_inside(path, member.linkname):
            raise WorkspaceRefused(
                f"the workspace archive holds a symlink {name[:200]!r} -> "
                f"{member.linkname[:200]!r} that leaves the workspace, or could once other links "
                "are unpacked: a target must be relative, with its '..' parts only at its start "
                "(../x, not sub/../x) and no more of them than the directories above the link"
            )


def _as_copy(member: tarfile.TarInfo, files: dict[str, tarfile.TarInfo]) -> tarfile.TarInfo:
    """The hard link ``member`` as a regular file of its own, with the contents (and mode)
    of the earlier regular file of the archive it names: nothing links to the disk."""
    original = files.get(posixpath.normpath(member.linkname))
    if original is None:
        raise WorkspaceRefused(
            f"the workspace archive holds a hard link {member.name[:200]!r} to "
            f"{member.linkname[:200]!r}, which is not a regular file earlier in the archive"
        )
    return original.replace(name=member.name, deep=False)


def _count_made(path: str, made: set[str], limits: ArchiveLimits) -> None:
    """Add ``path`` and the directories above it to ``made``, refused past the entry limit.

    An entry's name makes every directory above it that no entry of its own names: counting
    only the entries let 200 of them, each ``xN/d/d/.../f`` 250 deep, make 50,400 directories
    under a limit of 1000, and the default limit's 200,000 some fifty million inodes of the
    worker's disk, from an archive of 400 MiB."""
    while path and path not in made:  # a directory already made has its parents made too
        made.add(path)
        path = posixpath.dirname(path)
    if len(made) > limits.max_entries:
        raise WorkspaceRefused(
            f"the workspace archive makes more than {limits.max_entries} entries (files, links, "
            "and directories, those its names imply included)"
        )


def extract_archive(archive: Path, destination: Path, limits: ArchiveLimits) -> int:
    """Unpack ``archive`` (a plain tar) into the empty directory ``destination``.

    Returns the number of entries; raises :class:`WorkspaceRefused` before
    writing anything when the archive breaks a rule or a limit.
    """
    return _extract(archive, destination, limits, host_tree=False).entries


def extract_host_tree(archive: Path, destination: Path, limits: ArchiveLimits) -> HostTree:
    """:func:`extract_archive` for a host's tar of a sandbox's tree, read for a snapshot:
    hard links are unpacked as copies and FIFOs and devices are left out (and logged)."""
    unpacked = _extract(archive, destination, limits, host_tree=True)
    if unpacked.copied or unpacked.left_out:
        log.info(
            "unpacked into %s: %d hard links as copies (%s); %s",
            destination,
            len(unpacked.copied),
            ", ".join(shown_name(name) for name in unpacked.copied[:_NAMED]),
            "; ".join(unpacked.left_out.warnings()) or "nothing left out",
        )
    return unpacked


def _extract(
    archive: Path, destination: Path, limits: ArchiveLimits, *, host_tree: bool
) -> HostTree:
    copied: list[str] = []
    left_out = LeftOut()
    try:
        with open_untrusted(archive) as tar:
            members = []
            seen: set[str] = set()
            links: set[str] = set()
            parents: set[str] = set()
            files: dict[str, tarfile.TarInfo] = {}
            made: set[str] = set()  # the entries, and the directories their names imply
            total = read = 0
            for found in tar:
                read += 1
                if read > limits.max_entries:
                    raise WorkspaceRefused(
                        f"the workspace archive has more than {limits.max_entries} entries"
                    )
                if host_tree and found.type in _SPECIAL:
                    left_out.add(_SPECIAL[found.type], posixpath.normpath(found.name))
                    continue
                member = _as_copy(found, files) if host_tree and found.islnk() else found
                if member is not found:
                    copied.append(posixpath.normpath(member.name))
                _check_member(member, seen, links, parents)
                _count_made(posixpath.normpath(member.name), made, limits)
                if member.isreg():
                    files[posixpath.normpath(member.name)] = member
                members.append(member)
                total += member.size
                if total > limits.max_bytes:
                    raise WorkspaceRefused(
                        f"the workspace archive unpacks to more than "
                        f"{limits.max_bytes // (1024 * 1024)} MiB (SANDBOXER_UPLOAD_MAX_MB)"
                    )
            tar.extractall(destination, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise WorkspaceRefused(f"the workspace archive is unsafe: {exc}") from None
    except tarfile.TarError as exc:
        raise WorkspaceRefused(f"the workspace archive is not a readable tar: {exc}") from None
    except RecursionError:
        # A backstop: tarfile reads each extended header one level deeper, and
        # untrusted_tar refuses a chain long before the stack runs out.
        raise WorkspaceRefused(
            "the workspace archive nests its headers too deep to be read"
        ) from None
    return HostTree(len(members), tuple(copied), left_out)
