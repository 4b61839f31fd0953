"""The ``sandboxer`` command line (typer). Every command but ``up``/``worker`` is a bus client.

Commands are registered here, in the order ``sandboxer --help`` lists them:
the everyday ones a user of sandboxes needs first, then the ones an operator
of the service needs. The commands themselves live in ``*_commands.py``.
"""

from __future__ import annotations

import inspect
import sys

import typer

from sandboxer.cli import (
    catalog_commands,
    credit_commands,
    file_commands,
    host_commands,
    key_commands,
    lifetime_commands,
    route_commands,
    sandbox_commands,
    service_commands,
    snapshot_commands,
    statehub_commands,
)
from sandboxer.cli.common import exit_code
from sandboxer.cli.output import say
from sandboxer.errors import SandboxerError
from sandboxer.retry_hooks import silence_retry_hooks

__all__ = ["EVERYDAY", "OPERATOR", "app", "main"]

EVERYDAY = "Everyday"
OPERATOR = "Operator"

app = typer.Typer(
    help="Establish isolated sandboxes on many backends through one event-sourced API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# -- everyday: sandboxes and the recipes they are made from ----------------------------------------
app.command("create", rich_help_panel=EVERYDAY)(sandbox_commands.create)
app.command("list", rich_help_panel=EVERYDAY)(sandbox_commands.list_sandboxes)
app.command("get", rich_help_panel=EVERYDAY)(sandbox_commands.get)
app.command("exec", rich_help_panel=EVERYDAY, context_settings=sandbox_commands.EXEC_CONTEXT)(
    sandbox_commands.exec_command
)
app.command("cp", rich_help_panel=EVERYDAY)(file_commands.copy)
app.command("destroy", rich_help_panel=EVERYDAY)(sandbox_commands.destroy)
app.command("recreate", rich_help_panel=EVERYDAY)(sandbox_commands.recreate)
app.command("events", rich_help_panel=EVERYDAY)(sandbox_commands.events)
app.command("extend-ttl", rich_help_panel=EVERYDAY)(lifetime_commands.extend_ttl)
app.command("touch", rich_help_panel=EVERYDAY)(lifetime_commands.touch)
app.command("pause", rich_help_panel=EVERYDAY)(lifetime_commands.pause)
app.command("resume", rich_help_panel=EVERYDAY)(lifetime_commands.resume)
app.command("snapshot", rich_help_panel=EVERYDAY)(snapshot_commands.snapshot)
app.add_typer(snapshot_commands.snapshots_app, name="snapshots", rich_help_panel=EVERYDAY)
app.command("restore", rich_help_panel=EVERYDAY)(snapshot_commands.restore)
app.add_typer(catalog_commands.profiles_app, name="profiles", rich_help_panel=EVERYDAY)
app.add_typer(credit_commands.credits_app, name="credits", rich_help_panel=EVERYDAY)
app.command("usage", rich_help_panel=EVERYDAY)(credit_commands.usage)
# 'create' starts a background service when none runs; 'down' is how its user stops it.
app.command("down", rich_help_panel=EVERYDAY)(service_commands.down)

# -- operator: running the service, checking the machine, hosts and drift --------------------------
app.command("up", rich_help_panel=OPERATOR)(service_commands.up)
app.command("worker", rich_help_panel=OPERATOR)(service_commands.worker)
app.command("doctor", rich_help_panel=OPERATOR)(catalog_commands.doctor)
app.add_typer(catalog_commands.extensions_app, name="extensions", rich_help_panel=OPERATOR)
app.add_typer(host_commands.inspect_app, name="inspect", rich_help_panel=OPERATOR)
app.command("reap-stale", rich_help_panel=OPERATOR)(host_commands.reap_stale)
app.command("expire", rich_help_panel=OPERATOR)(lifetime_commands.expire)
app.command("hosts", rich_help_panel=OPERATOR)(host_commands.hosts_view)
app.command("pools", rich_help_panel=OPERATOR)(host_commands.pools_view)
app.command("replay", rich_help_panel=OPERATOR)(service_commands.replay)
app.add_typer(route_commands.route_app, name="route", rich_help_panel=OPERATOR)
app.add_typer(key_commands.keys_app, name="keys", rich_help_panel=OPERATOR)
app.add_typer(statehub_commands.statehub_app, name="statehub", rich_help_panel=OPERATOR)


def _one_line_summaries(group: typer.Typer) -> None:
    """Give each command of a listing its docstring's first paragraph on one line.

    typer's rich listing keeps the line breaks of a docstring's wrapped first paragraph,
    so a summary broke mid-sentence in ``--help`` wherever its source line ended.
    """
    for info in group.registered_commands:
        if info.short_help is None and info.callback is not None and info.callback.__doc__:
            first_paragraph = inspect.cleandoc(info.callback.__doc__).split("\n\n")[0]
            info.short_help = " ".join(first_paragraph.split())
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _one_line_summaries(sub.typer_instance)


_one_line_summaries(app)


def main() -> None:
    """Entry point: a sandboxer error anywhere (a bad setting, a missing setup) is one line."""
    silence_retry_hooks()
    try:
        app()
    except SandboxerError as exc:
        say(f"error: {exc.message}")
        sys.exit(exit_code(exc))


if __name__ == "__main__":
    main()
