"""CLI commands for credits and usage: ``credits add|show|budget|byok`` and ``usage``.

Amounts are whole credits, 1 credit = 1 micro-USD (docs/payments.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from sandboxer.cli.common import JsonOpt, run, with_client
from sandboxer.cli.consumer_options import CONSUMER_PARTS
from sandboxer.cli.output import print_json, print_table, say
from sandboxer.cli.paging import AfterOpt, AllPagesOpt, LimitOpt, read_pages, tell_cut
from sandboxer.domain.credit_amounts import format_credits
from sandboxer.pagination import DEFAULT_LIMIT, Page

if TYPE_CHECKING:
    from sandboxer.client import SandboxerClient

__all__ = ["credits_app", "usage"]

credits_app = typer.Typer(
    help="Project accounts: add credits, show balances, set budgets and own provider keys.",
    no_args_is_help=True,
)


def _echo_event(event: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        print_json(event)
    else:
        typer.echo(text)


@credits_app.command("add")
def credits_add(
    project: str,
    amount: Annotated[int, typer.Argument(help="whole credits (1 credit = 1 micro-USD)")],
    as_json: JsonOpt = False,
) -> None:
    """Add credits to a project's account (an administrator's command)."""
    event = run(with_client(lambda c: c.account_command("add_credits", project, amount=amount)))
    _echo_event(event, as_json, f"added {format_credits(amount)} to {project}")


@credits_app.command("show")
def credits_show(
    project: Annotated[str | None, typer.Argument(help="one project (default: all)")] = None,
    limit: LimitOpt = DEFAULT_LIMIT,
    after: AfterOpt = None,
    all_pages: AllPagesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Balances, reservations and spending of one project or of every project (by project,
    a page of --limit at a time: stderr says when more follow)."""
    accounts = run(
        with_client(
            lambda c: read_pages(
                c.credits, after=after, all_pages=all_pages, project=project, limit=limit
            )
        )
    )
    tell_cut(accounts, "accounts")
    if as_json:
        print_json(accounts[0] if project and accounts else accounts)
        return
    if not accounts:
        typer.echo(f"no account for {project}" if project else "no accounts yet")
        return
    rows = []
    for account in accounts:
        budget = account["budget"]
        rows.append(
            [
                account["project"],
                account["balance"],
                account["reserved"],
                account["available"],
                account["spent_this_month"],
                "-"
                if budget is None
                else f"{budget['spent']}/{budget['limit']} per {budget['period']}",
                ",".join(sorted(account["byok"])) or "-",
            ]
        )
    print_table(
        rows, ["PROJECT", "BALANCE", "RESERVED", "AVAILABLE", "SPENT (MONTH)", "BUDGET", "BYOK"]
    )
    typer.echo("(credits; 1 credit = 1 micro-USD)")


@credits_app.command("budget")
def credits_budget(
    project: str,
    limit: Annotated[int | None, typer.Argument(help="credits per period; omit to remove")] = None,
    period: Annotated[str, typer.Option("--period", help="day or month (UTC)")] = "month",
    as_json: JsonOpt = False,
) -> None:
    """Limit what a project may spend per day or month; creates past it are refused."""
    if period not in {"day", "month"}:
        raise typer.BadParameter("--period is day or month")
    chosen: Literal["day", "month"] = "day" if period == "day" else "month"
    event = run(
        with_client(lambda c: c.account_command("set_budget", project, limit=limit, period=chosen))
    )
    text = (
        f"{project}: no budget"
        if limit is None
        else f"{project}: at most {format_credits(limit)} per {period}"
    )
    _echo_event(event, as_json, text)


@credits_app.command("byok")
def credits_byok(
    project: str,
    extension: str,
    key_ref: Annotated[
        str | None,
        typer.Argument(help="a secret reference, env:NAME or file:/PATH; omit to remove"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Bring the project's own key for a backend: its sandboxes there are metered, not debited."""
    event = run(
        with_client(
            lambda c: c.account_command("set_byok", project, extension=extension, key_ref=key_ref)
        )
    )
    _echo_event(
        event,
        as_json,
        f"{project} on {extension}: "
        + (f"own key {key_ref}" if key_ref else "no own key (credits are debited)"),
    )


def usage(
    project: Annotated[str | None, typer.Option("--project", help="one project")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="from this UTC date or time (2026-12-01)")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="before this UTC date or time")
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(
            "--by", help="group by a part of the sandboxes' consumer: harness, session, run, job"
        ),
    ] = None,
    limit: LimitOpt = DEFAULT_LIMIT,
    after: AfterOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Spend by project, profile and backend over a period, from the metered sandboxes (with
    --by, by the sandboxes' consumer instead). --json adds the metered sandboxes, a page of
    --limit (stderr says when more follow)."""
    group = None if by is None else CONSUMER_PARTS.get(by, by)
    if group is not None and group not in CONSUMER_PARTS.values():
        say(f"error: --by {by}: use one of {', '.join(CONSUMER_PARTS)}")
        raise typer.Exit(2)

    async def work(client: SandboxerClient) -> dict[str, Any]:
        window = {"project": project, "since": since, "until": until, "by": group}
        return await client.usage(**window, limit=limit, after=after)

    report = run(with_client(work))
    if as_json:
        print_json(report)
        tell_cut(Page(next=report.get("next")), "metered sandboxes")
        return
    if group is not None:
        print_table(
            [
                [r[group] or "-", r["sandboxes"], r["seconds"], r["amount"]]
                for r in report["summary"]
            ],
            [group.upper(), "SANDBOXES", "SECONDS", "CREDITS"],
        )
    else:
        print_table(
            [
                [
                    r[k]
                    for k in ("project", "profile", "extension", "sandboxes", "seconds", "amount")
                ]
                for r in report["summary"]
            ],
            ["PROJECT", "PROFILE", "BACKEND", "SANDBOXES", "SECONDS", "CREDITS"],
        )
    total = report["total"]
    typer.echo(
        f"total: {total['sandboxes']} sandboxes, {total['seconds']} s, "
        f"{format_credits(total['amount'])}"
    )
