"""The passwd and group a local sandbox sees (docs/ext-local.md#users-and-keyrings)."""

from __future__ import annotations

from sandboxer.extensions.local.bwrap_command import enter_argv
from sandboxer.extensions.local.sandbox_users import HOME, files_for, group_text, passwd_text

UID = 2_000_000_007


def test_a_root_run_sandbox_names_its_uid_sandbox_with_the_workspace_as_home() -> None:
    assert passwd_text(UID, UID) == (
        "root:x:0:0:root:/root:/bin/sh\n"
        f"sandbox:x:{UID}:{UID}:sandboxer sandbox:/workspace:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    assert group_text(UID) == f"root:x:0:\nsandbox:x:{UID}:\nnogroup:x:65534:\n"


def test_without_root_the_namespaces_root_is_the_sandbox_user_with_its_home() -> None:
    # Commands run as the user namespace's 0 there: no second line for that uid.
    assert passwd_text(0, 0) == (
        "root:x:0:0:root:/workspace:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    assert group_text(0) == "root:x:0:\nnogroup:x:65534:\n"
    assert files_for(None) == (passwd_text(0, 0), group_text(0))  # no uid: a worker without root
    assert files_for(UID) == (passwd_text(UID, UID), group_text(UID))


def test_the_home_is_the_home_commands_are_given() -> None:
    argv = enter_argv(child_pid=1, argv=["true"], uid=UID)
    assert f"HOME={HOME}" in argv
