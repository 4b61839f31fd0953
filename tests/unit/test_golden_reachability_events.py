"""The first ready events that carry ``reachability.access`` (docs/protocol.md#reachability)
still decode, keep every field, read back as their access shapes and fold to the same state
(tests/golden/README.md)."""

from __future__ import annotations

from sandboxer.events.reachability import LocalExecAccess, ProviderAccess, SshAccess, access_of
from sandboxer.events.types import Event, SandboxReady
from tests.unit.golden_files import assert_folds_to, decoded_all, folded, stored_states

EVENTS = "reachability-events-2026-12-02.jsonl"
STATES = "reachability-states-2026-12-02.json"


def events() -> list[Event]:
    """Every stored event, each decoding on its subject with every field."""
    return decoded_all(EVENTS)


def test_every_stored_event_decodes_and_keeps_every_field() -> None:
    assert events()


def test_each_ready_reads_back_as_its_access_shape() -> None:
    found = {
        event.sandbox_id: access_of(event.reachability)
        for event in events()
        if isinstance(event, SandboxReady)
    }
    local, ssh, provider = (found[f"goldenreach0{n}"] for n in (1, 2, 3))
    assert isinstance(local, LocalExecAccess)
    assert local.exec == "sandboxer exec goldenreach01 -- CMD"
    assert isinstance(ssh, SshAccess)
    assert ssh.host_key_fingerprint is not None
    assert ssh.host_key_fingerprint.startswith("SHA256:")
    assert (ssh.host_name, ssh.host_key_verified) == ("host1", True)
    assert (ssh.tunnel_ref, ssh.ssh_principal) == ("tunnels/host1", "sandbox-users")
    assert ssh.workdir.endswith("/sbx-goldenreach02")
    assert provider == ProviderAccess(
        provider="saas-stub", exec="sandboxer exec goldenreach03 -- CMD"
    )


def test_replay_folds_the_stored_events_to_the_same_state() -> None:
    assert_folds_to(folded(events())["sandboxes"], stored_states(STATES))
