"""The first ready events that carry ``reachability.access`` (docs/protocol.md#reachability)
still decode, keep every field, read back as their access shapes and fold to the same state
(tests/golden/README.md)."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from sandboxer.domain.sandbox_state import SandboxState, evolve
from sandboxer.events.codec import current_versions, decode_event
from sandboxer.events.reachability import LocalExecAccess, ProviderAccess, SshAccess, access_of
from sandboxer.events.types import NOT_SANDBOX_EVENTS, SandboxReady, event_type
from tests.unit.test_golden_events import GOLDEN, contains

EVENTS = GOLDEN / "reachability-events-2026-12-02.jsonl"
STATES = GOLDEN / "reachability-states-2026-12-02.json"


def lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in EVENTS.read_text().splitlines()]


def test_every_stored_event_decodes_and_keeps_every_field() -> None:
    for line in lines():
        event = decode_event(line["body"].encode())
        assert line["subject"].endswith("." + event_type(event))
        body = json.loads(line["body"])
        if body["v"] == current_versions()[body["type"]]:
            assert contains(json.loads(msgspec.json.encode(event)), body), line["subject"]


def test_each_ready_reads_back_as_its_access_shape() -> None:
    found = {
        event.sandbox_id: access_of(event.reachability)
        for event in (decode_event(line["body"].encode()) for line in lines())
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
    states: dict[str, SandboxState] = {}
    for line in lines():
        event = decode_event(line["body"].encode())
        if isinstance(event, NOT_SANDBOX_EVENTS):
            continue
        state = states.get(event.sandbox_id) or SandboxState(sandbox_id=event.sandbox_id)
        states[event.sandbox_id] = evolve(state, event)
    expected = json.loads(STATES.read_text())
    assert set(states) == set(expected)
    for sandbox_id, state in states.items():
        assert contains(json.loads(msgspec.json.encode(state)), expected[sandbox_id]), sandbox_id
