"""Routing commands: ``route explain`` (docs/routing.md#route-explain)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import typer

from sandboxer import subjects
from sandboxer.cli.common import JsonOpt, run, with_client
from sandboxer.cli.output import print_json, print_table
from sandboxer.errors import BusError, ServiceNotRunning

if TYPE_CHECKING:
    from sandboxer.client import SandboxerClient

__all__ = ["route_app"]

route_app = typer.Typer(
    help="How routing chooses a backend for a profile (docs/routing.md).", no_args_is_help=True
)


async def _explain(client: SandboxerClient, request: dict[str, Any]) -> dict[str, Any]:
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    try:
        msg = await client.nc.request(
            subjects.QUERY_ROUTE_EXPLAIN, msgspec.json.encode(request), timeout=10.0
        )
    except (NoRespondersError, NatsTimeout) as exc:
        raise ServiceNotRunning(
            "no control worker answered route explain; is 'sandboxer up' (or "
            "'sandboxer worker control') running against this NATS?"
        ) from exc
    reply = msgspec.json.decode(msg.data)
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else reply
        raise BusError(f"route explain: {error}")
    return reply


@route_app.command("explain")
def explain(
    profile: Annotated[str, typer.Option("--profile", "-p", help="the profile to route")],
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="the TTL to estimate for (default: the profile's)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show how a create of PROFILE would be routed now, and why, without creating anything."""
    request: dict[str, Any] = {"profile": profile}
    if ttl is not None:
        request["ttl"] = ttl
    reply = run(with_client(lambda c: _explain(c, request)))
    decision = reply["decision"]
    if as_json:
        print_json({"decision": decision, "signals": reply["signals"], "at": reply["at"]})
        return
    out = sys.stdout.write
    out(f"{decision['profile']}: {decision['strategy']}, ttl {decision['ttl_seconds']:g} s\n")
    rows = [
        (
            c["extension"],
            "yes" if c["eligible"] else "no",
            "" if c.get("score") is None else c["score"],
            c.get("estimate_microusd", ""),
            "" if c.get("latency_p50") is None else c["latency_p50"],
            "" if c.get("capacity") is None else f"{c.get('live', '?')}/{c['capacity']}",
            c.get("why_not", ""),
        )
        for c in decision["candidates"]
    ]
    print_table(
        rows, ["extension", "eligible", "score", "estimate uUSD", "p50 s", "live/cap", "why not"]
    )
    chosen = decision["chosen"]
    out(f"chosen: {chosen}\n" if chosen else "chosen: none (a create would be rejected)\n")
    out(f"reason: {decision['reason']}\n")
