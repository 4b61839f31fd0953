"""Host commands: ``inspect host``, ``inspect stale``, ``reap-stale``, ``hosts`` (docs/hosts.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from sandboxer.cli.common import JsonOpt, load_catalog, run, with_client
from sandboxer.cli.output import print_json, print_table, say

if TYPE_CHECKING:
    from sandboxer.client import SandboxerClient

__all__ = ["hosts_view", "inspect_app", "reap_stale"]

inspect_app = typer.Typer(
    help="Host telemetry and drift between the log and the hosts.", no_args_is_help=True
)


async def _ask_extensions(
    client: SandboxerClient, action: str, request: dict[str, Any]
) -> list[dict[str, Any]]:
    replies: list[dict[str, Any]] = []
    for ext_id, decl in sorted(load_catalog().extensions_enabled().items()):
        if action == "inspect" and decl.kind == "saas":
            continue  # a hosted provider has no host to read; stale and reap cover it
        answers = await client.inventory(action, ext_id, request)
        if not answers:
            say(f"warning: no worker for {ext_id} answered; is it running?")
        for answer in answers:
            if not answer.get("ok"):
                say(f"error from {ext_id}: {answer.get('error')}")
            replies.append(answer)
    return replies


@inspect_app.command("host")
def inspect_host(
    name: Annotated[str | None, typer.Argument(help="one host from the hosts file")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Read load, memory, disk and the sandboxer-owned objects of each host (recorded as events)."""
    request = {"host": name} if name else {}
    replies = run(with_client(lambda c: _ask_extensions(c, "inspect", request)))
    reports = [
        {"extension": r["extension"], **rep} for r in replies if r.get("ok") for rep in r["reports"]
    ]
    if as_json:
        print_json(reports)
        return
    rows = []
    for item in reports:
        report = item["report"]
        rows.append(
            (
                item["host"],
                item["extension"],
                report.get("load1"),
                report.get("memory_available_mb"),
                report.get("disk_free_mb"),
                len(report.get("workspaces", [])),
                len(report.get("compose_projects", [])),
                report.get("error", ""),
            )
        )
    print_table(
        rows,
        [
            "host",
            "extension",
            "load1",
            "mem free MB",
            "disk free MB",
            "workspaces",
            "projects",
            "error",
        ],
    )


def _orphan_note(orphan: dict[str, Any]) -> str:
    if orphan.get("placed_on"):
        return f"a copy left here; the log places the sandbox on {orphan['placed_on']}"
    if orphan.get("live_attempt"):
        return (
            f"a copy made by attempt {orphan['made_by']} beside the live sandbox "
            f"(attempt {orphan['live_attempt']}, which stays)"
        )
    return "on the host; the log has it destroyed, failed or unknown"


def _print_drift(replies: list[dict[str, Any]], as_json: bool) -> None:
    hosts = [{"extension": r["extension"], **h} for r in replies if r.get("ok") for h in r["hosts"]]
    if as_json:
        print_json(hosts)
        return
    rows = [(host["host"], host["extension"], *row) for host in hosts for row in _drift_rows(host)]
    if rows:
        print_table(rows, ["host", "extension", "kind", "sandbox", "meaning"])
    else:
        typer.echo("no drift: the hosts hold exactly what the log says")


def _unmatched_note(unmatched: dict[str, Any]) -> str:
    """What an unmatched sandbox is, and what will set it as its log says."""
    step = unmatched["step"]
    # A frozen sandbox past its deadline is left frozen: its expiry is on its way.
    unless = ", unless it is past its deadline: its expiry comes first" if step == "thaw" else ""
    return (
        f"{unmatched['status']} in the log; {unmatched['frozen']} of it frozen (a worker's "
        f"next leak sweep, or reap-stale, will {step} it{unless})"
    )


def _drift_rows(host: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(kind, sandbox, meaning) of each thing one host's reply names."""
    rows: list[tuple[str, str, str]] = []
    if host.get("unreachable"):
        why = f"not judged (it did not answer: {host['unreachable']}); try again later"
        rows.append(("unreachable", "-", why))
    rows += [("orphan", o["sandbox_id"], _orphan_note(o)) for o in host.get("orphans", [])]
    rows += [
        ("ghost", ghost, "ready in the log; nothing on the host")
        for ghost in host.get("ghosts", [])
    ]
    rows += [
        ("corpse", c["sandbox_id"], f"ready in the log; {c['reason']}")
        for c in host.get("corpses", [])
    ]
    rows += [("unmatched", u["sandbox_id"], _unmatched_note(u)) for u in host.get("unmatched", [])]
    rows += [
        ("stuck", s["sandbox_id"], f"teardown failed: {s['reason']}") for s in host.get("stuck", [])
    ]
    rows += [("removed", removed, "torn down") for removed in host.get("removed", [])]
    for matched in host.get("matched", []):
        done = "frozen again" if matched["step"] == "freeze" else "thawed"
        rows.append((done, matched["sandbox_id"], done))
    rows += [
        ("marked failed", failed, "recorded as failed") for failed in host.get("marked_failed", [])
    ]
    return rows


@inspect_app.command("stale")
def inspect_stale(as_json: JsonOpt = False) -> None:
    """List drift: orphans, ghosts, corpses (ready in the log, dead on the host), sandboxes
    not as paused as the log says (unmatched) and stuck teardowns."""
    _print_drift(run(with_client(lambda c: _ask_extensions(c, "stale", {}))), as_json)


def reap_stale(
    apply: Annotated[
        bool, typer.Option("--apply", help="really remove; otherwise only list")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Clear drift (only with --apply): remove orphans, mark ghosts and corpses failed and
    clean what is left of them, freeze or thaw the unmatched, and try stuck teardowns again."""
    replies = run(with_client(lambda c: _ask_extensions(c, "reap", {"apply": apply})))
    _print_drift(replies, as_json)
    if not apply and not as_json:
        say("dry run: nothing was changed; run again with --apply to reap")


def hosts_view(as_json: JsonOpt = False) -> None:
    """The hosts view: the last telemetry and reaping recorded for each host."""
    hosts = run(with_client(lambda c: c.hosts()))
    if as_json:
        print_json(hosts)
        return
    print_table(
        [(h["host"], h["extension"], h["inspected_at"], h["reaped_at"]) for h in hosts],
        ["host", "extension", "inspected", "reaped"],
    )


def pools_view(as_json: JsonOpt = False) -> None:
    """Warm pools: for each pooled profile, its members ready and being made (docs/pools.md)."""
    pools = run(with_client(lambda c: c.pools()))
    if as_json:
        print_json(pools)
        return
    if not pools:
        say("no warm pools: no running worker keeps one (a profile asks with 'pool:')")
        return
    print_table(
        [
            (
                p["profile"],
                p["extension"],
                p["node"],
                p["ready"],
                p["provisioning"],
                p["min_ready"],
                p["max"],
            )
            for p in pools
        ],
        ["profile", "extension", "node", "ready", "making", "min_ready", "max"],
    )
