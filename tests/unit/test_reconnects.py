"""bus/reconnects.py: who is told that a connection is back, and who is not."""

from __future__ import annotations

from nats.aio.client import Client

from sandboxer.bus import reconnects


def test_each_listener_of_the_connection_is_told_until_it_forgets() -> None:
    nc, other = Client(), Client()
    told: list[str] = []
    forget_a = reconnects.when_reconnected(nc, lambda: told.append("a"))
    reconnects.when_reconnected(nc, lambda: told.append("b"))
    reconnects.when_reconnected(other, lambda: told.append("other"))
    reconnects.reconnected(nc)
    assert told == ["a", "b"]
    forget_a()
    forget_a()  # twice is harmless
    reconnects.reconnected(nc)
    assert told == ["a", "b", "b"]


def test_a_listener_that_fails_does_not_keep_the_others_from_being_told() -> None:
    nc = Client()
    told: list[str] = []

    def fails() -> None:
        raise RuntimeError("a listener's own bug")

    reconnects.when_reconnected(nc, fails)
    reconnects.when_reconnected(nc, lambda: told.append("after"))
    reconnects.reconnected(nc)
    assert told == ["after"]


def test_a_connection_no_one_listens_to_tells_no_one() -> None:
    reconnects.reconnected(Client())


def test_a_send_is_lost_only_if_it_went_out_on_a_connection_lost_since() -> None:
    nc = Client()
    assert reconnects.connection_now(nc) is None  # not connected: nats-py holds the send
    assert not reconnects.lost_since(nc, None)
    nc.stats["reconnects"] = 2
    assert reconnects.lost_since(nc, 1)
    assert not reconnects.lost_since(nc, 2)
