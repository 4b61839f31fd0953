"""How the answer of a lock on an SSH host is read (sandboxer/ssh/remote_lock.py and the
create's claim in sandboxer/extensions/ssh_workspace.py): lines a host's shell startup
prints before it (an echo in ~/.bashrc) are skipped up to the first known token, so a busy
lock is not hidden behind them."""

from __future__ import annotations

import pytest

from sandboxer.config.hosts import HostConfig
from sandboxer.errors import RemoteCommandFailed
from sandboxer.extensions.ssh_targets import Target
from sandboxer.extensions.ssh_workspace import _claim_answer
from sandboxer.ssh.remote_lock import LOCK_BUSY, first_token

HOST = Target(
    "host1",
    HostConfig(
        address="127.0.0.1",
        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA",
        workspace_root="/srv/sbx",
    ),
)


def test_a_busy_lock_behind_a_greeting_is_still_refused() -> None:
    with pytest.raises(RemoteCommandFailed, match="another worker has held the lock"):
        _claim_answer("welcome to host1\nLOCK-BUSY\n", HOST, "abc123def456")


def test_a_host_without_flock_behind_a_greeting_is_named() -> None:
    with pytest.raises(RemoteCommandFailed, match="no 'flock' command"):
        _claim_answer("Last login: today\n\nNO-FLOCK\n", HOST, "abc123def456")


def test_a_claim_behind_a_greeting_is_read() -> None:
    done = _claim_answer("welcome\nRSYNC\nCLAIMED\n", HOST, "abc123def456")
    assert (done.claimed, done.host_has_rsync) == (True, True)
    assert not _claim_answer("welcome\nBUSY\n", HOST, "abc123def456").claimed


def test_the_first_known_token_is_the_answer() -> None:
    tokens = {"LOCKED", LOCK_BUSY}
    assert first_token(["hello", "  LOCKED  ", LOCK_BUSY], tokens) == "LOCKED"
    assert first_token(["hello", "LOCKED now"], tokens) is None
