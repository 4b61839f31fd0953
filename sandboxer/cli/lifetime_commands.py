"""CLI commands for a sandbox's lifetime: ``extend-ttl``, ``touch``, ``pause``, ``resume``
and ``expire``.

The service keeps time itself (docs/ttl.md); these let a person push an expiry later,
record activity the service cannot see (SSH straight into a sandbox), stop a sandbox and
its clock for a while, and see or hasten what is overdue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from sandboxer.cli.common import JsonOpt, run, with_client
from sandboxer.cli.output import print_json, print_table
from sandboxer.clock import utc_now
from sandboxer.errors import InvalidInput

if TYPE_CHECKING:
    from sandboxer.client import SandboxerClient

__all__ = ["expire", "extend_ttl", "pause", "resume", "touch"]


def extend_ttl(
    sandbox_id: str,
    duration: Annotated[str, typer.Option("--duration", "-d", help="e.g. 30m, 2h, 1d")],
    as_json: JsonOpt = False,
) -> None:
    """Push a sandbox's expiry later, within its profile's ttl.max (counted from creation)."""
    event = run(with_client(lambda c: c.extend_ttl(sandbox_id, duration)))
    if as_json:
        print_json(event)
    else:
        typer.echo(f"{sandbox_id} now expires at {event['expires_at']}")


def touch(sandbox_id: str, as_json: JsonOpt = False) -> None:
    """Record activity on a sandbox, which holds off its idle reaping."""
    accepted = run(with_client(lambda c: c.touch(sandbox_id)))
    if as_json:
        print_json(accepted)
    else:
        typer.echo(f"touched {sandbox_id}")


def pause(sandbox_id: str, as_json: JsonOpt = False) -> None:
    """Freeze every process of a sandbox; its TTL clock stops until it is resumed (within
    its profile's ttl.max_pause, if it sets one)."""
    event = run(with_client(lambda c: c.pause(sandbox_id)))
    if as_json:
        print_json(event)
    else:
        typer.echo(f"paused {sandbox_id} at {event['at']}")


def resume(sandbox_id: str, as_json: JsonOpt = False) -> None:
    """Thaw a paused sandbox; its TTL clock runs again from where it stopped."""
    event = run(with_client(lambda c: c.resume(sandbox_id)))
    if as_json:
        print_json(event)
        return
    after = f"; it now expires at {event['expires_at']}" if event.get("expires_at") else ""
    typer.echo(f"resumed {sandbox_id} after {event['paused_seconds']:.1f}s paused{after}")


def expire(
    sandbox_ids: Annotated[
        list[str] | None, typer.Argument(help="these sandboxes (default: every overdue one)")
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="expire them (default: only list them)")
    ] = False,
    reason: Annotated[str | None, typer.Option(help="recorded in the expired event")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List overdue sandboxes, or expire them with --apply (named ones even before they are
    due, when you act as an adm actor, which the CLI does)."""

    async def work(client: SandboxerClient) -> list[dict[str, Any]]:
        if sandbox_ids:
            chosen = []
            for sandbox_id in sandbox_ids:
                sandbox = await client.get(sandbox_id)
                if sandbox is None:
                    raise InvalidInput(f"no sandbox {sandbox_id}; 'sandboxer list' shows them")
                chosen.append(sandbox)
        else:
            chosen = await client.list_sandboxes(due_before=utc_now())
        if not apply:
            return [_row(sandbox) for sandbox in chosen]
        done = []
        for sandbox in chosen:
            event = await client.expire(sandbox["sandbox_id"], reason=reason)
            done.append({**_row(sandbox), "expired": True, "event": event})
        return done

    rows = run(with_client(work))
    if as_json:
        print_json(rows)
        return
    print_table(
        [(r["sandbox_id"], r["status"], r["due_at"] or "-", r["cause"] or "-") for r in rows],
        ["id", "status", "due", "cause"],
    )
    if apply:
        typer.echo(f"expired {len(rows)} sandbox(es)")


def _row(sandbox: dict[str, Any]) -> dict[str, Any]:
    due = sandbox.get("due") or {}
    return {
        "sandbox_id": sandbox["sandbox_id"],
        "status": sandbox["status"],
        "expires_at": sandbox.get("expires_at"),
        "due_at": due.get("at"),
        "cause": due.get("cause"),
    }
