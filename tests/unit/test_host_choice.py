"""Choosing a host: the profile's order, the health probe's verdicts, and the reasons given."""

from __future__ import annotations

import pytest

from sandboxer.config.hosts import HostConfig
from sandboxer.config.profile import Placement
from sandboxer.domain.host_order import host_order
from sandboxer.errors import Rejected
from sandboxer.workers.host_choice import choose_host

HOSTS = {
    name: HostConfig(address="127.0.0.1", host_key="ssh-ed25519 AAAA")
    for name in ("alpha", "beta", "gamma")
}


def probe_with(down: dict[str, str]):  # type: ignore[no-untyped-def]
    probed: list[str] = []

    async def probe(name: str, _host: HostConfig) -> str | None:
        probed.append(name)
        return down.get(name)

    return probe, probed


def test_order_is_prefer_then_fallback_without_repeats() -> None:
    placement = Placement(prefer=["beta", "alpha"], fallback=["alpha", "gamma"])
    assert host_order(placement, None, list(HOSTS)) == [
        ("beta", "preferred"),
        ("alpha", "preferred"),
        ("gamma", "fallback"),
    ]


def test_a_requested_host_overrides_the_profile() -> None:
    placement = Placement(prefer=["beta"], fallback=["gamma"])
    assert host_order(placement, "alpha", list(HOSTS)) == [("alpha", "requested")]


def test_a_profile_without_hosts_may_use_any_in_name_order() -> None:
    assert [name for name, _ in host_order(Placement(), None, ["gamma", "alpha"])] == [
        "alpha",
        "gamma",
    ]


async def test_the_first_healthy_host_wins_and_the_skipped_are_named() -> None:
    probe, probed = probe_with({"beta": "connection refused"})
    placement = Placement(prefer=["beta"], fallback=["alpha", "gamma"])
    host, why = await choose_host(placement, None, HOSTS, probe)
    assert host == "alpha"
    assert probed == ["beta", "alpha"]
    assert why == "placed on alpha (fallback); skipped: beta unhealthy: connection refused"


async def test_a_host_missing_from_the_hosts_file_is_skipped_with_the_reason() -> None:
    probe, probed = probe_with({})
    host, why = await choose_host(
        Placement(prefer=["sandboxer01"], fallback=["gamma"]), None, HOSTS, probe
    )
    assert host == "gamma"
    assert "sandboxer01 is not in the hosts file" in why
    assert probed == ["gamma"]


async def test_no_healthy_host_is_a_rejection_listing_each_reason() -> None:
    probe, _ = probe_with({"alpha": "down", "beta": "key rejected"})
    with pytest.raises(Rejected) as caught:
        await choose_host(Placement(prefer=["alpha", "beta"]), None, HOSTS, probe)
    assert caught.value.code == "no_host"
    assert "alpha unhealthy: down" in caught.value.reason
    assert "beta unhealthy: key rejected" in caught.value.reason


async def test_no_hosts_at_all_points_at_the_hosts_file() -> None:
    probe, _ = probe_with({})
    with pytest.raises(Rejected, match=r"hosts\.yaml.*docs/hosts\.md"):
        await choose_host(Placement(), None, {}, probe)


async def test_a_full_host_is_skipped_for_the_next_with_room() -> None:
    """A host's max_sandboxes capped nothing: its live sandboxes were never looked at, and a
    drained host (max 0) kept taking creates."""
    hosts = {
        "alpha": HostConfig(address="127.0.0.1", host_key="ssh-ed25519 AAAA", max_sandboxes=2),
        "beta": HostConfig(address="127.0.0.1", host_key="ssh-ed25519 AAAA", max_sandboxes=0),
        "gamma": HostConfig(address="127.0.0.1", host_key="ssh-ed25519 AAAA"),
    }
    probe, probed = probe_with({})
    placement = Placement(prefer=["alpha", "beta"], fallback=["gamma"])
    host, why = await choose_host(placement, None, hosts, probe, live=lambda: {"alpha": 2})
    assert host == "gamma"
    assert "alpha is full (2 of its max_sandboxes 2)" in why
    assert "beta is full (0 of its max_sandboxes 0)" in why
    assert probed == ["gamma"]  # a full host is not even probed
    host, _ = await choose_host(placement, None, hosts, probe, live=lambda: {"alpha": 1})
    assert host == "alpha"


async def test_a_host_filled_while_it_was_probed_is_skipped() -> None:
    """Placement counted a host's live sandboxes once, before its probe: the creates of a
    burst probed at once, each saw the last place free, and all took it."""
    hosts = {
        "alpha": HostConfig(address="127.0.0.1", host_key="ssh-ed25519 AAAA", max_sandboxes=1),
        "beta": HostConfig(address="127.0.0.1", host_key="ssh-ed25519 AAAA"),
    }
    live = {"alpha": 0}

    async def probe(name: str, _host: HostConfig) -> str | None:
        live["alpha"] = 1  # another create took alpha's place while this probe ran
        return None

    host, why = await choose_host(
        Placement(prefer=["alpha"], fallback=["beta"]), None, hosts, probe, live=lambda: live
    )
    assert host == "beta"
    assert "alpha is full (1 of its max_sandboxes 1)" in why


async def test_a_host_another_worker_filled_is_skipped_on_the_log_s_word() -> None:
    """Two control workers each counted only their own routes beside the view: the place is
    taken in the log, and a host whose last place another took is passed over."""
    hosts = {
        "alpha": HostConfig(address="127.0.0.1", host_key="ssh-ed25519 AAAA", max_sandboxes=1),
        "beta": HostConfig(address="127.0.0.1", host_key="ssh-ed25519 AAAA"),
    }
    taken: list[tuple[str, int]] = []

    async def take(name: str, limit: int) -> None:
        taken.append((name, limit))
        if name == "alpha":
            raise Rejected("host_full", "alpha is full (1 of its max_sandboxes 1), as its places")

    probe, _ = probe_with({})
    host, why = await choose_host(
        Placement(prefer=["alpha"], fallback=["beta"]), None, hosts, probe, take=take
    )
    assert host == "beta"
    assert "alpha is full (1 of its max_sandboxes 1), as its places" in why
    assert taken == [("alpha", 1)]  # a host without a limit has no places to take
