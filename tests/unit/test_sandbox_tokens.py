"""Provider-issued tokens: kept private on disk, handed only to the sandbox's own people."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.domain.token_access import token_refusal
from sandboxer.events.actor import Actor
from sandboxer.hosted.tokens import SandboxTokens

OWNER = Actor(type="agt", id="agent-7", project="alpha")
STATE = SandboxState(sandbox_id="sbxtoken01", status="ready", actor=OWNER)


@pytest.mark.parametrize(
    "requester",
    [OWNER, Actor(type="atm", id="ci", project="alpha"), Actor(type="adm", id="ops")],
)
def test_the_owner_its_project_and_administrators_may_read(requester: Actor) -> None:
    assert token_refusal(requester, STATE) is None


@pytest.mark.parametrize(
    "requester",
    [
        Actor(type="agt", id="agent-8", project="beta"),
        Actor(type="agt", id="agent-8"),
        Actor(type="atm", id="agent-7", project="beta"),  # same id, another kind of actor
    ],
)
def test_anyone_else_is_refused_with_a_reason(requester: Actor) -> None:
    refusal = token_refusal(requester, STATE)
    assert refusal is not None
    assert "sbxtoken01" in refusal


def test_a_sandbox_without_a_project_is_not_shared_through_a_missing_one() -> None:
    loner = SandboxState(sandbox_id="sbxtoken02", actor=Actor(type="agt", id="a"))
    assert token_refusal(Actor(type="agt", id="b"), loner) is not None


def test_tokens_are_private_files_and_forgotten(tmp_path: Path) -> None:
    store = SandboxTokens(tmp_path / "tokens")
    store.keep("sbxtoken01", {"envd_access_token": "tok-123"})
    assert store.read("sbxtoken01") == {"envd_access_token": "tok-123"}
    assert (tmp_path / "tokens").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "tokens" / "sbxtoken01.json").stat().st_mode & 0o777 == 0o600
    store.forget("sbxtoken01")
    store.forget("sbxtoken01")
    assert store.read("sbxtoken01") == {}
    with pytest.raises(ValueError, match="invalid sandbox id"):
        store.keep("../../etc/passwd", {"x": "y"})
