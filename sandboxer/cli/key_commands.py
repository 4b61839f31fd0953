"""CLI commands for API keys: ``keys create|list|revoke`` (docs/http-api.md#keys).

``keys create`` draws the key here, on the operator's machine, prints it once,
and publishes only its SHA-256: the service, the log and the view never see
the key itself. Each command is an event (``key_created``, ``key_revoked``).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import typer

from sandboxer import subjects
from sandboxer.bus.permissions import key_user_entries
from sandboxer.cli.common import JsonOpt, exit_code, run, with_client
from sandboxer.cli.output import print_json, print_table, say
from sandboxer.cli.paging import AfterOpt, AllPagesOpt, LimitOpt, read_pages, tell_cut
from sandboxer.domain.key_state import (
    DEFAULT_MAX_LIVE,
    DEFAULT_RATE_PER_SECOND,
    hash_key,
    key_id_for,
    new_key,
)
from sandboxer.errors import BusError, OutcomePending, SandboxerError
from sandboxer.ids import new_command_id
from sandboxer.pagination import DEFAULT_LIMIT, Page

if TYPE_CHECKING:
    from sandboxer.bus.permissions import KeyUser
    from sandboxer.client import SandboxerClient

__all__ = ["create_key", "keys_app", "list_keys", "revoke_key"]

KeyType = Literal["adm", "agt", "atm"]

keys_app = typer.Typer(
    help="API keys for the HTTP gateway: create (shown once), list, revoke.",
    no_args_is_help=True,
)


KEY_WAIT = 30.0
"""Seconds a key command waits for its outcome by default."""
KEY_LOGIN_WAIT = 10.0
"""Longest a created key waits for the embedded NATS to take its login (about a second)."""


async def _key_command(
    client: SandboxerClient,
    verb: str,
    key_id: str,
    success: str,
    fields: dict[str, Any],
    wait: float = KEY_WAIT,
) -> dict[str, Any]:
    command = {"command_id": new_command_id(), "actor": client.actor, **fields}
    return await client.outcomes.run(
        verb,
        command,
        key_id,
        {success},
        lambda: client.publish_command(verb, command),
        None,
        wait,
        scope=subjects.key_events_filter(key_id),
    )


async def create_key(
    client: SandboxerClient,
    *,
    project: str,
    key_type: KeyType,
    name: str | None = None,
    max_live: int = DEFAULT_MAX_LIVE,
    rate_per_second: int = DEFAULT_RATE_PER_SECOND,
    key: str | None = None,
    wait: float = KEY_WAIT,
) -> tuple[str, dict[str, Any]]:
    """Draw a key (unless given one drawn by :func:`new_key`), record its hash; returns the
    key (to show once) and its ``key_created`` event (raises CommandFailed with the reason
    when rejected, OutcomePending when ``wait`` seconds passed with no outcome)."""
    from sandboxer.bus.key_users import bus_hash_for  # (with bcrypt, for this command alone)

    key = new_key() if key is None else key
    key_hash = hash_key(key)
    fields: dict[str, Any] = {
        "project": project,
        "key_type": key_type,
        "key_hash": key_hash,
        "bus_hash": bus_hash_for(key),  # the key also logs in to NATS (bus/key_users.py)
        "max_live": max_live,
        "rate_per_second": rate_per_second,
    }
    if name is not None:
        fields["name"] = name
    event = await _key_command(
        client, "create_key", key_id_for(key_hash), "key_created", fields, wait
    )
    await _until_the_bus_takes(client, key, wait)
    return key, event


async def _until_the_bus_takes(client: SandboxerClient, key: str, wait: float) -> None:
    """On the service's own NATS, wait (up to ``wait`` s, at most ``KEY_LOGIN_WAIT``) until
    the server takes the new key's login: the process that runs it loads the key's user
    within about a second of ``key_created`` (bus/key_users.py), and a key refused right
    after the command returned it is a trap. A shared NATS takes keys as its operator adds
    them (``keys nats-users``): nothing to wait for there. Past the wait, or when the service
    does not say which NATS it runs, the key is returned all the same: it is recorded."""
    import asyncio  # (not at the top: a command's --help loads no asyncio)

    from sandboxer.bus.connect import connect
    from sandboxer.bus.key_users import key_credentials

    server = client.nc.connected_url
    if server is None:
        return
    try:
        if (await client.health()).get("embedded") is not True:
            return
    except SandboxerError:
        return
    address = server._replace(netloc=server.netloc.rpartition("@")[2]).geturl()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait, KEY_LOGIN_WAIT)
    while True:
        try:
            taken = await connect(
                [address],
                name="sandboxer-key-check",
                long_lived=False,
                credentials=key_credentials(key),
            )
        except BusError:
            if loop.time() >= deadline:
                return
            await asyncio.sleep(0.1)
            continue
        await taken.close()
        return


async def revoke_key(
    client: SandboxerClient, key_id: str, reason: str | None = None
) -> dict[str, Any]:
    """Revoke a key; returns its ``key_revoked`` event."""
    fields: dict[str, Any] = {"key_id": key_id}
    if reason is not None:
        fields["reason"] = reason
    return await _key_command(client, "revoke_key", key_id, "key_revoked", fields)


async def list_keys(
    client: SandboxerClient,
    *,
    project: str | None = None,
    include_revoked: bool = False,
    limit: int = DEFAULT_LIMIT,
    after: str | None = None,
) -> Page[dict[str, Any]]:
    """A page of the keys (never their hashes), oldest first, after the cursor ``after``."""
    from sandboxer.client.pages import page_of

    request: dict[str, Any] = {
        "include_revoked": include_revoked,
        "limit": limit,
        "min_seq": client.seen_seq,
    }
    if project is not None:
        request["project"] = project
    if after is not None:
        request["after"] = after
    return page_of(await client.query(subjects.QUERY_KEY_LIST, request), "keys", after)


@keys_app.command("create")
def keys_create(
    project: Annotated[str, typer.Option("--project", help="the project the key acts for")],
    key_type: Annotated[
        str, typer.Option("--type", help="adm (everything), agt or atm (its project only)")
    ],
    name: Annotated[str | None, typer.Option("--name", help="a label for people")] = None,
    max_live: Annotated[
        int, typer.Option("--max-live", help="live sandboxes the project may have")
    ] = DEFAULT_MAX_LIVE,
    rate: Annotated[
        int, typer.Option("--rate", help="requests per second (per gateway process)")
    ] = DEFAULT_RATE_PER_SECOND,
    wait: Annotated[
        float, typer.Option("--wait", min=1, help="seconds to wait for the service to record it")
    ] = KEY_WAIT,
    as_json: JsonOpt = False,
) -> None:
    """Create an API key and print it once: only its hash is kept, so it cannot be shown again."""
    if key_type not in {"adm", "agt", "atm"}:
        raise typer.BadParameter("--type is adm, agt or atm")
    chosen: KeyType = "adm" if key_type == "adm" else "agt" if key_type == "agt" else "atm"
    key = new_key()
    try:
        key, event = run(
            with_client(
                lambda c: create_key(
                    c,
                    project=project,
                    key_type=chosen,
                    name=name,
                    max_live=max_live,
                    rate_per_second=rate,
                    key=key,
                    wait=wait,
                )
            ),
            keep=OutcomePending,
        )
    except OutcomePending as exc:
        # The command is accepted and will be carried out: a key not shown now is lost.
        if as_json:
            key_id = key_id_for(hash_key(key))
            print_json({"key": key, "key_id": key_id, "project": project, "pending": True})
        else:
            typer.echo(key)
        say(
            f"error: {exc.message} The line above is the key (shown only now): it works once "
            "the service has recorded it."
        )
        raise typer.Exit(exit_code(exc)) from None
    if as_json:
        print_json(
            {
                "key": key,
                "key_id": event["key_id"],
                "project": event["project"],
                "type": event["key_type"],
                "name": event.get("name"),
                "max_live": event["max_live"],
                "rate_per_second": event["rate_per_second"],
            }
        )
        return
    typer.echo(key)
    say(
        f"key {event['key_id']} ({chosen}, project {project}) created; the line above is the key: "
        "it is shown only now. Send it as 'Authorization: Bearer <key>'."
    )


@keys_app.command("list")
def keys_list(
    project: Annotated[str | None, typer.Option("--project", help="one project's keys")] = None,
    include_revoked: Annotated[bool, typer.Option("--revoked", help="revoked keys too")] = False,
    limit: LimitOpt = DEFAULT_LIMIT,
    after: AfterOpt = None,
    all_pages: AllPagesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The API keys (ids, projects, types, limits; never the keys or their hashes), oldest
    first, a page of --limit at a time (stderr says when more follow)."""
    keys = run(
        with_client(
            lambda c: read_pages(
                functools.partial(list_keys, c, project=project, include_revoked=include_revoked),
                after=after,
                all_pages=all_pages,
                limit=limit,
            )
        )
    )
    tell_cut(keys, "keys")
    if as_json:
        print_json(keys)
        return
    print_table(
        [
            [
                k["key_id"],
                k["type"],
                k["project"],
                k["name"] or "-",
                k["max_live"],
                k["rate_per_second"],
                k["status"],
                k["created_at"],
            ]
            for k in keys
        ],
        ["KEY ID", "TYPE", "PROJECT", "NAME", "MAX LIVE", "RATE/S", "STATUS", "CREATED"],
    )


