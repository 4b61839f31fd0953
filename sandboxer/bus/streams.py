"""The three JetStream streams of the contract, created or updated idempotently."""

from __future__ import annotations

import logging

import stamina
from nats import errors as nats_errors
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from sandboxer import subjects
from sandboxer.bus.publish import is_transient
from sandboxer.errors import BusError, StreamUnavailable

__all__ = ["ensure_streams", "stream_configs"]

log = logging.getLogger(__name__)

RACE_CODES = frozenset({10005, 10058, 10059, 10008})
"""No peers for placement yet, stream name already in use, stream not found, JetStream
temporarily unavailable: the answers of a cluster still forming, or of a concurrent creator."""

PLACEMENT_BUDGET = 60.0
"""Seconds start-up waits for the cluster to place the streams (nodes may start a while apart)."""

MAX_MSG_BYTES = 1024 * 1024
"""Larger than any accepted command, so oversized ones reach the control worker and get a reason."""


def stream_configs(replicas: int = 1) -> list[StreamConfig]:
    return [
        StreamConfig(
            name=subjects.COMMANDS_STREAM,
            description="sandboxer commands: a work queue consumed by the control worker",
            subjects=[subjects.COMMANDS],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=120,
            max_msg_size=MAX_MSG_BYTES,
        ),
        StreamConfig(
            name=subjects.EVENTS_STREAM,
            description="sandboxer events: the append-only source of truth, kept forever",
            subjects=[subjects.EVENTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=120,
            deny_delete=True,
            deny_purge=True,
            allow_direct=True,
            max_msg_size=MAX_MSG_BYTES,
        ),
        StreamConfig(
            name=subjects.JOBS_STREAM,
            description="sandboxer jobs: a work queue per extension (sandboxer.job.<ext>.<id>)",
            subjects=[subjects.JOBS],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=120,
            max_msg_size=MAX_MSG_BYTES,
        ),
    ]


def replicas_for(server_info: dict[str, object]) -> int:
    """One replica on a lone server (embedded), three in a cluster."""
    return 3 if server_info.get("cluster") else 1


async def ensure_streams(
    js: JetStreamContext, replicas: int = 1, *, budget_seconds: float = PLACEMENT_BUDGET
) -> None:
    """Create the streams, or bring an existing one's settings up to date.

    Retried for ``budget_seconds`` (time, not attempts) on the answers of a
    cluster that is still forming or electing: no peers for placement yet
    (10005), JetStream temporarily unavailable, no responders, a timeout. And
    several roles may start at once on different cluster nodes: when one node
    creates a replicated stream while another updates it, nats-server may
    answer neither (the stream is created all the same), so a "not found" or
    "name in use" is retried too, and checked again.
    """
    for config in stream_configs(replicas):
        try:
            async for attempt in stamina.retry_context(
                on=_wait_for_placement,
                attempts=None,
                timeout=budget_seconds,
                wait_initial=0.25,
                wait_max=2.0,
                wait_jitter=0.25,
            ):
                with attempt:
                    await _create_or_update(js, config)
        except APIError as exc:
            if not _placement_pending(exc):
                raise BusError(f"creating stream {config.name} was refused: {exc}") from exc
            raise _unplaced(config, budget_seconds, exc) from exc
        except nats_errors.Error as exc:
            if not _placement_pending(exc):
                raise BusError(f"creating stream {config.name} failed: {exc!r}") from exc
            raise _unplaced(config, budget_seconds, exc) from exc


async def _create_or_update(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
    else:
        await js.update_stream(config)


def _placement_pending(exc: BaseException) -> bool:
    return (isinstance(exc, APIError) and exc.err_code in RACE_CODES) or is_transient(exc)


def _wait_for_placement(exc: BaseException) -> bool:
    if not _placement_pending(exc):
        return False
    log.info("waiting for the cluster to place the streams: %r", exc)
    return True


def _unplaced(config: StreamConfig, budget: float, exc: BaseException) -> StreamUnavailable:
    return StreamUnavailable(
        f"stream {config.name} could not be placed within {budget:g} s ({exc}); "
        f"it needs {config.num_replicas} JetStream servers that see each other: "
        "check that every cluster node is up and routed"
    )
