"""A compose project's named volumes in a snapshot, and back into a new stack before it starts.

A snapshot of a compose sandbox holds the project's directory and, under the
reserved directory :data:`VOLUMES_DIR` (``.sandboxer/volumes/<key>/``), the
contents of each named volume of the project, ``<key>`` being the volume's
key in the compose file's top-level ``volumes:`` (``data`` for the volume
``sbx-<id>_data``). They are read with ``docker|podman cp CONTAINER:PATH -``
from a container of the project that mounts the volume, as the containers
are (running; nothing is paused), so no image or tool is needed inside any
container.

A provision whose repository holds :data:`VOLUMES_DIR` (a restore of such a
snapshot, or a repository that ships seed data) runs ``up --no-start``
first, so compose itself creates the volumes (its names, its labels) and the
containers; copies each ``<key>/`` into the volume through the created
container that mounts it (``docker|podman cp DIR/. CONTAINER:PATH``), then
removes :data:`VOLUMES_DIR` from the sandbox's directory on the host, and
only then runs ``up -d``.

Names read from a tree are hostile: a key must match :data:`KEY_PATTERN` and
be a real directory, and every command is built from separately quoted
arguments.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sandboxer.domain.left_out import LeftOut
from sandboxer.errors import InvalidInput, RemoteCommandFailed
from sandboxer.extensions.compose_ssh import containers, engine
from sandboxer.extensions.ssh_targets import SHORT_TIMEOUT, Target
from sandboxer.ssh import Connection, remote
from sandboxer.ssh.fetch_tree import fetch_archive
from sandboxer.workspaces.extract import extract_host_tree
from sandboxer.workspaces.limits import ArchiveLimits

__all__ = [
    "KEY_PATTERN",
    "VOLUMES_DIR",
    "Mounted",
    "copy_out",
    "mounted_volumes",
    "project_volumes",
    "remove_seed",
    "seed",
    "seed_keys",
]

EXTENSION = "ext.compose-ssh"
RESERVED = ".sandboxer"
VOLUMES_DIR = f"{RESERVED}/volumes"
"""Where a snapshot keeps the named volumes, relative to the sandbox's directory."""
MIB = 1024 * 1024
KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""A volume key as compose accepts it (letters, digits, ``_``, ``.``, ``-``), not starting
with a punctuation character: nothing else is ever put on a command line."""
VOLUME_LABEL = "com.docker.compose.volume"
"""Set by docker-compose (not podman-compose) on the volumes it creates: the key."""
COPY_TIMEOUT = 1800.0

# The volumes engine $1 labels with $2, as `volume inspect` JSON, in one round trip.
_VOLUMES_SCRIPT = r"""
engine=$1 label=$2
ids=$("$engine" volume ls -q --filter "$label") || exit $?
if [ -z "$ids" ]; then echo '[]'; exit 0; fi
exec "$engine" volume inspect $ids
"""

# engine $1, then pairs (SOURCE_DIR, CONTAINER:PATH): copy each directory's contents in.
_SEED_SCRIPT = r"""
engine=$1; shift
while [ "$#" -ge 2 ]; do
  "$engine" cp "$1/." "$2" || exit $?
  shift 2
