"""The pure parts of the build profile's setup step and the agent profile's rules: the output
tail (bounded, redacted, never half a secret), the warning for a backend that cannot enforce
a workspace access, the profile schema's new fields and a scoped profile's admission."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sandboxer.commands.types import ConsumerAsk, CreateSandbox
from sandboxer.config.catalog import Catalog
from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.profile import Profile, Setup
from sandboxer.domain.admission import admit_create
from sandboxer.errors import Rejected
from sandboxer.events.types import Actor
from sandboxer.workers.setup_step import (
    TAIL_CHARS,
    TAIL_LINES,
    output_tail,
    workspace_access_warning,
)

SECRETS = {"TOKEN": "s3cr3t-value-0123456789"}


def test_the_tail_is_the_last_lines_with_every_secret_redacted() -> None:
    lines = [f"line {i} s3cr3t-value-0123456789" for i in range(50)]
    tail = output_tail("\n".join(lines).encode(), SECRETS, cut=False)
    assert tail.splitlines() == [f"line {i} [redacted]" for i in range(50 - TAIL_LINES, 50)]


def test_a_cut_first_line_is_left_out_so_no_half_secret_survives() -> None:
    # The ring dropped older output in the middle of the secret: its end is not recognisable.
    captured = b"0123456789\nnext line\n"
    assert output_tail(captured, SECRETS, cut=True) == "next line"
    assert output_tail(captured, SECRETS, cut=False) == "0123456789\nnext line"


def test_the_tail_is_bounded_in_characters() -> None:
    tail = output_tail(b"x" * 100_000, {}, cut=False)
    assert len(tail) == TAIL_CHARS


class _Backend:
    id = "ext.somewhere"


class _Enforcing:
    id = "ext.local"
    enforces_workspace_access = True


def test_a_backend_that_cannot_enforce_the_access_says_so() -> None:
    assert workspace_access_warning(_Backend(), "rw") is None  # type: ignore[arg-type]
    assert workspace_access_warning(_Enforcing(), "ro") is None  # type: ignore[arg-type]
    warning = workspace_access_warning(_Backend(), "ro")  # type: ignore[arg-type]
    assert warning is not None
    assert "not enforced by ext.somewhere" in warning


@pytest.mark.parametrize(
    "fields",
    [
        {"commands": [""]},
        {"commands": ["x" * 5000]},
        {"commands": ["echo\x00"]},
        {"commands": ["true"] * 33},
        {"instructions_ref": "javascript:alert(1)"},
        {"secret_refs": {"T": "plain-value"}},
    ],
)
def test_setup_refuses_what_it_cannot_run_or_show(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Setup.model_validate(fields)


LOCAL: dict[str, ExtensionDecl] = {"ext.local": Catalog.load().extensions["ext.local"]}


def scoped(scope: str) -> Profile:
    return Profile.model_validate(
        {"id": "profile.scoped", "extension": "ext.local", "scope": scope}
    )


def create(consumer: ConsumerAsk | None) -> CreateSandbox:
    return CreateSandbox(
        command_id="c1",
        actor=Actor(type="agt", id="a"),
        profile="profile.scoped",
        consumer=consumer,
    )


def test_a_scoped_profile_wants_the_consumer_part_it_is_scoped_by() -> None:
    with pytest.raises(Rejected) as caught:
        admit_create(create(ConsumerAsk(harness="h")), scoped("session"), LOCAL)
    assert caught.value.code == "missing_consumer"
    assert "consumer.session_id" in caught.value.reason
    with pytest.raises(Rejected):
        admit_create(create(None), scoped("agent"), LOCAL)
    admit_create(create(ConsumerAsk(session_id="s1")), scoped("session"), LOCAL)
    admit_create(create(ConsumerAsk(harness="h")), scoped("agent"), LOCAL)
    admit_create(create(None), scoped("shared"), LOCAL)
