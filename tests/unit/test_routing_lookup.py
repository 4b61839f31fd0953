"""The control worker's route lookup: without the view it routes blind and says so; its own
routes count until the view shows them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError

from sandboxer.commands.types import CreateSandbox
from sandboxer.config.catalog import Catalog
from sandboxer.config.profile import Profile
from sandboxer.config.settings import Settings
from sandboxer.domain.admission import admit_create
from sandboxer.domain.route_signals import RouteSignals
from sandboxer.events.types import Actor
from sandboxer.workers.route_lookup import RouteLookup
from tests.unit.test_routing import NOW, decl, profile

ACTOR = Actor(type="adm", id="t")


@dataclass
class Reply:
    data: bytes


class FakeNats:
    """Answers route signals from ``answer``; raises NoResponders when it is None."""

    def __init__(self, answer: dict[str, Any] | None) -> None:
        self.answer = answer

    async def request(self, subject: str, payload: bytes, timeout: float) -> Reply:
        del subject, payload, timeout
        if self.answer is None:
            raise NoRespondersError
        return Reply(msgspec.json.encode(self.answer))


def lookup(nc: FakeNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RouteLookup:
    monkeypatch.setenv("SANDBOXER_HOME", str(tmp_path))
    return RouteLookup(cast(Client, nc), Catalog.load(tmp_path), Settings.from_env())


ENABLED = {
    "ext.local": decl("ext.local", kind="self-hosted", capacity=2),
    "ext.stub": decl("ext.stub"),
}
BURST = profile("prefer-self-hosted", ["ext.local", "ext.stub"])


def create(n: int) -> CreateSandbox:
    return CreateSandbox(command_id=f"c{n}", actor=ACTOR, profile=BURST.id)


async def test_without_the_view_routing_goes_blind_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routing = lookup(FakeNats(None), tmp_path, monkeypatch)
    signals = await routing.signals(ENABLED)
    assert not signals.known
    admitted = admit_create(create(1), BURST, ENABLED, signals, NOW)
    assert admitted.route_reason.endswith("[without signals: the view did not answer within 1 s]")


async def test_a_view_catching_up_with_the_log_routes_blind_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A projector that opened behind the log answers ``view_behind``: its counts would
    leave out what the log holds, so routing goes without them, as with no answer."""
    behind = {"ok": False, "code": "view_behind", "error": "still catching up"}
    routing = lookup(FakeNats(behind), tmp_path, monkeypatch)
    signals = await routing.signals(ENABLED)
    assert not signals.known
    admitted = admit_create(create(1), BURST, ENABLED, signals, NOW)
    assert admitted.route_reason.endswith(
        "[without signals: the view is still catching up with the log]"
    )


async def test_own_routes_count_until_the_view_shows_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = {"ok": True, "position": 10, "signals": RouteSignals(live={"ext.local": 1}).to_dict()}
    nc = FakeNats(view)
    routing = lookup(nc, tmp_path, monkeypatch)
    first = admit_create(create(1), BURST, ENABLED, await routing.signals(ENABLED), NOW)
    assert first.extension == "ext.local"
    routing.hold(first)  # not yet appended: counts
    second = admit_create(create(2), BURST, ENABLED, await routing.signals(ENABLED), NOW)
    assert second.extension == "ext.stub"
    assert "has no capacity (2 of 2 sandboxes live)" in second.route_reason
    routing.appended(first.sandbox_id, 12)  # in the log at 12, the view is at 10: still counts
    assert (await routing.signals(ENABLED)).live["ext.local"] == 2
    nc.answer = {**view, "position": 12, "signals": RouteSignals(live={"ext.local": 2}).to_dict()}
    assert (await routing.signals(ENABLED)).live["ext.local"] == 2  # the view's count alone
    routing.hold(second)
    routing.release_command(create(2))  # rejected after routing: holds no place
    assert (await routing.signals(ENABLED)).live.get("ext.stub", 0) == 0


async def test_an_unreadable_answer_is_routing_without_signals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routing = lookup(FakeNats({"ok": True, "signals": {"live": "lots"}}), tmp_path, monkeypatch)
    signals = await routing.signals(ENABLED)
    assert not signals.known
    assert "unreadable" in signals.note


HOSTS_YAML = """\
hosts:
  alpha: {address: 127.0.0.1, host_key: "ssh-ed25519 AAAA", max_sandboxes: 1}
  beta: {address: 127.0.0.1, host_key: "ssh-ed25519 AAAA", max_sandboxes: 1}
"""


async def test_a_backend_whose_placement_hosts_are_full_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend on hosts had for capacity every host's max_sandboxes summed: with its
    profile placing only on alpha, and alpha full, it still had room (1 of 2), so routing
    chose it and placement rejected the create (no_host) instead of routing to ext.stub."""
    (tmp_path / "hosts.yaml").write_text(HOSTS_YAML)
    enabled = {
        "ext.ssh": decl("ext.ssh", kind="self-hosted", uses_hosts=True),
        "ext.stub": decl("ext.stub"),
    }
    placed = Profile.model_validate(
        {
            "id": "profile.placed",
            "placement": {"prefer": ["alpha"]},
            "route": {"strategy": "prefer-self-hosted", "candidates": ["ext.ssh", "ext.stub"]},
        }
    )
    on_alpha = RouteSignals(live={"ext.ssh": 1}, live_by_host={"ext.ssh": {"alpha": 1}})
    view = {"ok": True, "position": 10, "signals": on_alpha.to_dict()}
    routing = lookup(FakeNats(view), tmp_path, monkeypatch)
    command = CreateSandbox(command_id="c1", actor=ACTOR, profile=placed.id)
    admitted = admit_create(command, placed, enabled, await routing.signals(enabled), NOW)
    assert admitted.extension == "ext.stub"
    assert "ext.ssh has no host with room (alpha is full (1 of its max_sandboxes 1))" in (
        admitted.route_reason
    )
    # beta, which the profile does not place on, has room; asked for by name, it serves
    there = CreateSandbox(command_id="c2", actor=ACTOR, profile=placed.id, host="beta")
    admitted = admit_create(there, placed, enabled, await routing.signals(enabled), NOW)
    assert admitted.extension == "ext.ssh"
