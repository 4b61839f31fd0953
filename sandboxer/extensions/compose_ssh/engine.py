"""Asking a host's container engine (docker or podman) about, and removing, our containers.

Readiness and listing read containers through the engine rather than through
compose (see :mod:`.containers` for why). Every call runs with the host's
``env`` (e.g. ``DOCKER_HOST``); a host without the engine holds nothing of
ours, so "command not found" reads as no containers.
"""

from __future__ import annotations

from collections.abc import Sequence

from sandboxer.errors import RemoteCommandFailed
from sandboxer.extensions.compose_ssh import containers
from sandboxer.extensions.ssh_targets import SHORT_TIMEOUT, Target
from sandboxer.ssh import Connection, deadline, remote

__all__ = [
    "DOWN_TIMEOUT",
    "ENGINE_MISSING",
    "Sightings",
    "list_containers",
    "list_containers_twice",
    "owned_containers",
    "sweep",
    "sweep_argv",
]

EXTENSION = "ext.compose-ssh"
DOWN_TIMEOUT = 300.0
ENGINE_MISSING = 127

# Containers matching the filters ($2...) of engine $1, as `inspect` JSON, in one
# round trip. A container removed between ps and inspect makes inspect exit 1
# with the others still printed.
_CONTAINERS_SCRIPT = r"""
engine=$1; shift
ids=$("$engine" ps -aq "$@") || exit $?
if [ -z "$ids" ]; then echo '[]'; exit 0; fi
exec "$engine" inspect $ids
"""

# Removes what engine $1 labels with $2: containers always; with $3 = 1 also
# networks, volumes and podman's pod $4 (what compose down would have removed), and
# the images named $5<service> (podman: localhost/$5<service>): compose names an image
# it builds after the project and labels it with nothing of it. An image that will not
# go (another container uses it) is left; each goes by its name, so one tagged with
# other names too keeps them.
_SWEEP_SCRIPT = r"""
engine=$1 label=$2 thorough=$3 pod=$4 built=$5
ids=$("$engine" ps -aq --filter "$label") || exit $?
if [ -n "$ids" ]; then "$engine" rm -f -v $ids >/dev/null || exit $?; fi
[ "$thorough" = 1 ] || exit 0
if [ "$engine" = podman ]; then podman pod rm -f --ignore "$pod" >/dev/null 2>&1; fi
ids=$("$engine" network ls -q --filter "$label") || exit $?
if [ -n "$ids" ]; then "$engine" network rm $ids >/dev/null || exit $?; fi
ids=$("$engine" volume ls -q --filter "$label") || exit $?
if [ -n "$ids" ]; then "$engine" volume rm -f $ids >/dev/null || exit $?; fi
refs=$("$engine" images --format '{{.Repository}}:{{.Tag}}') || exit $?
for ref in $refs; do
  case "$ref" in
    "$built"*:"<none>" | localhost/"$built"*:"<none>") ;;
    "$built"* | localhost/"$built"*) "$engine" rmi "$ref" >/dev/null 2>&1 ;;
  esac
done
exit 0
"""


# The same listing twice, $2 seconds apart on the host, in one round trip (readiness
# needs two sightings; each remote command costs the host a login shell). With more
# arguments after the label $3, that command runs first (compose's `up -d`, its output
# sent to stderr), and its failure is the script's exit status. Each listing is followed
# by a line "@@sbx-status N" with its exit status.
_TWICE_SCRIPT = r"""
engine=$1 pause=$2 label=$3
shift 3
if [ "$#" -gt 0 ]; then "$@" >&2 || exit $?; fi
list() {
  ids=$("$engine" ps -aq --filter "$label") || return $?
  if [ -z "$ids" ]; then echo '[]'; return 0; fi
  "$engine" inspect $ids
}
list; echo "@@sbx-status $?"
sleep "$pause"
list; echo "@@sbx-status $?"
"""
_STATUS_LINE = "@@sbx-status "


def _filter_args(filters: tuple[str, ...]) -> list[str]:
    return [word for value in filters for word in ("--filter", value)]


def _listed(item: Target, result: remote.RemoteResult) -> list[containers.Container]:
    if result.exit_status == 0 or result.stdout.lstrip().startswith("["):
        return containers.parse_inspect(result.stdout)
    if result.exit_status == ENGINE_MISSING:
        return []
    raise engine_failed(item, "ps", result)


async def list_containers(
    conn: Connection, item: Target, *filters: str
) -> list[containers.Container]:
    """Containers matching ``--filter`` values (none when the host has no engine)."""
    argv = ["sh", "-c", _CONTAINERS_SCRIPT, "sh", containers.engine(item.config)]
    argv += _filter_args(filters)
    result = await remote.run(conn, argv, env=item.config.env, timeout=SHORT_TIMEOUT, check=False)
    return _listed(item, result)


