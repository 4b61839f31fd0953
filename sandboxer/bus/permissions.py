"""Who may publish and subscribe to what on NATS: the one list of every identity's subjects.

Two identities (docs/security.md#nats-access):

``service``
    The roles that own the streams: control, projector, meter, the extension
    workers. They append events, dispatch jobs, answer requests, manage the
    streams and their consumers. Of the commands they may publish only the
    internal ones they send themselves: ``touch`` (an exec is activity),
    ``expire`` (the expirer) and ``reroute`` (a job's fallback).
``client``
    The CLI, any bus client and the HTTP gateway (a bus client for HTTP
    callers). Clients publish commands, make queries and exec/token/admin
    requests, read the events stream (ordered consumers, direct get, and
    durable pull consumers of their own that a subscriber such as a scheduler
    resumes from: see :data:`SERVICE_EVENT_CONSUMERS`) and upload to the
    workspaces Object Store. They may not publish to the events
    or jobs streams, and the JetStream API subjects they get cannot delete,
    purge or change a stream.

``key <id>`` (one per API key created with a bus identity)
    A project identity: the NATS user is the key's id, its password the key
    (checked against the bcrypt ``bus_hash`` of ``key_created``). It publishes
    commands and queries only on subjects ending in its key id, which the
    control worker and the projector resolve to the key's actor (an ``adm`` key
    also the plain queries and admin requests, which name no key; no key another
    key's); it receives
    only on its own inbox (``_INBOX.<key id>.>``): a sandbox's events come to it
    as answers to a query that checks the sandbox is its project's. See :func:`key_permissions`.

The embedded server's configuration and the snippet docs/security.md gives for
a shared NATS are both rendered from :data:`PERMISSIONS` by :func:`authorization_block`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sandboxer import subjects

__all__ = [
    "CLIENT",
    "INTERNAL_COMMANDS",
    "PERMISSIONS",
    "ROLES",
    "SERVICE",
    "SERVICE_EVENT_CONSUMERS",
    "USERS",
    "KeyUser",
    "Permissions",
    "authorization_block",
    "key_permissions",
    "key_user_entries",
    "shared_nats_config",
]

SERVICE = "service"
CLIENT = "client"
ROLES = (SERVICE, CLIENT)
USERS = {SERVICE: "sandboxer-service", CLIENT: "sandboxer-client"}
"""The NATS user of each identity (the embedded server's, and the documented shared ones)."""

INTERNAL_COMMANDS = ("touch", "expire", "reroute")
"""The only commands the service identity publishes (exec service, expirer, job fallback)."""

SERVICE_EVENT_CONSUMERS = ("meter", "statehub")
"""The service's own durable consumers on the events stream. A client may create, pull from
and acknowledge durable consumers there (a scheduler follows lifecycles with one,
docs/integrations/scheduler.md), but never these: pulling or acking from the meter's would
take events away from billing. NATS permissions match whole subject tokens, so a name prefix
for clients' consumers cannot be expressed; the service's few names are denied instead. The
bare ``CONSUMER.CREATE`` subject cannot be (ordered consumers use it), and a request there may
name one of these: the service undoes that without loss (bus/guarded_durable.py)."""

_EVENTS = subjects.EVENTS_STREAM
_WORKSPACES = f"OBJ_{subjects.WORKSPACES_BUCKET}"  # the Object Store bucket's stream
_API = "$JS.API"


@dataclass(frozen=True)
class Permissions:
    """One identity's nats-server ``permissions`` block (deny wins over allow)."""

    publish_allow: tuple[str, ...]
    publish_deny: tuple[str, ...]
    subscribe_allow: tuple[str, ...]
    subscribe_deny: tuple[str, ...] = ()


_SERVICE = Permissions(
    publish_allow=(
        subjects.EVENTS,  # appends (the event store), rejections included
        subjects.JOBS,  # the control worker dispatches jobs
        *(subjects.command_subject(verb) for verb in INTERNAL_COMMANDS),
        "sandboxer.query.>",  # the expirer, routing and inventory ask the view
        f"{_API}.>",  # streams, durable consumers, fetches, direct gets, the bucket
        "$JS.ACK.>",  # acknowledging commands and jobs
        "$JS.FC.>",  # flow control of ordered consumers (replay, downloads)
        f"$O.{subjects.WORKSPACES_BUCKET}.>",  # snapshots store their data in the bucket
        f"$O.{subjects.CHECKPOINTS_BUCKET}.>",  # account checkpoints: the service's alone
        "_INBOX.>",  # answers to requests (queries, exec output, tokens)
    ),
    publish_deny=(
        f"{_API}.STREAM.DELETE.>",
        f"{_API}.STREAM.PURGE.{_EVENTS}",
        f"{_API}.STREAM.MSG.DELETE.{_EVENTS}",
    ),
    subscribe_allow=("sandboxer.>", "_INBOX.>"),
)

_CLIENT = Permissions(
    publish_allow=(
        "sandboxer.>",  # commands, queries, exec, tokens, admin requests ...
        f"{_API}.INFO",
        f"{_API}.STREAM.NAMES",  # nats-py's js.subscribe without a stream looks it up
        # Reading the events stream: its state, single messages, ordered consumers.
        f"{_API}.STREAM.INFO.{_EVENTS}",
        f"{_API}.STREAM.MSG.GET.{_EVENTS}",
        f"{_API}.DIRECT.GET.{_EVENTS}",
        f"{_API}.DIRECT.GET.{_EVENTS}.>",
        f"{_API}.CONSUMER.CREATE.{_EVENTS}",
        f"{_API}.CONSUMER.CREATE.{_EVENTS}.>",
        f"{_API}.CONSUMER.INFO.{_EVENTS}.*",
        f"{_API}.CONSUMER.DELETE.{_EVENTS}.*",
        # A durable pull consumer of its own: fetch, and acknowledge what it handled.
        f"{_API}.CONSUMER.MSG.NEXT.{_EVENTS}.*",
        f"$JS.ACK.{_EVENTS}.>",
        "$JS.FC.>",
        # The workspaces bucket: created by the first upload, written and read by clients.
        f"{_API}.STREAM.INFO.{_WORKSPACES}",
        f"{_API}.STREAM.CREATE.{_WORKSPACES}",
        f"{_API}.STREAM.MSG.GET.{_WORKSPACES}",
        f"{_API}.DIRECT.GET.{_WORKSPACES}.>",
        f"{_API}.CONSUMER.CREATE.{_WORKSPACES}",
        f"{_API}.CONSUMER.CREATE.{_WORKSPACES}.>",
        f"{_API}.CONSUMER.DELETE.{_WORKSPACES}.*",
        f"$O.{subjects.WORKSPACES_BUCKET}.>",
    ),
    publish_deny=(
        subjects.EVENTS,
        subjects.JOBS,
        *(
            denied
            for name in SERVICE_EVENT_CONSUMERS
            for denied in (
                f"{_API}.CONSUMER.CREATE.{_EVENTS}.{name}",
                f"{_API}.CONSUMER.CREATE.{_EVENTS}.{name}.>",
                f"{_API}.CONSUMER.DELETE.{_EVENTS}.{name}",
                f"{_API}.CONSUMER.MSG.NEXT.{_EVENTS}.{name}",
                f"$JS.ACK.{_EVENTS}.{name}.>",
            )
        ),
    ),
    subscribe_allow=("_INBOX.>", subjects.EVENTS),
)

PERMISSIONS: Mapping[str, Permissions] = {SERVICE: _SERVICE, CLIENT: _CLIENT}

_ADMIN_PLAIN = (
    "sandboxer.query.*.*",  # the plain queries (hosts, keys, pools...); a key's have 5 tokens
    "sandboxer.admin.>",  # replay, and the inventory's inspect, stale and reap: never stamped
)
"""The unstamped ``sandboxer.`` subjects an ``adm`` key publishes: none can be a key's
stamped subject (``sandboxer.cmd.<verb>.<key>``, ``sandboxer.query.<kind>.<what>.<key>``,
``sandboxer.exec|files|token.<sandbox>.<key>``)."""

_CLIENT_OUTSIDE_SANDBOXER = tuple(
    subject for subject in _CLIENT.publish_allow if not subject.startswith("sandboxer.")
)
"""The client identity's JetStream and bucket subjects: what an ``adm`` key reads with."""


@dataclass(frozen=True)
class KeyUser:
    """An API key's NATS identity: user ``key_id``, password checked against ``bus_hash``."""

    key_id: str
    key_type: str
    project: str
    bus_hash: str


def key_permissions(user: KeyUser) -> Permissions:
    """What an API key may reach on the bus: only subjects that name its key id (commands,
    queries, exec, tokens, files), and its own inbox. Not the workspaces bucket: its copies
    carry their bytes on the files request itself (workers/inline_files.py).

    An ``adm`` key is an administrator: it reads as the client identity does (the events
    stream, the workspaces bucket, the plain queries and admin requests), but its commands,
    queries, execs, copies and token requests carry its key id, so that they are its own. It
    is never given ``sandboxer.>`` as the client identity is: that holds every other key's
    stamped subjects, and the workers take the stamp for the sender (an ``adm`` key could
    publish ``sandboxer.cmd.destroy.<another key>`` as that key). Its plain subjects are
    written by shape instead, each one token shorter than a stamped one.
    """
    key = user.key_id
    stamped = (
        f"sandboxer.cmd.*.{key}",  # commands: the control worker stamps the key's actor
        f"sandboxer.query.*.*.{key}",  # the projector answers for the key's project only
        f"sandboxer.exec.*.{key}",
        f"sandboxer.token.*.{key}",
        f"sandboxer.files.*.{key}",
        "sandboxer.stdin.>",  # an exec's input: its subject is a random capability
        subjects.QUERY_HEALTH,
    )
    inbox = f"_INBOX.{key}.>"
    if user.key_type == "adm":
        return Permissions(
            publish_allow=(*stamped, *_ADMIN_PLAIN, *_CLIENT_OUTSIDE_SANDBOXER),
            publish_deny=(*_CLIENT.publish_deny, "sandboxer.cmd.*"),
            subscribe_allow=(inbox, subjects.EVENTS),
        )
    return Permissions(
        publish_allow=stamped,
        publish_deny=(subjects.EVENTS, subjects.JOBS, "sandboxer.cmd.*"),
        subscribe_allow=(inbox,),
    )


def _list(key: str, items: tuple[str, ...], indent: str) -> list[str]:
    return [f"{indent}{key}: [", *(f"{indent}  {json.dumps(item)}" for item in items), f"{indent}]"]


def _permissions_block(perms: Permissions, indent: str) -> list[str]:
    inner = indent + "    "
    lines = [f"{indent}permissions: {{", f"{indent}  publish: {{"]
    lines += _list("allow", perms.publish_allow, inner)
    if perms.publish_deny:
        lines += _list("deny", perms.publish_deny, inner)
    lines += [f"{indent}  }}", f"{indent}  subscribe: {{"]
    lines += _list("allow", perms.subscribe_allow, inner)
    if perms.subscribe_deny:
        lines += _list("deny", perms.subscribe_deny, inner)
    lines += [f"{indent}  }}", f"{indent}}}"]
    return lines


def authorization_block(passwords: Mapping[str, str], keys: Sequence[KeyUser] = ()) -> str:
    """nats-server's ``authorization`` block for both identities and each key's.

    ``passwords`` maps each role to what follows ``password:`` verbatim: a quoted
    string, or a ``$VARIABLE`` the server reads from its environment. A key's
    password is its bcrypt hash (nats-server compares a bcrypt hash itself).
    """
    lines = ["authorization {", "  users: ["]
    lines += key_user_entries(keys)
    for role in ROLES:
        lines += [
            "    {",
            f"      user: {json.dumps(USERS[role])}",
            f"      password: {passwords[role]}",
            *_permissions_block(PERMISSIONS[role], "      "),
            "    }",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def key_user_entries(keys: Sequence[KeyUser]) -> list[str]:
    """The ``users`` entries of ``keys`` (what ``sandboxer keys nats-users`` prints)."""
    lines: list[str] = []
    for key in keys:
        lines += [
            "    {",
            f"      user: {json.dumps(key.key_id)}",
            f"      password: {json.dumps(key.bus_hash)}",
            *_permissions_block(key_permissions(key), "      "),
            "    }",
        ]
    return lines


def shared_nats_config() -> str:
    """The snippet docs/security.md gives for a shared NATS (passwords from the environment)."""
    return authorization_block(
        {SERVICE: "$NATS_SANDBOXER_SERVICE_PASSWORD", CLIENT: "$NATS_SANDBOXER_CLIENT_PASSWORD"}
    )
