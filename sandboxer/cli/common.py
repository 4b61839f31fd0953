"""What every CLI command shares: settings, running a coroutine, a client, the catalog.

The client (with nats-py and aiohttp) and the catalog (with yaml and pydantic) are
imported by the commands that use them, when they run: ``sandboxer --help`` and a
command's ``--help`` load neither (tests/unit/test_cli_imports.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from sandboxer.cli.output import say
from sandboxer.config.settings import Settings
from sandboxer.errors import CommandFailed, SandboxerError

if TYPE_CHECKING:
    from sandboxer.client import SandboxerClient
    from sandboxer.config.catalog import Catalog

__all__ = ["JsonOpt", "exit_code", "load_catalog", "load_settings", "run", "with_client"]

T = TypeVar("T")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def load_settings() -> Settings:
    return Settings.from_env()


def exit_code(error: SandboxerError) -> int:
    """2 when a command was rejected or a sandbox failed, 1 for every other sandboxer error."""
    return 2 if isinstance(error, CommandFailed) else 1


def run(coro: Coroutine[Any, Any, T], *, keep: type[SandboxerError] | None = None) -> T:
    """Run ``coro``; a sandboxer error becomes its message on stderr and :func:`exit_code`,
    but for one of type ``keep``, raised for the caller to say more."""
    import asyncio  # (here: ``--help`` and typer's own errors need no event loop)

    try:
        return asyncio.run(coro)
    except SandboxerError as exc:
        if keep is not None and isinstance(exc, keep):
            raise
        say(f"error: {exc.message}")
        raise typer.Exit(exit_code(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


async def with_client(
    work: Callable[[SandboxerClient], Awaitable[T]], *, autostart: bool = False
) -> T:
    from sandboxer.cli.background import connect_client

    client = await connect_client(load_settings(), autostart=autostart, say=say)
    try:
        return await work(client)
    finally:
        await client.close()


def load_catalog() -> Catalog:
    from sandboxer.config.catalog import Catalog

    try:
        return Catalog.load(load_settings().home)
    except SandboxerError as exc:
        say(f"error: {exc.message}")
        raise typer.Exit(1) from None
