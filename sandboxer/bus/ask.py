"""Asking the service a question over request/reply, riding out a responder's brief absence.

A role that restarts (``sandboxer up`` again, a worker between its stop and its
start) has no subscription for a moment, and nats-server answers a request sent
then with "no responders" at once. Such a request reached no one, so asking again
is safe: within a caller's ``budget`` it is asked again with backoff (``stamina``),
and only once the budget is spent does the caller hear that nothing answered.
A request that timed out is not asked again here: it may have reached a responder
that is still busy with it, and the caller knows whether that is worth repeating.
:func:`ask_json` also rides out an API key's request refused for its rate (the
answer says how long to wait: bus/key_request_rate.py) for as long as its caller
allows, and :func:`paced` does the same for a streamed request (exec, file copies,
tokens): a key's rate is checked before anything is done for a request, so a refused
one is safe to send again.

A request published with a reply inbox of one's own (a streamed answer: exec, files,
several replies) hears the same "no responders" as a message on that inbox, a status
with no body: :func:`no_responders` tells it from an answer; :func:`next_message` reads
such an inbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import stamina
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from sandboxer.domain.rate_limit import stated_wait
from sandboxer.errors import BusError, RateLimited, ServiceNotRunning
from sandboxer.exec_protocol.answer_codes import RATE_LIMITED

__all__ = [
    "RATE_PATIENCE",
    "RESTART_BUDGET",
    "RateRefusal",
    "ask",
    "ask_json",
    "next_message",
    "no_responders",
    "paced",
    "rate_refusal",
    "refused_at_once",
]

T = TypeVar("T")

RESTART_BUDGET = 10.0
"""Seconds a wait rides out an absent responder: a restarted ``sandboxer up`` answers within
a few (its projector catches up on the log first)."""

RATE_PATIENCE = 5.0
"""Seconds a client's request refused for its key's rate is sent again, as each refusal says
(a fraction of a second: a key's rate is at least one a second), before
:class:`RateLimited` is raised: a client paces its requests to its rate rather than failing
them, as its own waits for a command's outcome poll with the same rate
(docs/python-client.md)."""

NO_RESPONDERS_STATUS = "503"


async def next_message(sub: Subscription, timeout: float) -> Msg:
    """The next message on ``sub`` within ``timeout`` seconds (nats-py's TimeoutError after).

    Not ``sub.next_msg(timeout=...)``: it waits through ``asyncio.wait_for``, which on
    Python 3.11 returns a message that lands as its caller is cancelled and drops the
    cancellation (31 of 50 such cancels were lost here). A gateway's exec stopped for a
    revoked key, with the worker's ``alive`` checks arriving each second, then ran on and
    its request was never answered. ``asyncio.timeout`` keeps the cancellation.
    """
    try:
        async with asyncio.timeout(timeout):
            return await sub.next_msg(timeout=None)
    except TimeoutError:
        raise NatsTimeout from None


def no_responders(msg: Msg) -> bool:
    """Whether ``msg``, arrived on a request's reply inbox, is nats-server saying that
    nothing subscribes to the request's subject (it answers that at once)."""
    return not msg.data and (msg.headers or {}).get("Status") == NO_RESPONDERS_STATUS


async def ask(
    nc: Client, subject: str, payload: bytes, *, timeout: float, budget: float = 0.0
) -> Msg:
    """The answer to one request on ``subject``; each attempt waits ``timeout`` seconds.

    "No responders" is asked again with backoff until ``budget`` seconds have passed
    (0: asked once). Raises :class:`ServiceNotRunning` when nothing answered.
    """
    try:
        async for attempt in stamina.retry_context(
            on=NoRespondersError,
            attempts=None if budget > 0 else 1,
            timeout=budget if budget > 0 else None,
            wait_initial=0.05,
            wait_max=1.0,  # a role back from a restart is asked within a second
            wait_jitter=0.05,
        ):
            with attempt:
                return await nc.request(subject, payload, timeout=timeout)
    except (NoRespondersError, NatsTimeout) as exc:
        why = "nothing listens" if isinstance(exc, NoRespondersError) else f"{timeout:g}s passed"
        waited = f", asked again for {budget:g}s" if budget > 0 else ""
        raise ServiceNotRunning(
            f"no answer on {subject} ({why}{waited}); is 'sandboxer up' (or the worker that "
            "serves it) running against this NATS?"
        ) from exc
    except ConnectionClosedError as exc:
        raise BusError(
            f"asking {subject}: the connection to NATS is closed (its server went away and did "
            "not come back in time); connect again"
        ) from exc
    raise AssertionError("unreachable: stamina ends with a result or an exception")


async def ask_json(
    nc: Client,
    subject: str,
    payload: bytes,
    *,
    timeout: float,
    budget: float = 0.0,
    patience: float = 0.0,
) -> Any:
    """The decoded answer to one request (:func:`ask`). An answer refusing it for the
    asking key's rate (``code`` ``rate_limited``) is asked again after the wait it states,
    while that ends within ``patience`` seconds (``math.inf``: always); past that, the
    refusal is the answer."""

    async def once() -> Any:
        msg = await ask(nc, subject, payload, timeout=timeout, budget=budget)
        answer = msgspec.json.decode(msg.data)
        return rate_refusal(answer) or answer

    answer = await _pace(once, patience)
    return answer.answer if isinstance(answer, RateRefusal) else answer


@dataclass(frozen=True)
class RateRefusal:
    """A request's first answer refusing it for the asking key's rate, which comes before
    anything is done for it (workers/key_reach.py). A value an attempt returns, not an
    exception it raises: :func:`paced` sends again only what such an answer refused, never
    a request that failed later with :class:`RateLimited` (an exec's output callback that
    raised it, say, after its command had run)."""

    answer: dict[str, Any]

    def error(self) -> RateLimited:
        return RateLimited(str(self.answer.get("error")), retry_after=stated_wait(self.answer))


def rate_refusal(answer: Any) -> RateRefusal | None:
    """``answer`` as a :class:`RateRefusal` when it refuses its request for the key's rate."""
    if isinstance(answer, dict) and answer.get("code") == RATE_LIMITED:
        return RateRefusal(answer)
    return None


def refused_at_once(first: Msg, header: str, last: str) -> RateRefusal | None:
    """The first answer to a streamed request (exec, files) as a :class:`RateRefusal` when
    it refuses the request for the key's rate: then it is the stream's last answer
    (``header`` says ``last``), sent before anything ran or was copied."""
    if (first.headers or {}).get(header) != last:
        return None
    return rate_refusal(msgspec.json.decode(first.data))


async def paced(attempt: Callable[[], Awaitable[T | RateRefusal]], patience: float) -> T:
    """``attempt()``, made again while it returns a :class:`RateRefusal`, after the wait the
    refusal states, while that wait ends within ``patience`` seconds (``math.inf``: always);
    past that, the refusal is raised as :class:`RateLimited`. Only for a request whose
    refusal comes before anything is done for it (workers/key_reach.py): a key's
    live-sandbox limit, say, is never waited out here."""
    result = await _pace(attempt, patience)
    if isinstance(result, RateRefusal):
        raise result.error()
    return result


async def _pace(
    attempt: Callable[[], Awaitable[T | RateRefusal]], patience: float
) -> T | RateRefusal:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + patience
    while True:
        result = await attempt()
        if not isinstance(result, RateRefusal):
            return result
        wait = stated_wait(result.answer)
        if wait is None or loop.time() + wait > give_up:
            return result
        await asyncio.sleep(wait)
