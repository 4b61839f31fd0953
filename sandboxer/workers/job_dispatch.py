"""Publishing the job a sandbox waits for, from any worker that changed it.

The control worker publishes the jobs its decisions create; an extension
worker publishes the one a snapshot was holding back (a destroy's teardown
waits for the copy to end). The job's deterministic id deduplicates a
publish that two workers, or a retry, make twice.
"""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext

from sandboxer import subjects
from sandboxer.bus.publish import publish_durably
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.workers.jobs import job_for

__all__ = ["dispatch_job"]


async def dispatch_job(js: JetStreamContext, state: SandboxState) -> None:
    """Publish the job ``state`` waits for, if any (durably: a stream mid-election is waited out)."""
    job = job_for(state)
    if job is None or state.extension is None:
        return
    await publish_durably(
        js,
        subjects.job_subject(state.extension, job.sandbox_id),
        msgspec.json.encode(job),
        headers={"Nats-Msg-Id": job.job_id},
    )
