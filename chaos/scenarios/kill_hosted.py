"""kill -9 of each hosted backend's extension worker (ext.e2b, ext.daytona, ext.modal) and of
the control worker, at random points during at least 200 create/destroy cycles across the
three, each killed worker restarted after a random pause.

The providers are the local servers that enforce their published specs (chaos/hosted.py).
A worker killed between its provider's create and our ``ready`` leaves a provider sandbox the
log does not know; its job, delivered again, makes the sandbox once more (a later attempt),
and the earlier one must go: fenced by the attempt labels, or swept
(``SANDBOXER_LEAK_SWEEP_INTERVAL``, a few seconds here). So besides the common checks, once
every cycle has ended and the sweeps have had their time, each provider must hold exactly
what the log calls live on it (``checks.held_against_log``). The seed is in the figures;
``CHAOS_SEED`` replays a run's schedule of kills.
"""

from __future__ import annotations

from pathlib import Path

from chaos.cycles import BackendCycles
from chaos.harness import ChaosService, Stopwatch, finish, run_seed
from chaos.hosted import HOSTED_PROFILES, HostedDoubles
from chaos.result import ScenarioResult

NAME = "kill-hosted"
DEADLINE = 300.0
ROLES = ("control", "projector", "meter", *HOSTED_PROFILES)
SWEEP = 2.0
"""Seconds between a hosted worker's leak sweeps (SANDBOXER_LEAK_SWEEP_INTERVAL)."""
SETTLE = 60.0
"""Seconds the providers get, once every cycle has ended, to hold only what the log says."""
FUNDS = 10_000_000_000
"""Micro-USD for the default project: the hosted backends reserve each create's cost."""


async def run(workdir: Path) -> ScenarioResult:
    watch = Stopwatch()
    seed = run_seed()
    async with HostedDoubles(workdir) as doubles:
        env = doubles.env | {"SANDBOXER_LEAK_SWEEP_INTERVAL": str(SWEEP)}
        async with ChaosService(workdir, roles=ROLES, env=env) as svc:
            await svc.client.account_command("add_credits", "default", amount=FUNDS)
            cycles = BackendCycles(
                svc,
                seed,
                creates={backend: (profile, {}) for backend, profile in HOSTED_PROFILES.items()},
                first=list(HOSTED_PROFILES),
                killed=[*HOSTED_PROFILES, "control"],
                cycles=200,
                kills=10,
                ttl="10m",
            )
            await cycles.run(loops=4)
            problems, figures = await cycles.checked(
                doubles.held,
                settle=SETTLE,
                serves=HOSTED_PROFILES["ext.e2b"],
                secrets=doubles.secrets(),
            )
            problems += doubles.violations()
            figures["provider sandboxes made"] = doubles.made()
    return finish(NAME, watch, figures, problems)
