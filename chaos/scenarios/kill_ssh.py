"""kill -9 of each SSH backend's extension worker (ext.compose-ssh, ext.vm-packer) and of the
control worker, at random points during at least 200 create/destroy cycles across the two,
each killed worker restarted after a random pause.

The hosts are real ``sshd`` processes on loopback whose sessions reach a private ``dockerd``
(chaos/remote_hosts.py). A worker killed mid-create leaves whatever it had made on its host
(a synced workspace, half a compose stack); the job delivered again starts a later attempt,
which must remove or take over what the earlier one left. So besides the common checks, once
every cycle has ended, the engine and the hosts must hold exactly what the log calls live:
two containers per compose sandbox, one workspace directory and one ownership marker per
sandbox, nothing of a sandbox the log ended or never heard of (``checks.held_against_log``).
The seed is in the figures; ``CHAOS_SEED`` replays a run's schedule of kills.
"""

from __future__ import annotations

from pathlib import Path

from chaos.cycles import BackendCycles
from chaos.harness import ChaosService, Stopwatch, finish, run_seed
from chaos.remote_hosts import COMPOSE_PROFILE, VM_PROFILE, RemoteHosts
from chaos.result import ScenarioResult

NAME = "kill-ssh"
DEADLINE = 480.0
ROLES = ("control", "projector", "meter", "ext.compose-ssh", "ext.vm-packer")
BACKENDS = ("ext.compose-ssh", "ext.vm-packer")
SETTLE = 30.0
"""Seconds the hosts get, once every cycle has ended, to hold only what the log says."""


async def run(workdir: Path) -> ScenarioResult:
    watch = Stopwatch()
    seed = run_seed()
    svc = ChaosService(workdir, roles=ROLES)
    async with RemoteHosts(workdir, svc.home) as hosts:
        svc.extra_env["SANDBOXER_INPUT_ROOTS"] = str(hosts.repos)
        async with svc:
            cycles = BackendCycles(
                svc,
                seed,
                creates={
                    "ext.compose-ssh": (COMPOSE_PROFILE, {"repo": str(hosts.repo)}),
                    "ext.vm-packer": (VM_PROFILE, {}),
                },
                first=BACKENDS,
                killed=[*BACKENDS, "control"],
                cycles=200,
                kills=10,
                # A compose create takes about 2 s: kills closer together than that would
                # cut nearly every one, and each costs an ack wait to redeliver.
                apart=(1.0, 4.0),
            )
            await cycles.run(loops=6)  # a compose cycle mostly waits on its host: more at once
            problems, figures = await cycles.checked(hosts.held, settle=SETTLE, serves=VM_PROFILE)
    return finish(NAME, watch, figures, problems)
