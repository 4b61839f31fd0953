"""Reading a Server-Sent Events stream (the HTTP API's live events) line by line.

Only what the gateway sends is needed (docs/http-api.md#live-events-server-sent-events):
``id:``, ``event:`` and ``data:`` fields, ``:`` comments (its pings), a blank line
ending each message. The rest of the format is followed so that a proxy's rewrite
does not confuse it: several ``data:`` lines join with newlines, a field's value
loses one leading space, ``\\r\\n`` and ``\\r`` end lines too. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SseMessage", "SseParser"]


@dataclass(frozen=True)
class SseMessage:
    id: str | None
    event: str
    data: str


@dataclass
class SseParser:
    """Feed it lines (without their end); it returns a message at each blank line."""

    _id: str | None = None
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> SseMessage | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the gateway's keep-alive ping
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SseMessage | None:
        if not self._data:
            self._event = ""
            return None
        message = SseMessage(
            id=self._id, event=self._event or "message", data="\n".join(self._data)
        )
        self._event, self._data = "", []
        return message
