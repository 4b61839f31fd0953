"""Which container a compose sandbox's named volume is copied through (compose_ssh/volumes.py)."""

from __future__ import annotations

from sandboxer.extensions.compose_ssh.containers import Container
from sandboxer.extensions.compose_ssh.volumes import mounted_volumes


def test_a_volume_is_seeded_through_a_container_that_mounts_it_writable() -> None:
    """``app`` (first by name) mounts ``data`` read-only, ``db`` writable: the copy into the
    volume went through ``app``, and every restore of such a stack failed."""
    app = Container(
        id="a1",
        name="sbx-x-app-1",
        project="sbx-x",
        service="app",
        status="created",
        volumes=(("sbx-x_data", "/srv/data"),),
        read_only=("/srv/data",),
    )
    db = Container(
        id="d1",
        name="sbx-x-db-1",
        project="sbx-x",
        service="db",
        status="created",
        volumes=(("sbx-x_data", "/var/db"),),
    )
    mounted = mounted_volumes({"sbx-x_data": "data"}, [app, db])
    assert (mounted["data"].container, mounted["data"].path) == ("d1", "/var/db")
    only_read = mounted_volumes({"sbx-x_data": "data"}, [app])  # a copy out needs no writing
    assert only_read["data"].container == "a1"


def test_inspect_says_which_volume_mounts_are_read_only() -> None:
    import json

    from sandboxer.extensions.compose_ssh.containers import parse_inspect

    labels = {"com.docker.compose.project": "sbx-x", "com.docker.compose.service": "app"}
    item = {
        "Id": "a1",
        "Name": "/sbx-x-app-1",
        "Config": {"Labels": labels},
        "State": {"Status": "created"},
        "Mounts": [
            {"Type": "volume", "Name": "sbx-x_data", "Destination": "/srv/data", "RW": False},
            {"Type": "volume", "Name": "sbx-x_logs", "Destination": "/logs", "RW": True},
        ],
    }
    [found] = parse_inspect(json.dumps([item]))
    assert found.read_only == ("/srv/data",)
    assert dict(found.volumes) == {"sbx-x_data": "/srv/data", "sbx-x_logs": "/logs"}
