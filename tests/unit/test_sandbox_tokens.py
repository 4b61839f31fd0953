"""Provider-issued tokens: kept private on disk, handed only to the sandbox's own people."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from sandboxer.domain.key_access import may_see, sandbox_project
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


def test_a_sandbox_without_a_project_is_project_defaults_for_its_tokens_too() -> None:
    """A sandbox whose creator names no project is project ``default``'s (payments.md): a key
    of project ``default`` may exec in it (key_access.may_see), so it may read its tokens.
    The old rule shared it with its exact creator only: these were refused."""
    loner = SandboxState(sandbox_id="sbxtoken02", actor=Actor(type="agt", id="a"))
    assert token_refusal(Actor(type="agt", id="key1", project="default"), loner) is None
    assert token_refusal(Actor(type="agt", id="b"), loner) is None
    named = SandboxState(
        sandbox_id="sbxtoken03", actor=Actor(type="agt", id="a", project="default")
    )
    assert token_refusal(Actor(type="atm", id="c"), named) is None
    assert token_refusal(Actor(type="agt", id="k", project="alpha"), loner) is not None


def test_the_same_type_and_id_in_another_project_is_another_actor() -> None:
    """An actor is its type, id and project (key_access.identity_refusal): one claiming the
    creator's type and id in another project is refused, as may_see refuses it the sandbox.
    The old rule let it read the tokens."""
    assert token_refusal(Actor(type="agt", id="agent-7", project="beta"), STATE) is not None
    assert token_refusal(Actor(type="agt", id="agent-7"), STATE) is not None


ACTORS = [
    Actor(type="adm", id="ops"),
    Actor(type="adm", id="ops", project="beta"),
    Actor(type="agt", id="a"),
    Actor(type="agt", id="a", project="default"),
    Actor(type="agt", id="a", project="alpha"),
    Actor(type="atm", id="a", project="alpha"),
    Actor(type="atm", id="b", project="beta"),
]


@pytest.mark.parametrize("owner", [None, *ACTORS])
@pytest.mark.parametrize("requester", ACTORS)
def test_tokens_follow_the_one_rule_of_who_may_reach_a_sandbox(
    requester: Actor, owner: Actor | None
) -> None:
    """Whoever may see the sandbox (exec, files, queries) may read its tokens, and nobody
    else: one rule, key_access.may_see on the sandbox's project."""
    state = SandboxState(sandbox_id="sbxtoken04", actor=owner)
    allowed = may_see(msgspec.to_builtins(requester), sandbox_project(state))
    assert (token_refusal(requester, state) is None) == allowed
    assert sandbox_project(state) == (None if owner is None else owner.project or "default")


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
