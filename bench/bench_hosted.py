"""A hosted create through sandboxer, against the provider's own cost, in the same run.

The provider is the E2B double (tests/doubles/e2b_double.py), which checks every
request and answer against E2B's published spec. Baseline, alternating with
the creates through the bus: the same create sent straight to the double with
httpx (what a hand-written wrapper would pay, spec checks included).
Measured: create -> ready through the bus (admission, routing, credit
reservation, the worker's create with our labels and timeout, the ready
event), with `sandboxer up` in its own process. Kills and destroys are not
timed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the doubles live in tests/

from _harness import main, nats, percentile_rows, progress, service, tempdir
from _table import Row

from sandboxer.client import SandboxerClient
from tests.doubles.e2b_double import E2bDouble, _WithHeaders
from tests.doubles.spec_double import Served

N = 40


async def raw(http: httpx.AsyncClient) -> float:
    """One create straight to the double, in ms (its kill after it is not timed)."""
    started = time.perf_counter()
    made = await http.post("/sandboxes", json={"templateID": "base", "timeout": 300})
    made.raise_for_status()
    elapsed = (time.perf_counter() - started) * 1000
    await http.delete(f"/sandboxes/{made.json()['sandboxID']}")
    return elapsed


async def through_bus(client: SandboxerClient) -> float:
    """One create -> ready through the bus, in ms (the destroy after it is not timed)."""
    started = time.perf_counter()
    ready = await client.create("profile.e2b-burst")
    elapsed = (time.perf_counter() - started) * 1000
    await client.destroy(ready["sandbox_id"])
    return elapsed


async def rows() -> list[Row]:
    double = E2bDouble()
    with Served(_WithHeaders(double.app)) as served, tempdir() as raw_tmp:
        os.environ["E2B_API_URL"] = served.url
        os.environ["E2B_API_KEY"] = double.api_key
        tmp = Path(raw_tmp)
        async with (
            nats(tmp) as server,
            service(tmp, server.url) as client,
            httpx.AsyncClient(base_url=served.url, headers={"X-API-Key": double.api_key}) as http,
        ):
            admin = await SandboxerClient.connect([server.url], actor={"type": "adm", "id": "b"})
            await admin.account_command("add_credits", "default", amount=10_000_000_000)
            await admin.close()
            await through_bus(client)  # streams, consumers, imports
            progress(f"hosted: {N} E2B creates straight to the double and through the bus")
            baseline, latencies = [], []
            for _ in range(N):
                baseline.append(await raw(http))
                latencies.append(await through_bus(client))
    if double.violations:
        raise RuntimeError(f"the E2B double saw requests off its spec: {double.violations}")
    return percentile_rows(
        "E2B create→ready via the bus",
        "ms",
        latencies,
        baseline,
        "httpx straight to the double",
        None,
    )


if __name__ == "__main__":
    main(rows)
