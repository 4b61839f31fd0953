"""The Daytona double and ext.daytona hold to daytona-openapi.json: paths, statuses, fields.

The spec is the provider's published API (../shared/specs); when it and the
double or the adapter drift apart, these fail. Where the real API is known to
differ from its spec, the double lists the difference with its reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from sandboxer.config.catalog import Catalog
from sandboxer.config.profile import Network, Resources
from sandboxer.extensions.daytona import plan
from sandboxer.extensions.daytona.api import ProviderSandbox
from tests.doubles.daytona_double import (
    ANSWERS,
    DEVIATIONS,
    NETWORK_FIELDS,
    SPEC_FILE,
    DaytonaDouble,
)
from tests.doubles.spec_double import SPECS

SPEC: dict[str, Any] = json.loads((SPECS / SPEC_FILE).read_text())
SCHEMAS = SPEC["components"]["schemas"]


@pytest.fixture(scope="module")
def double() -> Iterator[DaytonaDouble]:
    made = DaytonaDouble()
    yield made
    made.close()


def declared(method: str, pattern: str) -> set[int]:
    return {int(status) for status in SPEC["paths"][pattern][method.lower()]["responses"]}


def test_every_route_the_double_serves_is_in_the_spec(double: DaytonaDouble) -> None:
    for method, pattern in double.app.routes:
        assert pattern in SPEC["paths"], pattern
        assert method.lower() in SPEC["paths"][pattern], (method, pattern)


def test_every_status_a_handler_answers_is_declared_or_a_documented_deviation(
    double: DaytonaDouble,
) -> None:
    assert set(ANSWERS) == set(double.app.routes)
    for route, statuses in ANSWERS.items():
        allowed = declared(*route) | set(DEVIATIONS.get(route, {}))
        assert statuses <= allowed, (route, statuses - allowed)


def test_deviations_are_real_and_explained(double: DaytonaDouble) -> None:
    for route, reasons in DEVIATIONS.items():
        assert route in double.app.routes, route
        assert 401 in reasons  # the auth check answers 401 on every route
        for status, reason in reasons.items():
            assert status not in declared(*route), f"{route} {status} is declared: no deviation"
            assert len(reason) > 20, (route, status)
        assert double.app.deviations[route] == set(reasons)


def test_the_create_body_uses_only_fields_of_CreateSandbox() -> None:
    properties = set(SCHEMAS["CreateSandbox"]["properties"])
    base = Catalog.load().profile("profile.daytona")
    sized = base.model_copy(
        update={
            "image": "image:python:3.12",
            "resources": Resources(cpu=2, memory_mb=2048, disk_mb=4096, gpu="2"),
        }
    )
    netted = base.model_copy(
        update={"network": Network(egress=["10.0.0.0/8", "*.pypi.org:443", "pypi.org"])}
    )
    for profile in (base, sized, netted):
        made = plan.plan_create(
            sandbox_id="conform001",
            extension="ext.daytona",
            profile=profile,
            project="p",
            expires_at=None,
            env={"K": "v"},
            target="eu",
            grace_minutes=15,
            now=datetime.now(UTC),
        )
        assert set(made.body) <= properties, set(made.body) - properties
    assert {"networkAllowList", "domainAllowList"} <= set(made.body)  # the netted one's
    assert set(SCHEMAS["CreateBuildInfo"]["required"]) <= {"dockerfileContent"}
    assert set(NETWORK_FIELDS) <= properties  # what the double records is the spec's


def test_the_fields_and_states_the_adapter_reads_exist() -> None:
    sandbox = set(SCHEMAS["Sandbox"]["properties"])
    assert {"id", "name", "state", "labels", "errorReason", "target"} <= sandbox
    states = set(SCHEMAS["SandboxState"]["enum"])
    named = plan.FAILED_STATES | plan.GONE_STATES | {"started", "stopped", "stopping", "starting"}
    assert named <= states, named - states
    execute = SCHEMAS["ExecuteRequest"]["properties"]
    assert {"command", "cwd", "timeout"} <= set(execute)
    assert set(SCHEMAS["ExecuteResponse"]["required"]) == {"exitCode", "result"}
    listed = {p["name"] for p in SPEC["paths"]["/sandbox"]["get"]["parameters"]}
    assert {"labels", "includeErroredDeleted", "limit", "cursor"} <= listed
    assert set(SCHEMAS["ListSandboxesResponse"]["required"]) == {"items", "nextCursor"}


def test_the_double_answers_sandboxes_the_adapter_can_read(double: DaytonaDouble) -> None:
    record = double.plant_orphan(plan.our_labels("conform002", None, "ext.daytona"))
    body = double._body(record)
    required = set(SCHEMAS["Sandbox"]["required"])
    assert required <= set(body), required - set(body)
    assert ProviderSandbox.from_body(body).labels == plan.our_labels(
        "conform002", None, "ext.daytona"
    )
