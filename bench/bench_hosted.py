"""A hosted create through sandboxer, against the provider's own cost, in the same run.

The provider is the E2B double (tests/doubles/e2b_double.py), which checks every
request and answer against E2B's published spec. Baseline: the same create
and kill sent straight to the double with httpx (what a hand-written wrapper
would pay, spec checks included). Measured: create -> ready through the bus
(admission, routing, credit reservation, the worker's create with our labels
and timeout, the ready event), then destroy, with `sandboxer up` in its own
process.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the doubles live in tests/

from _harness import nats, service, summary, tempdir

from sandboxer.client import SandboxerClient
from tests.doubles.e2b_double import E2bDouble, _WithHeaders
from tests.doubles.spec_double import Served

N = 40


async def raw(url: str, key: str) -> list[float]:
    times = []
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}) as http:
        for _ in range(N):
            started = time.perf_counter()
            made = await http.post("/sandboxes", json={"templateID": "base", "timeout": 300})
            made.raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
            await http.delete(f"/sandboxes/{made.json()['sandboxID']}")
    return times


async def main() -> None:
    double = E2bDouble()
    with Served(_WithHeaders(double.app)) as served, tempdir() as raw_tmp:
        os.environ["E2B_API_URL"] = served.url
        os.environ["E2B_API_KEY"] = double.api_key
        tmp = Path(raw_tmp)
        async with nats(tmp) as server, service(tmp, server.url) as client:
            admin = await SandboxerClient.connect([server.url], actor={"type": "adm", "id": "b"})
            await admin.account_command("add_credits", "default", amount=10_000_000_000)
            await admin.close()
            warm = await client.create("profile.e2b-burst")  # streams, consumers, imports
            await client.destroy(warm["sandbox_id"])
            baseline = await raw(served.url, double.api_key)
            latencies = []
            for _ in range(N):
                started = time.perf_counter()
                ready = await client.create("profile.e2b-burst")
                latencies.append((time.perf_counter() - started) * 1000)
                await client.destroy(ready["sandbox_id"])
    assert double.violations == [], double.violations
    print(f"E2B double: create via httpx   : {summary(baseline)}")
    print(f"E2B: create -> ready via bus   : {summary(latencies)}")


if __name__ == "__main__":
    asyncio.run(main())