Sightings = tuple[list[containers.Container], list[containers.Container]]
"""Two listings of the same containers, taken some time apart on the host."""


async def list_containers_twice(
    conn: Connection,
    item: Target,
    pause: float,
    label: str,
    *,
    first: Sequence[str] = (),
    cwd: str | None = None,
    timeout: float = SHORT_TIMEOUT,
) -> Sightings:
    """Containers with ``label``, listed twice ``pause`` seconds apart on the host, in one
    command; after the command ``first`` when given (run in ``cwd``), whose non-zero exit
    is :class:`RemoteCommandFailed` with its status and newest output."""
    argv = ["sh", "-c", _TWICE_SCRIPT, "sh", containers.engine(item.config)]
    argv += [deadline.seconds_text(pause), label, *first]
    result = await remote.run(
        conn, argv, env=item.config.env, cwd=cwd, timeout=timeout + pause, check=False
    )
    if result.exit_status != 0 and first:
        raise RemoteCommandFailed(
            f"{first[0]!r} on host {item.name} exited with status {result.exit_status}",
            exit_status=result.exit_status,
            # Not cut to lines here: compose may print secrets, and ssh_checks must redact first.
            output_tail=remote.output_window(result.stdout, result.stderr),
            extension=EXTENSION,
        )
    if result.exit_status != 0:  # the script itself failed (its listings' statuses are lines)
        raise engine_failed(item, "ps", result)
    listings: list[list[containers.Container]] = []
    chunk: list[str] = []
    for line in result.stdout.splitlines():
        if not line.startswith(_STATUS_LINE):
            chunk.append(line)
            continue
        status = int(line.removeprefix(_STATUS_LINE).strip() or "1")
        text = "\n".join(chunk)
        listings.append(_listed(item, remote.RemoteResult(status, text, result.stderr)))
        chunk = []
    if len(listings) != 2:
        raise engine_failed(item, "ps", result)
    return listings[0], listings[1]


async def owned_containers(conn: Connection, item: Target) -> list[containers.Container]:
    """Containers of sandboxer-owned projects whose directory is on this host's root.

    Two hosts may share an engine (a remote DOCKER_HOST): the compose
    working-directory label tells whose project it is.
    """
    owned = []
    for container in await list_containers(conn, item, f"label={containers.PROJECT_LABEL}"):
        sandbox_id = containers.sandbox_of_project(container.project)
        if sandbox_id is None:
            continue
        directory = item.workspace(sandbox_id)
        if container.working_dir and not (
            container.working_dir == directory or container.working_dir.startswith(directory + "/")
        ):
            continue
        owned.append(container)
    return owned


def sweep_argv(item: Target, project: str, *, thorough: bool) -> list[str]:
    """The command of :func:`sweep` (also run first by a create's one-round-trip claim)."""
    return [
        "sh",
        "-c",
        _SWEEP_SCRIPT,
        "sh",
        containers.engine(item.config),
        f"label={containers.PROJECT_LABEL}={project}",
        "1" if thorough else "0",
        f"pod_{project}",
        f"{project}_",  # compose's name for an image it builds: <project>_<service>
    ]


async def sweep(conn: Connection, item: Target, project: str, *, thorough: bool) -> None:
    """Remove what is labelled with ``project``: containers always (a check after compose
    down); networks, volumes and podman's pod too when compose down did not run, and the
    images compose built for the project (``<project>_<service>``), which no label names:
    left, they stayed for ever, and a recreate under the same id ran the old build."""
    result = await remote.run(
        conn,
        sweep_argv(item, project, thorough=thorough),
        env=item.config.env,
        timeout=DOWN_TIMEOUT,
        check=False,
    )
    if result.exit_status not in (0, ENGINE_MISSING):  # no engine: nothing of ours runs
        raise engine_failed(item, "rm", result)


def engine_failed(item: Target, what: str, result: remote.RemoteResult) -> RemoteCommandFailed:
    return RemoteCommandFailed(
        f"'{containers.engine(item.config)} {what}' on host {item.name} exited with status "
        f"{result.exit_status}; check that the container engine runs and that the host's "
        "env in the hosts file (e.g. DOCKER_HOST) points at it",
        exit_status=result.exit_status,
        # Cut to lines only once redacted (ssh_checks): stderr may hold compose's output.
        output_tail=remote.output_window(result.stdout, result.stderr),
        extension=EXTENSION,
    )
