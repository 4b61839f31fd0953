"""The workspaces Object Store bucket: opened by workers, created on first upload by clients."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.object_store import ObjectStore

from sandboxer import subjects
from sandboxer.errors import WorkspaceRefused

__all__ = ["open_bucket", "open_or_create_bucket"]


async def open_bucket(js: JetStreamContext) -> ObjectStore:
    """The bucket, or :class:`WorkspaceRefused` when nobody has uploaded anything yet."""
    try:
        return await js.object_store(subjects.WORKSPACES_BUCKET)
    except BucketNotFoundError:
        raise WorkspaceRefused(
            f"the Object Store bucket {subjects.WORKSPACES_BUCKET} does not exist on this NATS, "
            "so no uploaded workspace can be in it; upload the directory again"
        ) from None


async def open_or_create_bucket(js: JetStreamContext, replicas: int) -> ObjectStore:
    """The bucket, created with ``replicas`` (like the streams) by the first client to upload."""
    try:
        return await js.object_store(subjects.WORKSPACES_BUCKET)
    except BucketNotFoundError:
        config = ObjectStoreConfig(
            description="sandboxer: uploaded directory inputs, named by their SHA-256",
            storage=StorageType.FILE,
            replicas=replicas,
        )
        # Two clients may race here; creating a stream with an identical config succeeds.
        return await js.create_object_store(subjects.WORKSPACES_BUCKET, config=config)
