"""The everyday commands: create, list, get, exec, destroy, recreate, events.

Each is a thin layer over :class:`~sandboxer.client.SandboxerClient`; ``app.py``
registers them in the order ``sandboxer --help`` shows.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sandboxer.cli.common import JsonOpt, load_settings, run, with_client
from sandboxer.cli.consumer_options import consumer_filter
from sandboxer.cli.output import Progress, print_json, print_table, say
from sandboxer.cli.paging import AfterOpt, AllPagesOpt, LimitOpt, read_pages, tell_cut
from sandboxer.cli.uploads import plan_uploads, upload_directory_inputs
from sandboxer.config.network_policy import parse_policy
from sandboxer.errors import InvalidNetworkPolicy
from sandboxer.pagination import DEFAULT_LIMIT

if TYPE_CHECKING:
    from sandboxer.client import SandboxerClient

__all__ = [
    "create",
    "destroy",
    "events",
    "exec_command",
    "get",
    "list_sandboxes",
    "recreate",
    "split_exec_args",
]

EXEC_CONTEXT = {"allow_interspersed_args": False}
"""``exec`` passes everything after the sandbox id to the command, options included."""


def _parse_inputs(pairs: list[str]) -> dict[str, str]:
    inputs: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--input")
        if key == "repo" and value and not value.startswith("/"):
            value = os.path.abspath(value)  # the worker resolves paths, not this shell's cwd
        inputs[key] = value
    return inputs


def _show_sandbox(sandbox: dict[str, Any]) -> None:
    for key in (
        "sandbox_id",
        "status",
        "profile",
        "extension",
        "host",
        "generation",
        "recreated_by",
        "recreated_at",
        "restored_from",
        "snapshotting",
        "created_at",
        "updated_at",
        "expires_at",
        "last_activity_at",
        "paused_at",
        "expiry",
        "failure",
    ):
        if sandbox.get(key) not in (None, ""):
            typer.echo(f"{key:<12} {sandbox[key]}")
    if sandbox.get("paused_at"):  # its clocks stand still (docs/ttl.md, "Pause")
        typer.echo(f"{'ttl clock':<12} stopped; expires_at moves later by the pause at resume")
    if sandbox.get("network"):  # the policy in force (docs/network.md)
        typer.echo(f"{'network':<12} {_network_line(sandbox['network'])}")
    if sandbox.get("due"):  # the earlier of its TTL and idle deadlines (docs/ttl.md)
        typer.echo(f"{'due':<12} {sandbox['due']['at']} ({sandbox['due']['cause']})")
    for warning in sandbox.get("warnings") or []:
        typer.echo(f"{'warning':<12} {warning}")
    if sandbox.get("reachability"):
        typer.echo("reachability:")
        for key, value in sandbox["reachability"].items():
            typer.echo(f"  {key:<10} {value}")


def _asked_network(default: str | None, egress: list[str]) -> dict[str, Any] | None:
    """The create's own ``network``, checked here so a typo is told before anything is sent
    (the service checks it again, and whether it narrows the profile's)."""
    if default is None and not egress:
        return None
    asked = {"default": default or "deny", "egress": egress}
    try:
        parse_policy(asked, "network")
    except InvalidNetworkPolicy as exc:
        raise typer.BadParameter(exc.message, param_hint="--egress") from None
    return asked


def _network_line(recorded: Any) -> str:
    try:
        return parse_policy(recorded).describe()
    except InvalidNetworkPolicy:  # written by a later version: show it as it is
        return json.dumps(recorded)


def create(
    profile: Annotated[str, typer.Option("--profile", "-p")] = "profile.local",
    inputs: Annotated[list[str] | None, typer.Option("--input", "-i", help="KEY=VALUE")] = None,
    sandbox_id: Annotated[str | None, typer.Option("--id", help="choose the sandbox id")] = None,
    command_id: Annotated[str | None, typer.Option("--command-id", help="idempotency key")] = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host", envvar="SANDBOXER_HOST", help="place on this host (remote backends)"
        ),
    ] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="return once accepted")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for ready")] = 300.0,
    ttl: Annotated[
        str | None,
        typer.Option("--ttl", help="lifetime, e.g. 2h (default: the profile's ttl.default)"),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", help="a name to leave out of uploaded directories (repeatable)"),
    ] = None,
    no_upload: Annotated[
        bool,
        typer.Option(
            "--no-upload",
            help="send directory inputs as paths on the worker's machine (under its "
            "SANDBOXER_INPUT_ROOTS) instead of uploading them",
        ),
    ] = False,
    project: Annotated[
        str | None,
        typer.Option(
            "--project",
            envvar="SANDBOXER_PROJECT",
            help="the project the sandbox is for, whose credits pay for it (docs/payments.md)",
        ),
    ] = None,
    network: Annotated[
        str | None,
        typer.Option(
            "--network",
            help="deny or allow: narrow the profile's network policy (docs/network.md); "
            "with --egress, deny is the default",
        ),
    ] = None,
    egress: Annotated[
        list[str] | None,
        typer.Option(
            "--egress",
            help="an allowed destination, e.g. pypi.org:443 or 10.1.2.0/24 (repeatable); "
            "it must lie within the profile's policy",
        ),
    ] = None,
    harness: Annotated[
        str | None, typer.Option(help="consumer: the calling service (docs/protocol.md)")
    ] = None,
    session: Annotated[str | None, typer.Option(help="consumer: its session id")] = None,
    run_id: Annotated[str | None, typer.Option("--run", help="consumer: its run id")] = None,
    job: Annotated[str | None, typer.Option(help="consumer: its job id")] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="consumer: a label k=v (repeatable)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a sandbox from a profile and wait until it is ready.

    A directory input (``type: directory`` in the profile) given as a local
    directory is uploaded to the service's Object Store and passed by reference.
    """
    parsed = _parse_inputs(inputs or [])
    asked = _asked_network(network, egress or [])
    try:
        consumer = consumer_filter(
            harness=harness, session=session, run=run_id, job=job, labels=label or []
        )
    except ValueError as exc:
        say(f"error: {exc}")
        raise typer.Exit(2) from None

    async def work(client: SandboxerClient) -> dict[str, Any]:
        # Settings and the local catalog were read once already to connect: quick, and any
        # error in them is reported by run() like every other.
        settings = load_settings()
        planned = {} if no_upload else plan_uploads(settings, profile, parsed)
        refs = await upload_directory_inputs(
            client, settings, planned, exclude=exclude or [], show_progress=not as_json
        )
        progress = Progress(enabled=not as_json)  # timed from here: not the service's start-up
        if project:
            client.actor = {**client.actor, "project": project}  # the service checks the name
        result = await client.create(
            profile,
            {**parsed, **refs},
            sandbox_id=sandbox_id,
            command_id=command_id,
            host=host,
            ttl=ttl,
            network=asked,
            consumer=consumer or None,  # the service checks each part and says why not
            wait=not no_wait,
            on_event=progress,
            timeout=timeout,
        )
        if no_wait:
            return result
        sandbox = await client.get(result["sandbox_id"])
        return sandbox or result

    sandbox = run(with_client(work, autostart=True))
    if as_json:
        print_json(sandbox)
    elif no_wait:
        typer.echo(sandbox["sandbox_id"])
    else:
        _show_sandbox(sandbox)


def get(sandbox_id: str, as_json: JsonOpt = False) -> None:
    """Show one sandbox."""
    sandbox = run(with_client(lambda c: c.get(sandbox_id)))
    if sandbox is None:
        say(f"error: no sandbox {sandbox_id}")
        raise typer.Exit(1)
    if as_json:
        print_json(sandbox)
    else:
        _show_sandbox(sandbox)


def list_sandboxes(
    status: Annotated[str | None, typer.Option(help="only this status")] = None,
    all_: Annotated[bool, typer.Option("--all", help="include destroyed sandboxes")] = False,
    harness: Annotated[str | None, typer.Option(help="only this consumer harness")] = None,
    session: Annotated[str | None, typer.Option(help="only this consumer session id")] = None,
    run_id: Annotated[str | None, typer.Option("--run", help="only this consumer run id")] = None,
    job: Annotated[str | None, typer.Option(help="only this consumer job id")] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="only sandboxes with this consumer label (k=v)")
    ] = None,
    limit: LimitOpt = DEFAULT_LIMIT,
    after: AfterOpt = None,
    all_pages: AllPagesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """List sandboxes, oldest first (destroyed ones only with --all), filtered by status and
    consumer; a page of --limit at a time (stderr says when more follow)."""
    try:
        consumer = consumer_filter(
            harness=harness, session=session, run=run_id, job=job, labels=label or []
        )
    except ValueError as exc:
        say(f"error: {exc}")
        raise typer.Exit(2) from None
    sandboxes = run(
        with_client(
            lambda c: read_pages(
                c.list_sandboxes,
                after=after,
                all_pages=all_pages,
                status=status,
                include_destroyed=all_,
                consumer=consumer,
                limit=limit,
            )
        )
    )
    tell_cut(sandboxes, "sandboxes")
    if as_json:
        print_json(sandboxes)
        return
    print_table(
        [
            (
                s["sandbox_id"],
                s["status"],
                s["profile"],
                s["extension"],
                s["created_at"],
                (s.get("due") or {}).get("at"),
            )
            for s in sandboxes
        ],
        ["id", "status", "profile", "extension", "created", "due"],
    )


def destroy(
    sandbox_id: str,
    no_wait: Annotated[bool, typer.Option("--no-wait")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Destroy a sandbox and wait until everything it owned is gone."""
    progress = Progress(enabled=not as_json)
    event = run(with_client(lambda c: c.destroy(sandbox_id, wait=not no_wait, on_event=progress)))
    if as_json:
        print_json(event)
    elif not no_wait:
        typer.echo(f"destroyed {sandbox_id}")


