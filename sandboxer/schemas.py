"""JSON Schemas of the wire types, generated from the msgspec Structs into ``docs/schemas/``.

Run ``python -m sandboxer.schemas`` after changing a command or event; a
test fails while the committed schemas are stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from sandboxer.commands.types import COMMAND_TYPES
from sandboxer.events.types import (
    AccountEvent,
    CommandRejected,
    HostEvent,
    KeyEvent,
    PlaceEvent,
    PoolEvent,
    SandboxEvent,
    SnapshotEvent,
)

__all__ = ["generate", "write"]

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def generate() -> dict[str, Any]:
    """File name -> schema, for every command and for the event union."""
    schemas: dict[str, Any] = {}
    for verb, command_type in sorted(COMMAND_TYPES.items()):
        schema = msgspec.json.schema(command_type)
        schema["title"] = f"sandboxer.cmd.{verb}"
        # Commands check their actor strictly; events let it grow (see commands/parse.py).
        schema["$defs"]["Actor"]["additionalProperties"] = False
        schemas[f"command.{verb}.json"] = schema
    events = msgspec.json.schema(SandboxEvent)
    events["title"] = "sandboxer.evt.sandbox.<sandbox_id>.<type>"
    schemas["event.sandbox.json"] = events
    snapshots = msgspec.json.schema(SnapshotEvent)
    # Subjects drop the tag's "snapshot_" prefix: snapshot_created arrives on ....<id>.created.
    snapshots["title"] = "sandboxer.evt.snapshot.<snapshot_id>.<type without snapshot_>"
    schemas["event.snapshot.json"] = snapshots
    accounts = msgspec.json.schema(AccountEvent)
    accounts["title"] = "sandboxer.evt.account.<project>.<type>"
    schemas["event.account.json"] = accounts
    keys = msgspec.json.schema(KeyEvent)
    keys["title"] = "sandboxer.evt.key.<key_id>.<type without key_>"
    schemas["event.key.json"] = keys
    pools = msgspec.json.schema(PoolEvent)
    pools["title"] = "sandboxer.evt.pool.<member_id>.<type without pool_member_>"
    schemas["event.pool.json"] = pools
    places = msgspec.json.schema(PlaceEvent)
    places["title"] = "sandboxer.evt.host.<host>.place.<type without place_>"
    schemas["event.host.place.json"] = places
    hosts = msgspec.json.schema(HostEvent)
    hosts["title"] = "sandboxer.evt.host.<host>.<type>"
    schemas["event.host.json"] = hosts
    rejected = msgspec.json.schema(CommandRejected)
    rejected["title"] = "sandboxer.evt.command.<command_id>.rejected"
    schemas["event.command.rejected.json"] = rejected
    return schemas


def render(schema: Any) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write(directory: Path = DEFAULT_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in generate().items():
        path = directory / name
        path.write_text(render(schema))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR):
        print(path)
