"""The three JetStream streams of the contract, created or updated idempotently."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from sandboxer import subjects

__all__ = ["ensure_streams", "stream_configs"]

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


async def ensure_streams(js: JetStreamContext, replicas: int = 1) -> None:
    """Create the streams, or bring an existing one's settings up to date."""
    for config in stream_configs(replicas):
        assert config.name is not None
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
        else:
            await js.update_stream(config)