def recreate(sandbox_id: str, as_json: JsonOpt = False) -> None:
    """Tear a sandbox down and provision it again from the same profile and inputs."""
    progress = Progress(enabled=not as_json)

    async def work(client: SandboxerClient) -> dict[str, Any] | None:
        await client.recreate(sandbox_id, on_event=progress)
        return await client.get(sandbox_id)

    sandbox = run(with_client(work))
    if as_json:
        print_json(sandbox)
    elif sandbox:
        _show_sandbox(sandbox)


def split_exec_args(argv: list[str], service: str | None) -> tuple[str | None, list[str]]:
    """Split ``[--service NAME] [--] CMD ARGS...`` (what follows the sandbox id).

    Options after the id reach us as arguments (interspersed options are off so
    that the command's own options pass through), so ``--service`` is read here
    too, but only before the ``--`` that starts the command.
    """
    rest = list(argv)
    while rest and rest[0].startswith("--service"):
        flag = rest.pop(0)
        if flag.startswith("--service="):
            service = flag.removeprefix("--service=")
        elif flag == "--service" and rest:
            service = rest.pop(0)
        else:
            raise typer.BadParameter("--service needs a NAME", param_hint="--service")
    if rest[:1] == ["--"]:  # click keeps the separator when interspersed args are off
        rest = rest[1:]
    return service, rest


