"""CLI commands for snapshots: ``snapshot``, ``snapshots list|get|delete`` and ``restore``.

A snapshot stores a copy of a sandbox's workspace in the Object Store; a
restore makes a new sandbox from it, of the same or another profile and
backend (docs/snapshots.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from sandboxer.cli.common import JsonOpt, run, with_client
from sandboxer.cli.output import print_json, print_table
from sandboxer.cli.paging import AfterOpt, AllPagesOpt, LimitOpt, read_pages, tell_cut
from sandboxer.cli.sandbox_commands import _parse_inputs
from sandboxer.errors import InvalidInput
from sandboxer.pagination import DEFAULT_LIMIT

if TYPE_CHECKING:
    from sandboxer.client import SandboxerClient

__all__ = ["restore", "snapshot", "snapshots_app"]

snapshots_app = typer.Typer(
    help="Stored copies of sandbox workspaces: list them, show one, delete one.",
    no_args_is_help=True,
)


def snapshot(
    sandbox_id: str,
    name: Annotated[str | None, typer.Option("--name", help="a label for people")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Store a copy of a sandbox's workspace (the sandbox keeps running)."""
    taken = run(with_client(lambda c: c.snapshot(sandbox_id, name=name)))
    if as_json:
        print_json(taken)
    else:
        typer.echo(
            f"{taken['snapshot_id']}  {taken['size']} bytes  sha256:{taken['sha256']}"
            f"  (restore it with: sandboxer restore {taken['snapshot_id']})"
        )
        _warn(taken, err=True)  # the line above stays the one a script reads


def restore(
    snapshot_id: str,
    profile: Annotated[
        str | None, typer.Option("--profile", help="another profile (any backend)")
    ] = None,
    sandbox_id: Annotated[
        str | None, typer.Option("--sandbox-id", help="the new sandbox's id")
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="KEY=VALUE: the profile's other inputs"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a new sandbox from a snapshot, of its profile or of --profile."""
    given = _parse_inputs(inputs or [])

    async def work(client: SandboxerClient) -> dict[str, Any] | None:
        ready = await client.restore(
            snapshot_id, profile=profile, sandbox_id=sandbox_id, inputs=given
        )
        return await client.get(ready["sandbox_id"])

    sandbox = run(with_client(work))
    if as_json:
        print_json(sandbox)
    elif sandbox:
        typer.echo(
            f"{sandbox['sandbox_id']}  {sandbox['status']}  {sandbox['profile']}  "
            f"restored from {sandbox.get('restored_from')}"
        )


@snapshots_app.command("list")
def snapshots_list(
    sandbox_id: Annotated[
        str | None, typer.Option("--sandbox", help="only this sandbox's snapshots")
    ] = None,
    include_deleted: Annotated[bool, typer.Option("--all", help="deleted ones too")] = False,
    limit: LimitOpt = DEFAULT_LIMIT,
    after: AfterOpt = None,
    all_pages: AllPagesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """List snapshots, oldest first; a page of --limit at a time (stderr says when more
    follow)."""
    found = run(
        with_client(
            lambda c: read_pages(
                c.snapshots,
                after=after,
                all_pages=all_pages,
                sandbox_id=sandbox_id,
                include_deleted=include_deleted,
                limit=limit,
            )
        )
    )
    tell_cut(found, "snapshots")
    if as_json:
        print_json(found)
        return
    print_table(
        [
            (
                s["snapshot_id"],
                s["status"],
                s["sandbox_id"],
                s["name"],
                s["size"],
                s["requested_at"],
            )
            for s in found
        ],
        ["snapshot", "status", "sandbox", "name", "bytes", "requested"],
    )


@snapshots_app.command("get")
def snapshots_get(snapshot_id: str, as_json: JsonOpt = False) -> None:
    """Show one snapshot: where it came from, where its data is, its checksum."""

    async def work(client: SandboxerClient) -> dict[str, Any]:
        found = await client.snapshot_get(snapshot_id)
        if found is None:
            raise InvalidInput(f"no snapshot {snapshot_id}; 'sandboxer snapshots list' shows them")
        return found

    found = run(with_client(work))
    if as_json:
        print_json(found)
        return
    for key in (
        "snapshot_id",
        "status",
        "sandbox_id",
        "extension",
        "profile",
        "name",
        "bucket",
        "object",
        "size",
        "sha256",
        "failure",
        "requested_at",
        "created_at",
        "deleted_at",
    ):
        if found.get(key) is not None:
            typer.echo(f"{key}: {found[key]}")
    _warn(found, err=False)


def _warn(snapshot: dict[str, Any], *, err: bool) -> None:
    """What the snapshot's copy left out, one ``warning:`` line each: a restore lacks it."""
    for line in snapshot.get("warnings") or ():
        typer.echo(f"warning: {line}", err=err)


@snapshots_app.command("delete")
def snapshots_delete(snapshot_id: str, as_json: JsonOpt = False) -> None:
    """Delete a snapshot's data; its history stays in the log."""
    event = run(with_client(lambda c: c.delete_snapshot(snapshot_id)))
    if as_json:
        print_json(event)
    else:
        kept = (
            "" if event.get("object_removed") else " (its data stays: another snapshot shares it)"
        )
        typer.echo(f"deleted {snapshot_id}{kept}")
