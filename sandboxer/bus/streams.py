"""The three JetStream streams of the contract, created or updated idempotently."""

from __future__ import annotations

import asyncio

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from sandboxer import subjects

__all__ = ["ensure_streams", "stream_configs"]

RACE_CODES = frozenset({10058, 10059, 10008})
"""Stream name already in use, stream not found, JetStream temporarily unavailable."""

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


async def ensure_streams(js: JetStreamContext, replicas: int = 1, *, attempts: int = 8) -> None:
    """Create the streams, or bring an existing one's settings up to date.

    Several roles may start at once on different cluster nodes: when one node
    creates a replicated stream while another updates it, nats-server may
    answer neither (the stream is created all the same), so a timeout or a
    "not found" is retried after a short pause, and checked again.
    """
    for config in stream_configs(replicas):
        assert config.name is not None
        for attempt in range(attempts):
            try:
                try:
                    await js.stream_info(config.name)
                except NotFoundError:
                    await js.add_stream(config)
                else:
                    await js.update_stream(config)
                break
            except (NatsTimeout, TimeoutError, NotFoundError, APIError) as exc:
                if isinstance(exc, APIError) and exc.err_code not in RACE_CODES:
                    raise
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.25 * (attempt + 1))
