"""A schema-driven fuzzer (schemathesis) over the OpenAPI document the real gateway serves.

The real service runs (every role, ext.local sandboxes on a real nats-server) with the
gateway on a free loopback port; every operation of the served ``/openapi.json`` gets
requests drawn from its schema, valid ones and invalid ones, bearing an administrator's
API key. Every answer must be no 5xx and must keep to the document: a status it lists,
the content type it names, a body and headers of the schema it gives.

The run is bounded (``MAX_EXAMPLES`` per operation and mode) and deterministic
(hypothesis derandomized, no example database): the same document draws the same
requests. A failure lists every offending request as a curl command.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis  # a dev dependency: pip install -e '.[dev]'
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.cli.key_commands import create_key
from sandboxer.client import SandboxerClient
from sandboxer.gateway import openapi
from tests.integration.conftest import reap_local, serve_gateway, start_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_EXAMPLES = 30
"""Requests drawn per operation and per mode (valid, invalid): about 1,600 in all."""

REQUEST_TIMEOUT = 60.0
"""A request that takes longer is a finding too (a hang is as bad as a 500)."""

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
"""No 5xx, and nothing the document does not promise."""


@dataclass
class Gateway:
    url: str
    key: str


@pytest.fixture
async def gateway(nats_server: NatsServerProcess, home: Path) -> AsyncIterator[Gateway]:
    """The whole service and a gateway beside it, and an adm key without tight limits."""
    service = await start_service(home, nats_server.url)
    admin = SandboxerClient(service.client.nc, actor={"type": "adm", "id": "pytest-fuzz"})
    key, _ = await create_key(
        admin, project="fuzz", key_type="adm", max_live=1000, rate_per_second=10_000
    )
    try:
        async with serve_gateway(service, home) as url:
            yield Gateway(url, key)
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


@dataclass
class Finding:
    operation: str
    mode: str
    problem: str
    curl: str


class Fuzzer:
    """Sends drawn requests to the gateway and keeps what breaks the document."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.auth = {"Authorization": f"Bearer {key}"}
        self.findings: list[Finding] = []
        self.sent = 0
        self.seconds: dict[str, float] = {}
        """Time spent on each operation and mode (printed: pytest shows it on failure)."""

    def send(self, case: Any, label: str, mode: str) -> None:
        self.sent += 1
        started = time.monotonic()
        try:
            response = case.call(base_url=self.url, headers=self.auth, timeout=REQUEST_TIMEOUT)
            case.validate_response(response, checks=CHECKS, headers=self.auth)
        except (Exception, BaseExceptionGroup) as exc:  # a finding: keep it and go on drawing
            problem = f"{type(exc).__name__}: {exc}".strip()
            problem += f" (after {time.monotonic() - started:.1f}s)"
            curl = case.as_curl_command(headers=self.auth)
            self.findings.append(Finding(label, mode, problem[:3000], curl[:2000]))

    def run(self, operation: Any, mode: GenerationMode) -> None:
        # An event stream answers its history and ends (it would follow the log forever).
        fixed = {"follow": "false"} if operation.path.endswith("/events") else None
        strategy = operation.as_strategy(generation_mode=mode, query=fixed)

        @settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def draw(case: Any) -> None:
            self.send(case, operation.label, mode.value)

        started = time.monotonic()
        try:
            draw()
        except Unsatisfiable:
            # Nothing of the operation can be made invalid (health takes no input).
            assert mode is GenerationMode.NEGATIVE, operation.label
        finally:
            spent = time.monotonic() - started
            self.seconds[f"{operation.label} [{mode.value}]"] = spent
            print(f"{spent:6.1f}s {operation.label} [{mode.value}]")


def fuzz(document: dict[str, Any], url: str, key: str) -> Fuzzer:
    """Every operation of ``document``, valid and invalid requests. Runs in a thread: the
    gateway serves from the test's event loop."""
    schema = schemathesis.openapi.from_dict(document)
    fuzzer = Fuzzer(url, key)
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()), key=lambda op: op.label
    )
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzzer.run(operation, mode)
    return fuzzer


async def test_fuzzing_the_served_document_finds_no_server_error(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        served = (await http.get("/openapi.json")).json()
    assert served == openapi.generate(), "the gateway serves the document the code generates"

    fuzzer = await asyncio.to_thread(fuzz, served, gateway.url, gateway.key)
    findings, sent = fuzzer.findings, fuzzer.sent

    assert sent > 200, f"the fuzzer sent only {sent} requests"
    report = "\n\n".join(f"{f.operation} [{f.mode}]\n{f.problem}\n{f.curl}" for f in findings[:30])
    assert not findings, f"{len(findings)} of {sent} requests broke the document:\n\n{report}"
