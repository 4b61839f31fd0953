"""The ``sandboxer`` command line (typer). Every command but ``up``/``worker`` is a bus client."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import Annotated, Any

import typer

from sandboxer.cli import host_commands
from sandboxer.cli.common import JsonOpt, load_catalog, load_settings, run, with_client
from sandboxer.cli.output import Progress, print_json, print_table, say
from sandboxer.client import SandboxerClient, read_service_file
from sandboxer.errors import SandboxerError

app = typer.Typer(
    help="Establish isolated sandboxes on many backends through one event-sourced API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
profiles_app = typer.Typer(help="Sandbox recipes.", no_args_is_help=True)
extensions_app = typer.Typer(help="Backends.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")
app.add_typer(extensions_app, name="extensions")
host_commands.register(app)

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
    for key in ("sandbox_id", "status", "profile", "extension", "host", "generation",
                "created_at", "updated_at", "failure"):
        if sandbox.get(key) not in (None, ""):
            typer.echo(f"{key:<12} {sandbox[key]}")
    for warning in sandbox.get("warnings") or []:
        typer.echo(f"{'warning':<12} {warning}")
    if sandbox.get("reachability"):
        typer.echo("reachability:")
        for key, value in sandbox["reachability"].items():
            typer.echo(f"  {key:<10} {value}")


# -- service -----------------------------------------------------------------------------------


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def up(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run the whole service (NATS unless SANDBOXER_NATS_URL is set, control, projector, extensions)."""
    from sandboxer.service import serve

    settings = load_settings()
    running = read_service_file(settings)
    if settings.embedded and running is not None:
        say(f"sandboxer is already running (pid {running['pid']}, {running['nats_url']})")
        raise typer.Exit(1)
    _configure_logging(verbose)
    run(serve(settings))


