"""Publishing the next step a sandbox waits for, from any worker that changed it.

The control worker publishes the jobs its decisions create; an extension
worker publishes the one a snapshot was holding back (a destroy's teardown
waits for the copy to end). The job's deterministic id deduplicates a
publish that two workers, or a retry, make twice.
"""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext

from sandboxer import subjects
from sandboxer.bus.ack_inbox import Outgoing
from sandboxer.bus.event_store import Loaded
from sandboxer.bus.publish import publish_durably
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.events.types import SYSTEM_ACTOR
from sandboxer.workers.jobs import job_for, with_known

__all__ = ["dispatch_job", "job_message", "request_reroute"]


def job_message(loaded: Loaded, *, retime: bool = False) -> Outgoing | None:
    """The job the sandbox waits for, as the message that carries it (None: it waits for
    none). A provision carries the state it was made from; the message id is the job's
    deterministic id, so a second publish of it is dropped as a copy."""
    state = loaded.state
    job = job_for(state, retime=retime)
    if job is None or state.extension is None:
        return None
    job = with_known(job, loaded)
    return (
        subjects.job_subject(state.extension, job.sandbox_id),
        msgspec.json.encode(job),
        {"Nats-Msg-Id": job.job_id},
    )


async def dispatch_job(js: JetStreamContext, loaded: Loaded, *, retime: bool = False) -> None:
    """Publish the job the sandbox waits for, if any (durably: a stream mid-election is waited
    out, so a decided command keeps its job)."""
    message = job_message(loaded, retime=retime)
    if message is not None:
        subject, data, headers = message
        await publish_durably(js, subject, data, headers=headers)


async def request_reroute(js: JetStreamContext, state: SandboxState) -> None:
    """Ask the control worker to route a ``rerouting`` sandbox to its next candidate.

    The command's id is fixed by the version at which the refusal was recorded (nothing
    else changes a rerouting sandbox but a destroy), so a worker that crashed before
    sending it, and sends it again, sends the same command.
    """
    command_id = f"reroute-{state.sandbox_id}-{state.version}"
    command = {
        "command_id": command_id,
        "sandbox_id": state.sandbox_id,
        "actor": msgspec.to_builtins(SYSTEM_ACTOR),
    }
    await publish_durably(
        js,
        subjects.command_subject("reroute"),
        msgspec.json.encode(command),
        headers={"Nats-Msg-Id": command_id},
    )
