"""The pure rules of API keys as NATS identities (docs/security.md#keys-on-the-bus)."""

from __future__ import annotations

import bcrypt

from sandboxer import subjects
from sandboxer.bus.key_users import KeyUsers, bus_hash_for, key_credentials
from sandboxer.bus.permissions import KeyUser, key_permissions
from sandboxer.commands.parse import key_of, verb_of
from sandboxer.domain.key_access import identity_refusal, owner_refusal
from sandboxer.domain.key_state import hash_key, is_valid_bus_hash, key_id_for, new_key
from sandboxer.workers.key_reach import reach_target

KEY_ID = "keyabcdefghijklmnopq"
AGT = {"type": "agt", "id": KEY_ID, "project": "alpha"}


def test_a_key_logs_in_as_its_id_with_itself_and_only_its_bcrypt_is_recorded() -> None:
    key = new_key()
    hashed = bus_hash_for(key)
    assert is_valid_bus_hash(hashed)
    assert key not in hashed
    assert bcrypt.checkpw(key.encode(), hashed.encode())
    login = key_credentials(key)
    assert (login.user, login.password) == (key_id_for(hash_key(key)), key)
    assert key not in repr(login)


def test_bus_hashes_that_nats_server_could_not_check_are_not_valid() -> None:
    good = bus_hash_for(new_key())
    assert not is_valid_bus_hash(good.replace("$2b$10$", "$2b$03$"))  # below bcrypt's floor
    assert not is_valid_bus_hash("plain-password")
    assert not is_valid_bus_hash(good + "x")
    assert not is_valid_bus_hash(None)


def test_command_subjects_name_the_key_only_as_a_key_id() -> None:
    assert (verb_of("sandboxer.cmd.create"), key_of("sandboxer.cmd.create")) == ("create", None)
    assert (
        verb_of(f"sandboxer.cmd.destroy.{KEY_ID}"),
        key_of(f"sandboxer.cmd.destroy.{KEY_ID}"),
    ) == (
        "destroy",
        KEY_ID,
    )
    for bad in ("sandboxer.cmd.destroy.NOTAKEY", "sandboxer.cmd.a.b.c", "sandboxer.evt.x", "x"):
        assert (verb_of(bad), key_of(bad)) == ("", None), bad


def test_reach_subjects_give_the_sandbox_and_the_key() -> None:
    assert reach_target("sandboxer.exec.mybox0001") == ("mybox0001", None)
    assert reach_target(f"sandboxer.files.mybox0001.{KEY_ID}") == ("mybox0001", KEY_ID)
    assert reach_target("sandboxer.exec.BAD!") is None
    assert reach_target("sandboxer.exec.mybox0001.notakey") is None


def test_a_command_must_carry_exactly_the_keys_actor() -> None:
    assert identity_refusal(KEY_ID, AGT, AGT) is None
    for forged in (
        {**AGT, "project": "beta"},
        {**AGT, "type": "adm"},
        {**AGT, "id": "someone-else"},
    ):
        refusal = identity_refusal(KEY_ID, AGT, forged)
        assert refusal is not None
        assert refusal[0] == "actor_mismatch"
    revoked = identity_refusal(KEY_ID, None, AGT)
    assert revoked is not None
    assert revoked[0] == "key_revoked"


def test_another_projects_sandbox_is_answered_as_unknown() -> None:
    assert owner_refusal(AGT, "alpha", "sandbox", "box00001") is None
    assert owner_refusal(AGT, None, "sandbox", "box00001") is None  # unknown: decide says so
    refusal = owner_refusal(AGT, "beta", "sandbox", "box00001")
    assert refusal is not None
    assert refusal[0] == "unknown_sandbox"
    assert "beta" not in refusal[1]
    assert owner_refusal({**AGT, "type": "adm"}, "beta", "sandbox", "box00001") is None


def test_key_users_follow_creation_and_revocation() -> None:
    users = KeyUsers()
    hashed = bus_hash_for(new_key())
    created = {
        "type": "key_created",
        "key_id": KEY_ID,
        "project": "alpha",
        "key_type": "agt",
        "bus_hash": hashed,
    }
    assert users.apply(created)
    assert not users.apply(created)  # redelivered: no change, no reload
    assert users.users() == [KeyUser(KEY_ID, "agt", "alpha", hashed)]
    assert not users.apply({**created, "key_id": "keyzzzzzzzzzzzzzzzzz", "bus_hash": None})
    assert users.apply({"type": "key_revoked", "key_id": KEY_ID})
    assert users.users() == []


def test_an_agt_key_reaches_only_subjects_naming_it_and_its_own_inbox() -> None:
    perms = key_permissions(KeyUser(KEY_ID, "agt", "alpha", "x"))
    assert all(
        KEY_ID in subject
        or subject.startswith("sandboxer.stdin.")
        or subject == "sandboxer.query.health"
        for subject in perms.publish_allow
    )
    assert perms.subscribe_allow == (f"_INBOX.{KEY_ID}.>",)
    assert "sandboxer.cmd.*" in perms.publish_deny


def test_no_key_may_publish_on_another_keys_stamped_subjects() -> None:
    """An adm key had the client identity's ``sandboxer.>``: every other key's stamp."""
    other = "keyzzzzzzzzzzzzzzzzz"
    theirs = [
        f"sandboxer.cmd.destroy.{other}",
        f"sandboxer.query.sandbox.get.{other}",
        f"sandboxer.query.key.whoami.{other}",
        f"sandboxer.exec.sbx1.{other}",
        f"sandboxer.files.sbx1.{other}",
        f"sandboxer.token.sbx1.{other}",
    ]
    for kind in ("agt", "atm", "adm"):
        allowed = key_permissions(KeyUser(KEY_ID, kind, "alpha", "x")).publish_allow
        for subject in theirs:
            assert not any(subjects.matches(subject, p) for p in allowed), (kind, subject)
            mine = subject.replace(other, KEY_ID)
            assert any(subjects.matches(mine, p) for p in allowed), (kind, mine)
    admin = key_permissions(KeyUser(KEY_ID, "adm", "ops", "x"))
    for plain in ("sandboxer.query.host.list", "sandboxer.admin.replay", "$JS.API.INFO"):
        assert any(subjects.matches(plain, p) for p in admin.publish_allow), plain
