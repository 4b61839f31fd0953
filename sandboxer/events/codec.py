"""Events to bytes and back: the one place that reads stored events, and upcasts old ones.

Every stored event carries its type's version ``v``. Decoding takes the fast
path (one typed decode) when the stored version is the current one, or newer
(a newer writer: the fields this reader does not know are ignored). An older
version is decoded to plain data and passed through the upcasters registered
for its type, one version step at a time, and only then typed. Callers never
see an old version.

A reader meets event types it does not know when a newer writer added them:
:func:`decode_event` raises :class:`UnknownEventType` and readers skip such
events (the projector still advances past them). An event it cannot read at
all (malformed bytes; a newer version whose fields changed shape, which a
reader cannot read "as far as it understands") raises :class:`UnreadableEvent`,
an UnknownEventType, and is skipped the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from sandboxer.errors import BusError, UnknownEventType, UnreadableEvent
from sandboxer.events.types import Event, event_type

__all__ = [
    "UPCASTERS",
    "Codec",
    "UnknownEventType",
    "UnreadableEvent",
    "current_versions",
    "decode_event",
    "encode_event",
]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns the body of version ``n`` of a type into the body of version ``n + 1``."""

UPCASTERS: dict[tuple[str, int], Upcaster] = {}
"""``(type, n)`` -> the step from version ``n`` to ``n + 1``. Empty while every type is at v1."""


class _Envelope(msgspec.Struct):
    type: str = ""
    v: int = 1


def _event_classes() -> list[type[Any]]:
    args = getattr(Event, "__args__", ())
    return [member for arg in args for member in getattr(arg, "__args__", (arg,))]


def current_versions() -> dict[str, int]:
    """Each event type's current version: the default of ``v`` on its class."""
    versions: dict[str, int] = {}
    for cls in _event_classes():
        tag = cls.__struct_config__.tag
        (default,) = [f.default for f in msgspec.structs.fields(cls) if f.name == "v"]
        versions[tag] = default
    return versions


class Codec:
    """Encode events; decode stored ones of any version into the current types."""

    def __init__(
        self,
        upcasters: Mapping[tuple[str, int], Upcaster] | None = None,
        versions: Mapping[str, int] | None = None,
    ) -> None:
        self._upcasters = dict(UPCASTERS if upcasters is None else upcasters)
        self._versions = dict(current_versions() if versions is None else versions)
        self._encoder = msgspec.json.Encoder()
        self._typed: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)
        self._envelope = msgspec.json.Decoder(_Envelope)

    def encode(self, event: Event) -> bytes:
        return self._encoder.encode(event)

    def decode(self, data: bytes) -> Event:
        try:
            event = self._typed.decode(data)
        except msgspec.ValidationError:
            event = None  # an older shape, or a type we do not know
        except msgspec.DecodeError as exc:
            raise UnreadableEvent(f"stored event is not readable JSON: {exc}") from None
        if event is not None and event.v >= self._versions[event_type(event)]:
            return event
        return self._upcast(data)

    def _upcast(self, data: bytes) -> Event:
        try:
            envelope = self._envelope.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UnreadableEvent(f"stored event is not a readable event: {exc}") from None
        current = self._versions.get(envelope.type)
        if current is None:
            raise UnknownEventType(
                f"stored event of unknown type {envelope.type!r} (written by a newer sandboxer?)"
            )
        body: dict[str, Any] = msgspec.json.decode(data)
        version = envelope.v
        while version < current:
            step = self._upcasters.get((envelope.type, version))
            if step is None:
                raise BusError(
                    f"no upcaster from {envelope.type} v{version} to v{version + 1}; "
                    "register one in sandboxer/events/codec.py"
                )
            body = {**step(body), "v": version + 1}
            version += 1
        try:
            event: Event = msgspec.convert(body, Event)
        except msgspec.ValidationError as exc:
            raise UnreadableEvent(
                f"stored {envelope.type} v{envelope.v} is not readable by this version of "
                f"sandboxer (v{current} here; written by a newer one?): {exc}"
            ) from None
        return event


@functools.cache
def _codec() -> Codec:
    """The codec of the current types, made on first use: its decoder of every event type
    takes about 30 ms to build, which a process that never reads or writes an event (most
    CLI commands, which import the event types for a name or two) need not pay."""
    return Codec()


def encode_event(event: Event) -> bytes:
    return _codec().encode(event)


def decode_event(data: bytes) -> Event:
    """The current-version event stored as ``data``; UnknownEventType for a type we do not
    know, or an event we cannot read (UnreadableEvent)."""
    return _codec().decode(data)
