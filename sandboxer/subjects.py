"""Every NATS subject and stream name of the public contract, in one place.

See ``docs/protocol.md`` for what travels on each.
"""

from __future__ import annotations

__all__ = [
    "CHECKPOINTS_BUCKET",
    "COMMANDS_STREAM",
    "EVENTS_STREAM",
    "JOBS_STREAM",
    "command_subject",
    "exec_subject",
    "job_subject",
    "matches",
    "rejection_subject",
    "sandbox_event_subject",
    "sandbox_events_filter",
    "snapshot_event_subject",
    "snapshot_events_filter",
    "token_subject",
]

COMMANDS_STREAM = "SANDBOXER_COMMANDS"
EVENTS_STREAM = "SANDBOXER_EVENTS"
JOBS_STREAM = "SANDBOXER_JOBS"
WORKSPACES_BUCKET = "SANDBOXER_WORKSPACES"
"""Object Store bucket of uploaded directory inputs, named by content (docs/workspaces.md).
Snapshots store their data here too: a snapshot's object is a directory input a restore
hands to any backend (docs/snapshots.md)."""
CHECKPOINTS_BUCKET = "SANDBOXER_CHECKPOINTS"
"""Object Store bucket of account checkpoints (bus/checkpoints.py): the service identity's
alone, and not part of the contract."""

COMMANDS = "sandboxer.cmd.>"
EVENTS = "sandboxer.evt.>"
SNAPSHOT_EVENTS = "sandboxer.evt.snapshot.>"
USAGE_METERED = "sandboxer.evt.account.*.usage_metered"
"""Every project's metered usage: what the meter export follows (docs/payments.md)."""
JOBS = "sandboxer.job.>"

QUERY_GET = "sandboxer.query.sandbox.get"
QUERY_LIST = "sandboxer.query.sandbox.list"
QUERY_REJECTION = "sandboxer.query.command.rejection"
QUERY_SNAPSHOT_GET = "sandboxer.query.snapshot.get"
QUERY_SNAPSHOT_LIST = "sandboxer.query.snapshot.list"
QUERY_HEALTH = "sandboxer.query.health"
QUERY_HOSTS = "sandboxer.query.host.list"
QUERY_ROUTE_SIGNALS = "sandboxer.query.route.signals"
"""Routing's signals from the view: latency, live counts, circuits (docs/routing.md#signals)."""
QUERY_ROUTE_EXPLAIN = "sandboxer.query.route.explain"
"""Answered by the control worker: how a create would be routed now (docs/routing.md)."""
QUERY_CREDITS_GET = "sandboxer.query.credits.get"
QUERY_CREDITS_LIST = "sandboxer.query.credits.list"
QUERY_USAGE_LIST = "sandboxer.query.usage.list"
QUERY_SANDBOX_EVENTS = "sandboxer.query.sandbox.events"
"""One sandbox's or snapshot's events (or one command's rejection) from the log, a page at a
time: how a key identity, which may not read the events stream, follows its own sandboxes."""
QUERY_KEY_WHOAMI = "sandboxer.query.key.whoami"
"""Asked by a key identity (stamped): the actor its commands must carry."""
QUERY_KEY_GET = "sandboxer.query.key.get"
"""An API key by its hash (never the key): its id, project, type, limits and status."""
QUERY_KEY_LIST = "sandboxer.query.key.list"
QUERY_POOL_LIST = "sandboxer.query.pool.list"
"""Answered by the pool keepers (extension workers that pool): each pool's members."""
POOL_EVENTS = "sandboxer.evt.pool.>"
"""Every warm pool member's events: what a pool keeper folds into its index."""
ADMIN_REPLAY = "sandboxer.admin.replay"


def matches(subject: str, filter_subject: str) -> bool:
    """nats-server's subject match: ``*`` is one token, a final ``>`` one or more."""
    want, got = filter_subject.split("."), subject.split(".")
    for at, token in enumerate(want):
        if token == ">":
            return len(got) > at
        if at >= len(got) or token not in ("*", got[at]):
            return False
    return len(want) == len(got)


def command_subject(verb: str) -> str:
    return f"sandboxer.cmd.{verb}"


