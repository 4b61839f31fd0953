"""ext.modal's connect when an attempt outlives ``call_timeout``.

The SDK opens a client on an event loop of its own. A cancelled open can still finish there
(the SDK's wrapper hands back the cancellation, not the opened client), and that client then
refuses to be opened again with an ``AssertionError``, which CI once hit with a 0.3 s timeout
on a loaded machine. Which attempt finishes late is up to timing with the real SDK, so a
scripted SDK fixes it here; tests/integration/test_ext_modal.py runs the real SDK against the
Modal double.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from sandboxer.extensions.modal.backend import ModalExtension
from sandboxer.extensions.modal.config import ModalConfig

SETTINGS = {
    "server_url": "http://127.0.0.1:1",
    "token_id": "ak-test",
    "token_secret": "as-test",
    "call_timeout": 0.05,
    "retry_attempts": 3,
    "retry_wait": 0.01,
}


class ScriptedClient:
    """Opens as the SDK's client does: once only. The first made is slow to open."""

    made: list[ScriptedClient] = []

    def __init__(self, *_args: Any) -> None:
        self.opened = False
        self.closed = False
        self.slow = not ScriptedClient.made
        ScriptedClient.made.append(self)

    async def __aenter__(self) -> ScriptedClient:
        assert not self.opened  # as the SDK asserts its stub is unset
        if self.slow:
            self.opened = True  # opened on the SDK's loop, whatever the caller gave up on
            await asyncio.sleep(1)
        self.opened = True
        return self

    async def __aexit__(self, *_exc: Any) -> None:
        self.closed = True


async def _lookup(_name: str, **_kwargs: Any) -> str:
    return "the app"


def scripted_sdk() -> Any:
    return SimpleNamespace(
        Client=ScriptedClient,
        App=SimpleNamespace(lookup=SimpleNamespace(aio=_lookup)),
        config=SimpleNamespace(config={}),
    )


async def test_an_attempt_given_up_on_is_retried_with_a_new_client_and_closed() -> None:
    ScriptedClient.made = []
    ext = ModalExtension(ModalConfig.from_settings(SETTINGS), sdk=scripted_sdk())
    connection = await ext._connect()
    slow, fresh = ScriptedClient.made
    assert connection.client is fresh
    assert connection.app == "the app"
    assert slow.closed
    assert not fresh.closed
    await ext.aclose()
    assert fresh.closed
