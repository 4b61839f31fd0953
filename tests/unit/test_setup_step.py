"""The pure parts of the build profile's setup step and the agent profile's rules: the output
tail (bounded, redacted, never half a secret), the warning for a backend that cannot enforce
a workspace access, the profile schema's new fields and a scoped profile's admission."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from sandboxer.commands.types import ConsumerAsk, CreateSandbox
from sandboxer.config.catalog import Catalog
from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.profile import Profile, Setup
from sandboxer.domain.admission import admit_create
from sandboxer.errors import Rejected
from sandboxer.events.types import Actor
from sandboxer.secrets import REDACTED, redact
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


# A private key as a setup command might print it: longer than a tail, and its last body
# line shorter than the lines redact hides on their own.
KEY_LINES = [
    "-----BEGIN OPENSSH PRIVATE KEY-----",
    *(f"b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ{i:02d}keybody{i:02d}" for i in range(26)),
    "Zm9v",
    "-----END OPENSSH PRIVATE KEY-----",
]
KEY = "\n".join(KEY_LINES)


def _leaked(tail: str) -> list[str]:
    return [line for line in KEY_LINES if line in tail]


def test_a_secret_longer_than_the_tail_leaves_no_line_of_it() -> None:
    captured = f"setting up the deploy key\n{KEY}\nchmod: cannot access 'x'\n".encode()
    tail = output_tail(captured, {"DEPLOY_KEY": KEY}, cut=False)
    assert tail == "setting up the deploy key\n[redacted]\nchmod: cannot access 'x'"
    assert _leaked(tail) == []


def test_what_is_left_of_a_multi_line_secret_whose_start_was_dropped_is_hidden() -> None:
    # The ring dropped the key's first lines: its whole value is no longer there.
    captured = ("\n".join(KEY_LINES[5:]) + "\nerror: deploy failed\n").encode()
    tail = output_tail(captured, {"DEPLOY_KEY": KEY}, cut=True)
    # Every long line is hidden on its own; a line this short ("Zm9v") would hide
    # ordinary output too, so only a whole key's match covers it.
    assert [line for line in _leaked(tail) if len(line) >= 8] == []
    assert tail.endswith("error: deploy failed")


def test_a_crlf_secret_is_found_in_output_whose_line_ends_were_normalised() -> None:
    secret = "tok-ABCDEF123456\r\nline2-XYZ987654"
    for printed in (secret, secret.replace("\r\n", "\n")):
        tail = output_tail(f"echo\n{printed}\n".encode(), {"T": secret}, cut=False)
        assert tail == "echo\n[redacted]"


def test_json_escaped_and_repr_copies_of_a_secret_are_hidden() -> None:
    secret = 'pa"ss\\word\nsecond-line'
    printed = f"body: {json.dumps({'k': secret})}\nKeyError: {secret!r}\n"
    tail = output_tail(printed.encode(), {"S": secret}, cut=False)
    assert tail == 'body: {"k": "[redacted]"}\nKeyError: \'[redacted]\''


def test_short_secrets_are_still_redacted_whole() -> None:
    assert redact("pin is 4711.", ["4711"]) == "pin is [redacted]."
    # A short line of a multi-line secret is not looked for on its own...
    assert redact("x = 42", ["42\nlong-enough-line"]) == "x = 42"
    # ...but the whole value is.
    assert redact("42\nlong-enough-line", ["42\nlong-enough-line"]) == REDACTED


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
