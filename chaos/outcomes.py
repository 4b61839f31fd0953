"""Checks the cluster and resource scenarios share on top of chaos/checks.py: nothing recorded
twice (an event, or a command's outcome), and commands sent with an unknown fate."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping

from chaos.checks import TERMINAL_EVENTS, LogView, Sent

__all__ = [
    "ACCOUNT_VERBS",
    "ONCE_PER_COMMAND",
    "account_unfinished",
    "duplicated",
    "failed_internally",
]

ONCE_PER_COMMAND = frozenset(
    {"requested", "rejected", "credits_added", "usage_metered"}
    | {kind for kinds in TERMINAL_EVENTS.values() for kind in kinds}
)
"""Event types a command's id may carry at most once on one aggregate (a redelivered command
or a retried append must not record its outcome again)."""


ACCOUNT_VERBS: dict[str, str] = {
    "add_credits": "credits_added",
    "set_budget": "budget_set",
    "set_byok": "byok_set",
}
"""Account commands (checks.every_command_terminal knows sandbox verbs) and the event that
ends each; a ``rejected`` ends any."""


def account_unfinished(view: LogView, sent: Mapping[str, Sent]) -> list[str]:
    """Problems: an account command in ``sent`` with neither its event nor a rejection (read
    after the control worker has handled every command)."""
    open_ = [
        f"{s.verb} {c}"
        for c, s in sent.items()
        if s.verb in ACCOUNT_VERBS
        and not {k for k, _ in view.by_command.get(c, [])} & {ACCOUNT_VERBS[s.verb], "rejected"}
    ]
    if not open_:
        return []
    return [f"{len(open_)} account commands reached no terminal event: {'; '.join(open_[:5])}"]


def duplicated(view: LogView, sent: Mapping[str, Sent]) -> list[str]:
    """Problems: an event id stored twice, or a command's outcome recorded twice."""
    ids: Counter[str] = Counter()
    outcomes: Counter[tuple[str, str, str]] = Counter()
    for _seq, subject, data in view.raw:
        try:
            body = json.loads(data)
        except ValueError:
            continue  # LogView reports it as undecodable
        ids[str(body.get("event_id"))] += 1
        kind, command_id = str(body.get("type")), body.get("command_id")
        if command_id and kind in ONCE_PER_COMMAND:
            aggregate = ".".join(subject.split(".")[2:4])
            outcomes[(str(command_id), aggregate, kind)] += 1
    problems = [f"event id {e} stored {n} times" for e, n in ids.items() if n > 1]
    problems += [
        f"{sent[c].verb if c in sent else 'command'} {c}: {kind} on {aggregate} recorded {n} times"
        for (c, aggregate, kind), n in outcomes.items()
        if n > 1
    ]
    return problems


def failed_internally(view: LogView, sent: Mapping[str, Sent]) -> list[str]:
    """Problems: a command of ``sent`` rejected ``internal_error`` (the worker gave up on it
    after failing again and again). A fault of the bus or a busy aggregate is the service's to
    wait out; a valid command must not be refused for it."""
    found: Counter[str] = Counter()
    example: dict[str, str] = {}
    for _seq, subject, data in view.raw:
        if not subject.endswith(".rejected"):
            continue
        try:
            body = json.loads(data)
        except ValueError:
            continue
        if body.get("code") == "internal_error" and body.get("command_id") in sent:
            verb = sent[str(body["command_id"])].verb
            found[verb] += 1
            example.setdefault(verb, str(body.get("reason"))[:200])
    return [
        f"{n} {verb} commands rejected internal_error, e.g. {example[verb]!r}"
        for verb, n in found.items()
    ]