def sandbox_event_subject(sandbox_id: str, event_type: str) -> str:
    return f"sandboxer.evt.sandbox.{sandbox_id}.{event_type}"


def sandbox_events_filter(sandbox_id: str) -> str:
    """Every event of one sandbox: the expected-sequence scope of its appends."""
    return f"sandboxer.evt.sandbox.{sandbox_id}.>"


def snapshot_event_subject(snapshot_id: str, event_type: str) -> str:
    """``snapshot_created`` -> ``sandboxer.evt.snapshot.<id>.created``: the tag's prefix keeps
    tags unique across every event type; the subject already says "snapshot"."""
    return f"sandboxer.evt.snapshot.{snapshot_id}.{event_type.removeprefix('snapshot_')}"


def snapshot_events_filter(snapshot_id: str) -> str:
    """Every event of one snapshot: the expected-sequence scope of its appends."""
    return f"sandboxer.evt.snapshot.{snapshot_id}.>"


def account_event_subject(project: str, event_type: str) -> str:
    """A project's account: credits, reservations, metered usage (docs/payments.md)."""
    return f"sandboxer.evt.account.{project}.{event_type}"


def account_events_filter(project: str) -> str:
    """Every event of one project's account: the expected-sequence scope of its appends."""
    return f"sandboxer.evt.account.{project}.>"


def key_event_subject(key_id: str, event_type: str) -> str:
    """``key_created`` -> ``sandboxer.evt.key.<key_id>.created`` (docs/http-api.md#keys)."""
    return f"sandboxer.evt.key.{key_id}.{event_type.removeprefix('key_')}"


def key_events_filter(key_id: str) -> str:
    """Every event of one API key: the expected-sequence scope of its appends."""
    return f"sandboxer.evt.key.{key_id}.>"


def host_event_subject(host: str, event_type: str) -> str:
    return f"sandboxer.evt.host.{host}.{event_type}"


def place_event_subject(host: str, event_type: str) -> str:
    """``place_taken`` -> ``sandboxer.evt.host.<host>.place.taken``: a host's places have a
    scope of their own, so deciding on them never reads the host's telemetry."""
    return f"sandboxer.evt.host.{host}.place.{event_type.removeprefix('place_')}"


def place_events_filter(host: str) -> str:
    """Every place event of one host: the expected-sequence scope of its appends."""
    return f"sandboxer.evt.host.{host}.place.>"


def admin_subject(action: str, extension_id: str) -> str:
    """Core request subjects of the inventory service: inspect, stale and reap, per extension."""
    return f"sandboxer.admin.{action}.{extension_token(extension_id)}"


def stamped(subject: str, key_id: str) -> str:
    """A command, query, exec, token or files subject as a key identity publishes it: the
    key id last, which the server's permissions let only that key publish."""
    return f"{subject}.{key_id}"


def pool_event_subject(member_id: str, event_type: str) -> str:
    """``pool_member_claimed`` -> ``sandboxer.evt.pool.<member_id>.claimed`` (docs/pools.md)."""
    return f"sandboxer.evt.pool.{member_id}.{event_type.removeprefix('pool_member_')}"


def pool_events_filter(member_id: str) -> str:
    """Every event of one pool member: the expected-sequence scope of its appends."""
    return f"sandboxer.evt.pool.{member_id}.>"


def rejection_subject(key: str) -> str:
    return f"sandboxer.evt.command.{key}.rejected"


def extension_token(extension_id: str) -> str:
    """``ext.local`` -> ``local``: extension ids contain a dot, subject tokens cannot."""
    return extension_id.removeprefix("ext.")


def job_subject(extension_id: str, sandbox_id: str) -> str:
    return f"sandboxer.job.{extension_token(extension_id)}.{sandbox_id}"


def jobs_filter(extension_id: str) -> str:
    return f"sandboxer.job.{extension_token(extension_id)}.>"


def token_subject(sandbox_id: str) -> str:
    """Core request subject (outside every stream) for a sandbox's provider-issued tokens."""
    return f"sandboxer.token.{sandbox_id}"


def exec_subject(sandbox_id: str) -> str:
    """Core request subject (outside every stream) to run a command in a sandbox."""
    return f"sandboxer.exec.{sandbox_id}"
