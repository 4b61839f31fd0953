"""``sandboxer statehub status``: how far the State Hub projection is behind, and what it
last delivered or failed at (docs/integrations/state-hub.md#status)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import msgspec
import typer

from sandboxer.cli.common import JsonOpt, load_settings, run, with_client
from sandboxer.cli.output import print_json
from sandboxer.errors import BusError

if TYPE_CHECKING:
    from sandboxer.client import SandboxerClient

__all__ = ["statehub_app"]

statehub_app = typer.Typer(
    help="The State Hub projection (docs/integrations/state-hub.md).", no_args_is_help=True
)


async def _status(client: SandboxerClient) -> dict[str, Any]:
    """The running role's answer; without one, what the server and this machine know."""
    # Here, not at the top: every command (`up` too) loads this module, and the follower's
    # HTTP client (httpx) is for the statehub role and this command alone; nats-py is for
    # the commands that talk to the bus (tests/unit/test_cli_imports.py).
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    from sandboxer.statehub.follower import STATUS_SUBJECT, consumer_lag, status_file
    from sandboxer.statehub.status import DeliveryStatus
    from sandboxer.workers.http_delivery import public_url

    try:
        msg = await client.nc.request(STATUS_SUBJECT, b"{}", timeout=5.0)
    except (NoRespondersError, NatsTimeout):
        settings = load_settings()
        url = settings.state_hub_url
        return {
            "hub_url": public_url(url) if url else None,
            "running": False,
            **await consumer_lag(client.js),
            **DeliveryStatus.load(status_file(settings.home)).as_dict(),
        }
    reply = msgspec.json.decode(msg.data)
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else reply
        raise BusError(f"statehub status: {error}")
    reply.pop("ok", None)
    return reply


def _event(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "-"
    return (
        f"{summary.get('type')} {summary.get('event_id')} of {summary.get('sandbox_id')} "
        f"(#{summary.get('stream_seq')}, {summary.get('at')})"
    )


@statehub_app.command("status")
def status(as_json: JsonOpt = False) -> None:
    """Show the hub's URL, the events not yet delivered, the last delivered and the last error."""
    report = run(with_client(_status))
    if as_json:
        print_json(report)
        return
    out = sys.stdout.write
    behind = report.get("events_behind")
    out(f"hub:            {report.get('hub_url') or '- (SANDBOXER_STATE_HUB_URL is not set)'}\n")
    out(f"role:           {'running' if report.get('running') else 'not running'}\n")
    if behind is None:
        out("events behind:  - (the projection has never run against this NATS)\n")
    else:
        out(f"events behind:  {behind} (position #{report.get('position')})\n")
    out(f"delivered:      {report.get('delivered', 0)}\n")
    out(f"last delivered: {_event(report.get('last_delivered'))}\n")
    error = report.get("last_error")
    out(f"last error:     {error['error'] + ' at ' + error['at'] if error else '-'}\n")
    if report.get("retrying"):
        out(f"retrying:       {_event(report['retrying'])}\n")
    out(f"refused:        {report.get('refused_count', 0)}\n")
    for refused in report.get("refused") or []:
        out(f"  {_event(refused)}: {refused.get('error')}\n")
