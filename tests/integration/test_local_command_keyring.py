"""ext.local's commands and their session keyrings, with real processes and the real kernel
(docs/ext-local.md#users-and-keyrings). A session keyring is joined per thread, so these
need no root: any process may join an anonymous one."""

from __future__ import annotations

import asyncio
import errno
import os
import sys
import time
from typing import Literal

import pytest

from sandboxer.errors import ExtensionError
from sandboxer.extensions.local import keyrings
from sandboxer.extensions.local.run import run_streaming

pytestmark = pytest.mark.integration

KEY_SPEC_SESSION_KEYRING = -3
# Prints the serial number of its own session keyring (keyrings.py is standard library only).
SESSION_KEYRING = [
    sys.executable, "-I", "-S", "-c",
    f"import sys; sys.path.insert(0, {str(keyrings.SCRIPT.parent)!r}); import keyrings; "
    f"print(keyrings.keyctl(keyrings.KEYCTL_GET_KEYRING_ID, {KEY_SPEC_SESSION_KEYRING}, 0))",
]  # fmt: skip


async def test_no_fork_while_a_command_starts_inherits_its_session_keyring() -> None:
    """Another task's fork on the loop thread while a command is starting (another sandbox's
    holder, a helper) gets none of the command's session keyring: the two would otherwise
    share a channel through it. Deterministic: the other fork is made in the first loop
    iteration after the command's own first step, which forks it."""
    said: list[bytes] = []

    async def keep(_name: Literal["stdout", "stderr"], chunk: bytes) -> None:
        said.append(chunk)

    command = asyncio.create_task(
        run_streaming(SESSION_KEYRING, keep, own_session_keyring=True, drain_grace=5)
    )
    await asyncio.sleep(0)  # the command's first step runs: it joins a keyring and forks
    other = await asyncio.create_subprocess_exec(
        *SESSION_KEYRING, stdout=asyncio.subprocess.PIPE
    )  # forked at once, in this step
    other_said, _ = await other.communicate()
    assert await command == 0
    commands = int(b"".join(said))
    assert commands != int(other_said), "a fork during the command's start shares its keyring"
    # Nor does the loop's thread keep it, for what it starts later.
    assert keyrings.keyctl(keyrings.KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0) != commands


async def test_a_command_whose_exit_cannot_be_awaited_is_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a pidfd (a kernel older than 5.3) the command is killed and reaped at once,
    and the error says what ext.local needs, rather than a command left running unwatched."""

    def no_pidfd(_pid: int, _flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    start = time.monotonic()
    with pytest.raises(ExtensionError, match=r"Linux 5\.3 or later"):
        await run_streaming(["sleep", "30"], _ignore, own_session_keyring=True)
    assert time.monotonic() - start < 5  # not waited out: killed


async def _ignore(_name: Literal["stdout", "stderr"], _chunk: bytes) -> None:
    pass