@keys_app.command("revoke")
def keys_revoke(
    key_id: str,
    reason: Annotated[str | None, typer.Option("--reason", help="why, for the log")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke an API key: requests bearing it are refused from the next one on."""
    event = run(with_client(lambda c: revoke_key(c, key_id, reason)))
    if as_json:
        print_json(event)
    else:
        typer.echo(f"key {key_id} revoked")


async def key_users(client: SandboxerClient) -> list[KeyUser]:
    """Every active key's NATS user, folded from the log's key events."""
    from sandboxer.bus.event_reader import read_events
    from sandboxer.bus.key_users import KeyUsers

    users = KeyUsers()
    async for _seq, _subject, data, _pending in read_events(
        client.js, filter_subject="sandboxer.evt.key.>", idle_timeout=0.3
    ):
        event = msgspec.json.decode(data)
        if isinstance(event, dict):
            users.apply(event)
    return users.users()


@keys_app.command("nats-users")
def keys_nats_users() -> None:
    """Print the NATS 'users' entries of every active key, for a shared NATS's authorization
    block (docs/security.md#keys-on-the-bus); the embedded server keeps its own current."""
    users = run(with_client(key_users))
    typer.echo("\n".join(key_user_entries(users)))
    say(
        f"{len(users)} key users; merge them into the 'users' list of your server's "
        "authorization block and reload it (nats-server --signal reload)"
    )
