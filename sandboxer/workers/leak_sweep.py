"""The leak sweep: while an extension worker runs, its backend's leaks are looked for again.

The worker's start squares what the backend lists with the log
(:meth:`~sandboxer.workers.extension_worker.ExtensionWorker.reconcile`). What appears after
it would otherwise run until the next start, an operator's ``reap-stale --apply``, the
sandbox's destroy or the provider's own timeout: on a hosted provider, a killed worker's
create that lands after the redelivered job's ``ready`` (the memory of creates given up on,
``hosted.create_once.LateCreates``, died with that worker), costing money all along. Every
``SANDBOXER_LEAK_SWEEP_INTERVAL`` seconds (0: never) this loop has the worker take the
start's removing steps again, and only those (``sweep_leaks``;
:data:`~sandboxer.domain.drift.LEAK_STEPS`). The control role runs the same loop for
credits held by lost creates (:mod:`~sandboxer.workers.hold_sweep`).

A sweep that fails (the provider down, no key, the bus away) is logged, and the next one
tries again: it never stops the worker. ``stop`` ends the loop at once, a sweep under way
included (every step it takes is idempotent, and the next sweep or start takes it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sandboxer.errors import BusError, ConfigError, ExtensionError

__all__ = ["run_leak_sweep"]

log = logging.getLogger(__name__)


async def run_leak_sweep(
    sweep_leaks: Callable[[], Awaitable[list[str]]],
    interval: float,
    stop: asyncio.Event,
    *,
    name: str,
) -> None:
    """Call ``sweep_leaks`` (one sweep; the ids of the sandboxes whose leaks it removed) every
    ``interval`` seconds until ``stop`` is set; never when ``interval`` is 0. The first sweep
    comes one interval after the start: the start itself has just reconciled. ``name``: the
    backend's id (``credits`` for the hold sweep), for the log."""
    if interval <= 0:
        return
    said: str | None = None  # the last failure warned about: a lasting one is said once
    while not await _stopped(stop, interval):
        sweep = asyncio.ensure_future(sweep_leaks())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({sweep, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not sweep.done():
                sweep.cancel()  # shutting down: the next start takes its steps again
            await asyncio.gather(sweep, stopping, return_exceptions=True)
        if sweep.cancelled():
            return
        failure = sweep.exception()
        if failure is None:
            said = None
            if removed := sweep.result():
                log.info("%s: leak sweep removed %s", name, ", ".join(removed))
            continue
        text = f"{type(failure).__name__}: {failure}"
        if isinstance(failure, BusError | ConfigError | ExtensionError):
            # A provider or the bus down, no key, no view answering: expected at times, and
            # the same each time.
            level = logging.WARNING if text != said else logging.DEBUG
            log.log(level, "%s: leak sweep failed, tried again later: %s", name, text)
        else:
            log.error("%s: leak sweep failed, tried again later", name, exc_info=failure)
        said = text


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set; whether it was."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()
