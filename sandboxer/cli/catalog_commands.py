"""Profiles, extension declarations and ``doctor``: what this machine and catalog offer."""

from __future__ import annotations

import typer

from sandboxer.cli.common import JsonOpt, load_catalog, load_settings
from sandboxer.cli.output import print_json, print_table, say
from sandboxer.errors import SandboxerError

__all__ = ["doctor", "extensions_app", "profiles_app"]

profiles_app = typer.Typer(help="The sandbox recipes: list them, show one.", no_args_is_help=True)
extensions_app = typer.Typer(help="The backends and what they offer.", no_args_is_help=True)


@profiles_app.command("list")
def profiles_list(as_json: JsonOpt = False) -> None:
    """List the profiles (packaged and $SANDBOXER_HOME/profiles)."""
    catalog = load_catalog()
    rows = [
        (p.id, p.version, p.extension or "route: " + ",".join(p.candidates()), p.description)
        for p in catalog.profiles.values()
    ]
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
        [
            (
                d.id,
                d.kind,
                "yes" if d.enabled else "no",
                ",".join(d.capabilities.isolation),
                d.description,
            )
            for d in catalog.extensions.values()
        ],
        ["id", "kind", "enabled", "isolation", "description"],
    )


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