done
"""


def check_key(key: str) -> bool:
    return KEY_PATTERN.fullmatch(key) is not None


def seed_keys(repo: Path, sandbox_id: str) -> list[str]:
    """The volume keys the (local, vetted) repository holds under :data:`VOLUMES_DIR`.

    Raises :class:`InvalidInput` when the reserved directory is a symlink, or
    holds anything but directories with safe names.
    """
    reserved, volumes = repo / RESERVED, repo / VOLUMES_DIR
    if not volumes.exists() and not volumes.is_symlink():
        return []
    if reserved.is_symlink() or volumes.is_symlink():
        raise InvalidInput(
            f"the repo's {VOLUMES_DIR} must be a directory, not a symlink: it is reserved for "
            "the contents of the compose project's named volumes",
            sandbox_id=sandbox_id,
            extension=EXTENSION,
        )
    if not volumes.is_dir():
        return []
    keys = []
    for entry in sorted(volumes.iterdir()):
        if not check_key(entry.name) or entry.is_symlink() or not entry.is_dir():
            raise InvalidInput(
                f"the repo's {VOLUMES_DIR} holds {entry.name[:100]!r}: only directories named "
                "after a volume of the compose file (letters, digits, '_', '.', '-', not starting "
                "with '.', '_' or '-') may be there, one per named volume",
                sandbox_id=sandbox_id,
                extension=EXTENSION,
            )
        keys.append(entry.name)
    return keys


async def project_volumes(conn: Connection, item: Target, project: str) -> dict[str, str]:
    """The project's named volumes on the host, as {engine volume name: key}.

    The key is the volume's ``com.docker.compose.volume`` label (docker-compose)
    or its name without the ``<project>_`` prefix (podman-compose); a volume
    whose key cannot be told (a ``name:`` override under podman-compose) or is
    not safe is left out. External volumes carry no project label: never ours.
    """
    label = f"label={containers.PROJECT_LABEL}={project}"
    result = await remote.run(
        conn,
        ["sh", "-c", _VOLUMES_SCRIPT, "sh", containers.engine(item.config), label],
        env=item.config.env,
        timeout=SHORT_TIMEOUT,
        check=False,
    )
    if result.exit_status != 0:
        raise engine.engine_failed(item, "volume ls", result)
    try:
        items = json.loads(result.stdout) if result.stdout.strip() else []
    except ValueError:
        items = []
    found: dict[str, str] = {}
    for volume in items if isinstance(items, list) else []:
        if not isinstance(volume, dict) or not isinstance(volume.get("Name"), str):
            continue
        name: str = volume["Name"]
        labels = volume.get("Labels") if isinstance(volume.get("Labels"), dict) else {}
        key = (labels or {}).get(VOLUME_LABEL)
        if not isinstance(key, str) and name.startswith(f"{project}_"):
            key = name.removeprefix(f"{project}_")
        if isinstance(key, str) and check_key(key):
            found[name] = key
    return found


@dataclass(frozen=True)
class Mounted:
    """Where a volume can be reached: a container of the project that mounts it, and the path."""

    key: str
    volume: str
    container: str
    path: str

    @property
    def reference(self) -> str:
        """``CONTAINER:PATH`` for ``cp`` (a container id is hex, so never an option)."""
        return f"{self.container}:{self.path}"


def mounted_volumes(
    volumes: Mapping[str, str], found: Iterable[containers.Container]
) -> dict[str, Mounted]:
    """For each key of ``volumes`` ({name: key}), the first container (by name) mounting it,
    one that mounts it writable first: a seed copies in through it, and through a read-only
    mount every restore of the stack failed."""
    mounted: dict[str, Mounted] = {}
    ordered = sorted(found, key=lambda c: (c.name, c.id))
    for writable in (True, False):
        for container in ordered:
            for name, path in container.volumes:
                key = volumes.get(name)
                if (
                    key is None
                    or key in mounted
                    or (path in container.read_only) == writable
                    or not container.id
                    or not PurePosixPath(path).is_absolute()
                    or "\0" in path
                ):
                    continue
                mounted[key] = Mounted(key, name, container.id, path.rstrip("/") or "/")
    return mounted


async def _mounted(conn: Connection, item: Target, project: str) -> dict[str, Mounted]:
    volumes = await project_volumes(conn, item, project)
    if not volumes:
        return {}
    found = await engine.list_containers(conn, item, f"label={containers.PROJECT_LABEL}={project}")
    return mounted_volumes(volumes, found)


def _clear(destination: Path) -> None:
    """Remove what the sandbox itself left at ``destination``/:data:`VOLUMES_DIR`: in a
    snapshot of a compose sandbox that place holds the project's volumes and nothing else
    (a ``.sandboxer`` that is a symlink leads elsewhere in the tree, and is left alone)."""
    reserved = destination / RESERVED
    if reserved.is_symlink() or not reserved.is_dir():
        return
    volumes = destination / VOLUMES_DIR
    if volumes.is_symlink() or (volumes.exists() and not volumes.is_dir()):
        volumes.unlink()
    elif volumes.exists():
        shutil.rmtree(volumes)
    if not any(reserved.iterdir()):
        reserved.rmdir()


def _held(tree: Path) -> tuple[int, int]:
    """The bytes of the regular files and the entries below ``tree``, as a workspace archive
    counts them (links not followed)."""
    size = entries = 0
    for directory, dirs, files in os.walk(tree):
        entries += len(dirs) + len(files)
        for name in files:
            found = os.lstat(os.path.join(directory, name))
            if stat.S_ISREG(found.st_mode):
                size += found.st_size
    return size, entries


def _left(limits: ArchiveLimits, held: tuple[int, int]) -> ArchiveLimits:
    """What is left of the snapshot's ``limits`` once it holds ``held``."""
    size, entries = held
    return ArchiveLimits(
        max_bytes=max(limits.max_bytes - size, 0),
        max_entries=max(limits.max_entries - entries, 0),
    )


