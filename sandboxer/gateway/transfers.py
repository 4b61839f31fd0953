"""How many execs and copies one API key has running on this gateway, and the cap on them
(docs/http-api.md#limits).

An exec holds its request body (up to ``files.EXEC_BODY_BYTES``) and its output (up to
``files.MAX_OUTPUT_BYTES`` of each stream) in the gateway's memory until the command is
over, which may be hours; a copy holds a worker, a scratch file and the bus for as long
as it moves its bytes. A key's rate bounds how fast it starts them, not how many run at
once: without a cap one key could start an exec a request at a time until the gateway's
memory is gone. :class:`TransferLimit` takes a slot of the request's key before the
body is read and gives it back once the answer is sent, whatever happened meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from sandboxer.domain.key_state import KeyState
from sandboxer.gateway.errors import error_response

__all__ = ["MAX_KEY_TRANSFERS", "TRANSFER_RETRY_AFTER", "KeyTransfers", "TransferLimit"]

MAX_KEY_TRANSFERS = 8
"""Execs and copies one key may have running at once on one gateway process. An exec pins
up to 12 MiB of body and 2 x 16 MiB of output: 8 of them are about 350 MiB at worst, a
bound one key cannot pass, while an agent running a few commands side by side (a build,
a test run, a copy out) stays well under it."""

TRANSFER_RETRY_AFTER = "5"
"""``Retry-After`` of a ``transfer_limit`` 429: a slot frees when one of the key's execs or
copies ends, which the gateway cannot foresee; a copy takes seconds, so ask again soon."""


@dataclass
class KeyTransfers:
    """The execs and copies each key has running in this process (keys with none are not
    kept, so the map holds at most the keys with something running)."""

    limit: int = MAX_KEY_TRANSFERS
    running: dict[str, int] = field(default_factory=dict)

    def take(self, key_id: str) -> bool:
        """A slot for ``key_id``, or False when it already has ``limit`` running."""
        held = self.running.get(key_id, 0)
        if held >= self.limit:
            return False
        self.running[key_id] = held + 1
        return True

    def release(self, key_id: str) -> None:
        held = self.running.get(key_id, 0) - 1
        if held > 0:
            self.running[key_id] = held
        else:
            self.running.pop(key_id, None)


class TransferLimit:
    """Hold a slot of an exec's or a copy's key (``applies`` says which requests are those;
    ``app.BodyLimit`` has checked their key and left it in the scope state under
    ``checked_key``) while the request runs, from before its body is read until its answer
    is sent; refuse one past the key's cap with 429 ``transfer_limit``."""

    def __init__(
        self,
        app: ASGIApp,
        transfers: KeyTransfers,
        applies: Callable[[Scope], bool],
        checked_key: str,
    ) -> None:
        self.app = app
        self.transfers = transfers
        self.applies = applies
        self.checked_key = checked_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        applies = scope["type"] == "http" and self.applies(scope)
        state: dict[str, Any] = scope.get("state", {}) if applies else {}
        key = state.get(self.checked_key)
        if not isinstance(key, KeyState):  # not an exec or a copy
            await self.app(scope, receive, send)
            return
        if not self.transfers.take(key.key_id):
            message = (
                f"key {key.key_id} already has {self.transfers.limit} execs and copies running "
                "on this gateway, the most one key may run at once: wait for one to end "
                "(Retry-After), or run fewer side by side"
            )
            answer = error_response(
                429, "transfer_limit", message, headers={"Retry-After": TRANSFER_RETRY_AFTER}
            )
            await answer(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.transfers.release(key.key_id)
