"""What a look at a guarded durable decides (sandboxer/bus/guarded_durable.py), without I/O;
the attack itself runs against a real server in tests/integration/test_redefined_durables.py."""

from __future__ import annotations

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from sandboxer.bus.guarded_durable import made_from, redefined, same_settings

WANTED = ConsumerConfig(
    durable_name="meter",
    name="meter",
    filter_subject="sandboxer.evt.sandbox.*.destroyed",
    ack_policy=AckPolicy.EXPLICIT,
    deliver_policy=DeliverPolicy.ALL,
    ack_wait=5.0,
    max_deliver=-1,
    max_ack_pending=256,
)


def test_a_durable_without_its_durable_name_was_written_by_a_client() -> None:
    assert not redefined(WANTED, "meter")
    # What the server keeps after a client's create names it: even with every setting
    # put back as the service had it, the durable name is gone.
    assert redefined(WANTED.evolve(durable_name=None), "meter")


def test_settings_compare_what_the_service_sets_and_not_where_it_started() -> None:
    assert same_settings(made_from(WANTED, 41), WANTED)
    assert not same_settings(WANTED.evolve(ack_wait=30.0), WANTED)
    assert not same_settings(WANTED.evolve(filter_subject="sandboxer.evt.>"), WANTED)
    assert not same_settings(WANTED.evolve(max_ack_pending=1), WANTED)
    several = WANTED.evolve(filter_subject=None, filter_subjects=["b", "a"])
    assert same_settings(several.evolve(filter_subjects=["a", "b"]), several)


def test_it_is_made_again_after_the_last_event_known_handled() -> None:
    again = made_from(WANTED, 41)
    assert again.deliver_policy == DeliverPolicy.BY_START_SEQUENCE
    assert again.opt_start_seq == 42
    for unknown in (None, 0):  # a process that never saw it intact: the whole log
        whole = made_from(WANTED, unknown)
        assert whole.deliver_policy == DeliverPolicy.ALL
        assert whole.opt_start_seq is None