def _prepare(destination: Path) -> Path:
    """Make ``destination``/:data:`VOLUMES_DIR` a fresh, empty, real directory."""
    _clear(destination)
    reserved = destination / RESERVED
    if reserved.is_symlink() or (reserved.exists() and not reserved.is_dir()):
        reserved.unlink()
    volumes = destination / VOLUMES_DIR
    volumes.mkdir(parents=True)
    return volumes


async def copy_out(
    conn: Connection,
    item: Target,
    project: str,
    destination: Path,
    limits: ArchiveLimits,
    left_out: LeftOut,
) -> list[str]:
    """Copy each named volume of ``project`` that a container mounts into
    ``destination``/:data:`VOLUMES_DIR`/<key>/, adding what each copy left out to
    ``left_out`` (named as in the snapshot); returns the keys copied."""
    mounted = await _mounted(conn, item, project)
    if not mounted:
        await asyncio.to_thread(_clear, destination)
        return []
    volumes = await asyncio.to_thread(_prepare, destination)
    tool = containers.engine(item.config)
    # One snapshot, one limit: the directory and every volume share it. Each volume held to
    # the whole limit alone put the directory and N volumes (sparse files, free on the
    # host, arrive whole) on the worker's disk, N + 1 times the limit, before the packing
    # refused the sum.
    size, entries = await asyncio.to_thread(_held, destination)
    for key, where in sorted(mounted.items()):
        archive = destination.parent / f"{destination.name}.volume-{key}.tar"
        left = _left(limits, (size, entries + 1))  # + the volume's own directory
        try:
            await fetch_archive(
                conn,
                [tool, "cp", f"{where.reference}/.", "-"],
                archive,
                what=f"the volume {where.volume}",
                command=f"'{tool} cp' of the volume {where.volume} on host {item.name}",
                env=item.config.env,
                max_bytes=left.max_bytes,
                limit=f"the {left.max_bytes} bytes left of the snapshot's "
                f"{limits.max_bytes // MIB} MiB (SANDBOXER_UPLOAD_MAX_MB) once its directory "
                "and the volumes before it are in",
                timeout=COPY_TIMEOUT,
            )
            target = volumes / key
            target.mkdir()
            unpacked = await asyncio.to_thread(extract_host_tree, archive, target, left)
            left_out.merge(unpacked.left_out, under=f"{VOLUMES_DIR}/{key}")
        finally:
            archive.unlink(missing_ok=True)
        held = await asyncio.to_thread(_held, target)
        size, entries = size + held[0], entries + held[1] + 1
    return sorted(mounted)


async def seed(
    conn: Connection, item: Target, project: str, directory: str, keys: list[str]
) -> None:
    """Copy ``directory``/:data:`VOLUMES_DIR`/<key>/ into each volume through the (created,
    not started) container that mounts it; a key no container mounts is refused."""
    mounted = await _mounted(conn, item, project)
    missing = [key for key in keys if key not in mounted]
    if missing:
        raise InvalidInput(
            f"the repo's {VOLUMES_DIR} holds {', '.join(missing)}, but no service of the "
            f"compose project {project} mounts a named volume of that key (known: "
            f"{', '.join(sorted(mounted)) or 'none'}); remove the directory or declare the "
            "volume in the compose file and mount it in a service",
            extension=EXTENSION,
        )
    tool = containers.engine(item.config)
    argv = ["sh", "-c", _SEED_SCRIPT, "sh", tool]
    for key in keys:
        argv += [f"{directory}/{VOLUMES_DIR}/{key}", mounted[key].reference]
    result = await remote.run(conn, argv, env=item.config.env, timeout=COPY_TIMEOUT, check=False)
    if result.exit_status != 0:
        raise RemoteCommandFailed(
            f"'{tool} cp' of {VOLUMES_DIR} into the volumes of {project} on host {item.name} "
            f"exited with status {result.exit_status}",
            exit_status=result.exit_status,
            output_tail="\n".join((result.stdout + result.stderr).splitlines()[-20:]),
            extension=EXTENSION,
        )


async def remove_seed(conn: Connection, item: Target, directory: str) -> None:
    """Remove :data:`VOLUMES_DIR` from the sandbox's directory, and ``.sandboxer`` if that
    leaves it empty: the stack does not see the copies."""
    root = item.config.workspace_root
    await remote.remove_tree(conn, f"{directory}/{VOLUMES_DIR}", root=root)
    await remote.run(
        conn, ["rmdir", "--", f"{directory}/{RESERVED}"], timeout=SHORT_TIMEOUT, check=False
    )
