"""``sandboxer cp``: files and directories in and out of a sandbox's workspace.

One side is local, the other ``SANDBOX_ID:PATH`` with ``PATH`` relative to the
sandbox's workspace. A thin layer over :meth:`SandboxerClient.copy_in` and
:meth:`SandboxerClient.copy_out` (docs/protocol.md#files).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sandboxer.cli.common import JsonOpt, load_settings, run, with_client
from sandboxer.cli.output import print_json, say
from sandboxer.ids import is_valid_sandbox_id

if TYPE_CHECKING:
    from sandboxer.client import Copied, SandboxerClient

__all__ = ["copy", "split_remote"]


def split_remote(spec: str) -> tuple[str, str] | None:
    """``(sandbox_id, path)`` for ``SANDBOX_ID:PATH``; None for a local path (write
    ``./a:b`` for a local file whose name starts like a sandbox id and a colon)."""
    head, sep, tail = spec.partition(":")
    if not sep or not is_valid_sandbox_id(head):
        return None
    return head, tail or "."


def copy(
    source: Annotated[str, typer.Argument(help="LOCAL or SANDBOX_ID:PATH")],
    destination: Annotated[str, typer.Argument(help="SANDBOX_ID:PATH or LOCAL")],
    service: Annotated[
        str | None,
        typer.Option("--service", help="compose sandboxes: the service whose container holds it"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy a file or a directory into or out of a sandbox: sandboxer cp LOCAL ID:PATH,
    sandboxer cp ID:PATH LOCAL. PATH is relative to the sandbox's workspace; a directory
    is copied whole (into LOCAL when it is an existing directory, as cp -r does)."""
    remote_source, remote_destination = split_remote(source), split_remote(destination)
    if (remote_source is None) == (remote_destination is None):
        say(
            "error: name exactly one side as SANDBOX_ID:PATH, e.g. sandboxer cp ./data "
            "sbx123abc:data or sandboxer cp sbx123abc:out.txt ."
        )
        raise typer.Exit(1)
    max_mb = load_settings().upload_max_mb

    async def work(client: SandboxerClient) -> Copied:
        if remote_destination is not None:
            sandbox_id, path = remote_destination
            return await client.copy_in(
                sandbox_id, Path(source), path, service=service, max_mb=max_mb
            )
        assert remote_source is not None
        sandbox_id, path = remote_source
        return await client.copy_out(
            sandbox_id, path, Path(destination), service=service, max_mb=max_mb
        )

    copied = run(with_client(work))
    if as_json:
        print_json(
            {
                "kind": copied.kind,
                "path": copied.path,
                "size": copied.size,
                "local": str(copied.local) if copied.local is not None else None,
            }
        )
    else:
        direction = "to" if remote_destination is not None else "from"
        say(f"copied {copied.kind} {copied.path} {direction} the sandbox ({copied.size} bytes)")
