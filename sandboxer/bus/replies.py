"""Where the service may send an answer: to an inbox, and nowhere else.

nats-server checks who may publish a request, never the subject that request
names for its answer. The service's identity may publish to the log, the job
queues and the JetStream API, so an answer sent wherever a request asked would
be the requester's own publish made with the service's rights: a forged event
(an ``adm`` key's ``key_created``), a job, a purged stream. Every answer the
service sends to a requester (queries, exec, files, tokens, their acks) goes
to the subject :func:`answer_subject` allows, or is not sent.
"""

from __future__ import annotations

import re

__all__ = ["answer_subject"]

_INBOX = re.compile(r"_INBOX(?:\.[A-Za-z0-9_-]+)+")
"""An inbox subject, as NATS clients make them (``_INBOX.<random>[.<token>]``): no
wildcards, nothing outside the ``_INBOX.`` tree."""


def answer_subject(reply: str | None, key_id: str | None = None) -> str | None:
    """``reply`` when an answer may go there: an inbox, and for a request a key identity
    made (``key_id``), that key's own inbox (``_INBOX.<key id>.``, the only one it may read);
    None otherwise, and the request is not answered."""
    if not reply or not _INBOX.fullmatch(reply):
        return None
    if key_id is not None and not reply.startswith(f"_INBOX.{key_id}."):
        return None
    return reply