@app.command()
def worker(
    roles: Annotated[list[str], typer.Argument(help="control, projector or an extension id")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run chosen roles alone against SANDBOXER_NATS_URL (for scale-out)."""
    from sandboxer.service import serve

    settings = load_settings()
    if settings.embedded:
        say("error: 'sandboxer worker' needs SANDBOXER_NATS_URL (the NATS the service uses)")
        raise typer.Exit(1)
    _configure_logging(verbose)
    run(serve(settings, roles))


@app.command()
def down() -> None:
    """Stop the embedded service started by 'sandboxer up' or 'sandboxer create'."""
    settings = load_settings()
    running = read_service_file(settings)
    if running is None:
        say("sandboxer is not running")
        return
    pid = int(running["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            say(f"stopped sandboxer (pid {pid})")
            return
        time.sleep(0.1)
    say(f"error: pid {pid} did not stop within 30 s")
    raise typer.Exit(1)


# -- lifecycle -----------------------------------------------------------------------------------


@app.command()
def create(
    profile: Annotated[str, typer.Option("--profile", "-p")] = "profile.local",
    inputs: Annotated[list[str] | None, typer.Option("--input", "-i", help="KEY=VALUE")] = None,
    sandbox_id: Annotated[str | None, typer.Option("--id", help="choose the sandbox id")] = None,
    command_id: Annotated[str | None, typer.Option("--command-id", help="idempotency key")] = None,
    host: Annotated[
        str | None,
        typer.Option("--host", envvar="SANDBOXER_HOST", help="place on this host (remote backends)"),
    ] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="return once accepted")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for ready")] = 300.0,
    as_json: JsonOpt = False,
) -> None:
    """Create a sandbox from a profile and wait until it is ready."""
    parsed = _parse_inputs(inputs or [])

    async def work(client: SandboxerClient) -> dict[str, Any]:
        progress = Progress(enabled=not as_json)  # timed from here: not the service's start-up
        result = await client.create(profile, parsed, sandbox_id=sandbox_id,
                                     command_id=command_id, host=host, wait=not no_wait,
                                     on_event=progress, timeout=timeout)
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


@app.command()
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


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="only this status")] = None,
    all_: Annotated[bool, typer.Option("--all", help="include destroyed sandboxes")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List sandboxes (destroyed ones only with --all)."""
    sandboxes = run(with_client(
        lambda c: c.list_sandboxes(status=status, include_destroyed=all_)))
    if as_json:
        print_json(sandboxes)
        return
    print_table(
        [(s["sandbox_id"], s["status"], s["profile"], s["extension"], s["created_at"])
         for s in sandboxes],
        ["id", "status", "profile", "extension", "created"],
    )


@app.command()
def destroy(
    sandbox_id: str,
    no_wait: Annotated[bool, typer.Option("--no-wait")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Destroy a sandbox and wait until everything it owned is gone."""
    progress = Progress(enabled=not as_json)
    event = run(with_client(
        lambda c: c.destroy(sandbox_id, wait=not no_wait, on_event=progress)))
    if as_json:
        print_json(event)
    elif not no_wait:
        typer.echo(f"destroyed {sandbox_id}")


@app.command()
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


@app.command(context_settings={"allow_interspersed_args": False})
def exec(
    sandbox_id: str,
    argv: Annotated[list[str], typer.Argument(help="the command, after --")],
) -> None:
    """Run a command inside a sandbox: sandboxer exec ID -- CMD ARGS..."""

    def output(stream: str, data: bytes) -> None:
        target = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
        target.write(data)
        target.flush()

    command = list(argv)
    if command[:1] == ["--"]:  # click keeps the separator when interspersed args are off
        command = command[1:]
    if not command:
        say("error: give the command after --, e.g. sandboxer exec ID -- ls /workspace")
        raise typer.Exit(1)
    code = run(with_client(lambda c: c.exec(sandbox_id, command, output)))
    raise typer.Exit(code)


@app.command()
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


@app.command()
def replay(
    verify: Annotated[bool, typer.Option("--verify", help="compare, do not replace")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild every projection from the start of the log (--verify: prove it equals live)."""
    report = run(with_client(lambda c: c.replay(verify=verify)))
    report.pop("ok", None)
    if as_json:
        print_json(report)
    else:
        typer.echo(f"replayed {report['events']} events up to #{report['position']} in "
                   f"{report['seconds']} s ({report['events_per_second']} events/s)")
        if verify:
            typer.echo("rebuilt state equals live state" if report["verified"]
                       else "DIFFERENCES:\n" + "\n".join(report["differences"]))
    if verify and not report["verified"]:
        raise typer.Exit(1)


# -- catalog and checks ------------------------------------------------------------------------


@profiles_app.command("list")
def profiles_list(as_json: JsonOpt = False) -> None:
    """List the profiles (packaged and $SANDBOXER_HOME/profiles)."""
    catalog = load_catalog()
    rows = [(p.id, p.version, p.extension or "route: " + ",".join(p.candidates()),
             p.description) for p in catalog.profiles.values()]
    if as_json:
        print_json([p.model_dump() for p in catalog.profiles.values()])
    else:
        print_table(rows, ["id", "version", "backend", "description"])


@profiles_app.command("show")
def profiles_show(profile_id: str, as_json: JsonOpt = False) -> None:
    """Show one profile in full."""
    catalog = load_catalog()
    try:
        profile = catalog.profile(profile_id)
    except SandboxerError as exc:
        say(f"error: {exc.message}")
        raise typer.Exit(1) from None
    if as_json:
        print_json(profile.model_dump())
    else:
        import yaml

        typer.echo(f"# {catalog.profile_sources[profile_id]}")
        typer.echo(yaml.safe_dump(profile.model_dump(exclude_defaults=True), sort_keys=False))


@extensions_app.command("list")
def extensions_list(as_json: JsonOpt = False) -> None:
    """List the extension declarations."""
    catalog = load_catalog()
    if as_json:
        print_json([d.model_dump() for d in catalog.extensions.values()])
        return
    print_table(
        [(d.id, d.kind, "yes" if d.enabled else "no", ",".join(d.capabilities.isolation),
          d.description) for d in catalog.extensions.values()],
        ["id", "kind", "enabled", "isolation", "description"],
    )


@app.command()
def doctor(as_json: JsonOpt = False) -> None:
    """Check nats-server, bubblewrap, cgroups and the data directory; say how to fix each."""
    from sandboxer.cli.doctor import run_checks

    checks = run_checks(load_settings())
    if as_json:
        print_json([c.__dict__ for c in checks])
    else:
        for check in checks:
            mark = "ok  " if check.ok else "FAIL"
            typer.echo(f"[{mark}] {check.name}: {check.detail}")
            if not check.ok and check.fix:
                typer.echo(f"       fix: {check.fix}")
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
