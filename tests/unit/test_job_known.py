"""A provision job carries the state it was made from; anything doubtful about it means: load."""

from __future__ import annotations

import msgspec

from sandboxer.bus.event_store import Loaded
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.workers.jobs import Job, Known, with_known

ROUTED = SandboxState(sandbox_id="sbx0001", status="routed", version=2, extension="ext.local")


def _job(action: str = "provision") -> Job:
    return Job(job_id=f"sbx0001-2-{action}", sandbox_id="sbx0001", action=action, version=2)  # type: ignore[arg-type]


def _over_the_wire(job: Job) -> Job:
    return msgspec.json.decode(msgspec.json.encode(job), type=Job)


def test_a_provision_job_carries_its_state_across_the_wire() -> None:
    job = _over_the_wire(with_known(_job(), Loaded(ROUTED, 41)))
    assert job.known_loaded() == Loaded(ROUTED, 41)


def test_only_provision_jobs_carry_a_state() -> None:
    assert _over_the_wire(with_known(_job("teardown"), Loaded(ROUTED, 41))).known_loaded() is None


def test_a_job_from_an_older_service_has_none() -> None:
    old = b'{"job_id":"sbx0001-2-provision","sandbox_id":"sbx0001","action":"provision"}'
    assert msgspec.json.decode(old, type=Job).known_loaded() is None


def test_a_state_of_another_shape_or_sandbox_or_garbage_is_not_used() -> None:
    def carrying(known: object) -> Job:
        return _over_the_wire(
            msgspec.structs.replace(_job(), known=msgspec.Raw(msgspec.json.encode(known)))
        )

    other_shape = Known(shape="0" * 16, last_seq=41, state=ROUTED)
    assert carrying(other_shape).known_loaded() is None
    other_sandbox = with_known(_job(), Loaded(SandboxState(sandbox_id="sbx0002"), 41))
    assert _over_the_wire(other_sandbox).known_loaded() is None
    assert carrying({"shape": 1, "state": []}).known_loaded() is None
    assert carrying([1, 2, 3]).known_loaded() is None
