"""The commands that run or manage the service itself: up, worker, down, replay."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Annotated

import typer

from sandboxer.cli.common import JsonOpt, load_settings, run, with_client
from sandboxer.cli.output import print_json, say

__all__ = ["down", "replay", "up", "worker"]


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def up(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run the whole service (NATS unless SANDBOXER_NATS_URL is set, control, projector, extensions)."""
    settings = load_settings()  # before the heavy import: a bad setting is reported at once
    from sandboxer.service import serve
    from sandboxer.service_discovery import read_service_file

    running = read_service_file(settings)
    if settings.embedded and running is not None:
        say(f"sandboxer is already running (pid {running['pid']}, {running['nats_url']})")
        raise typer.Exit(1)
    _configure_logging(verbose)
    run(serve(settings))


def worker(
    roles: Annotated[
        list[str],
        typer.Argument(help="control, projector, meter, gateway, statehub or an extension id"),
    ],
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run chosen roles alone against SANDBOXER_NATS_URL (for scale-out)."""
    settings = load_settings()
    if settings.embedded:
        say(
            "error: 'sandboxer worker' needs SANDBOXER_NATS_URL (the NATS the service uses), "
            "e.g. SANDBOXER_NATS_URL=nats://127.0.0.1:4222; 'sandboxer up' runs every role "
            "with its own NATS instead"
        )
        raise typer.Exit(1)
    from sandboxer.service import serve

    _configure_logging(verbose)
    run(serve(settings, roles))


def down() -> None:
    """Stop the embedded service started by 'sandboxer up' or 'sandboxer create'."""
    from sandboxer.service_discovery import read_service_file

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
        typer.echo(
            f"replayed {report['events']} events up to #{report['position']} in "
            f"{report['seconds']} s ({report['events_per_second']} events/s)"
        )
        if verify:
            typer.echo(
                "rebuilt state equals live state"
                if report["verified"]
                else "DIFFERENCES:\n" + "\n".join(report["differences"])
            )
    if verify and not report["verified"]:
        raise typer.Exit(1)