def exec_command(
    sandbox_id: str,
    argv: Annotated[list[str], typer.Argument(help="the command, after --")],
    service: Annotated[
        str | None,
        typer.Option(
            "--service",
            help="compose sandboxes: the service whose container runs it "
            "(default: the first service)",
        ),
    ] = None,
) -> None:
    """Run a command inside a sandbox: sandboxer exec ID [--service NAME] -- CMD ARGS..."""

    def output(stream: str, data: bytes) -> None:
        target = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
        target.write(data)
        target.flush()

    service, command = split_exec_args(argv, service)
    if not command:
        say("error: give the command after --, e.g. sandboxer exec ID -- ls /workspace")
        raise typer.Exit(1)
    code = run(with_client(lambda c: c.exec(sandbox_id, command, output, service=service)))
    raise typer.Exit(code)


def events(
    sandbox: Annotated[str | None, typer.Option("--sandbox", help="only this sandbox")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Print the event log (of one sandbox with --sandbox); --follow waits for new ones."""

    async def work(client: SandboxerClient) -> None:
        async for seq, event in client.events(sandbox_id=sandbox, follow=follow):
            if as_json:
                sys.stdout.write(json.dumps({"seq": seq, **event}) + "\n")
            else:
                subject = event.get("sandbox_id") or event.get("command_id")
                extra = event.get("reason") or ""
                if event.get("type") == "routed":
                    extra = f"{event.get('extension')} ({extra})"
                sys.stdout.write(
                    f"{seq:>8}  {event.get('at')}  {event.get('type'):<12} {subject}  {extra}\n"
                )
            sys.stdout.flush()

    run(with_client(work))
