"""The E2B double is held to E2B's published spec: its paths, its statuses and its fields.

If the spec file moves on (a path renamed, a status dropped, a field made
required), these fail before any adapter test can pass against a double that
has drifted from the real API.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.doubles.e2b_double import AUTH_STATUS, STATUSES, E2bDouble, E2bRecord
from tests.doubles.spec_double import SPECS


@pytest.fixture(scope="module")
def double() -> E2bDouble:
    return E2bDouble()


def test_every_path_the_double_serves_is_in_the_spec(double: E2bDouble) -> None:
    paths = double.app.spec["paths"]
    for method, path in STATUSES:
        assert path in paths, f"{path} is not in {SPECS / 'e2b-openapi.json'}"
        assert method.lower() in paths[path], f"{method} {path} is not in the spec"
    assert set(double.app.routes) == set(STATUSES)


@pytest.mark.parametrize(("method", "path"), sorted(STATUSES))
def test_every_status_a_handler_answers_is_declared(
    double: E2bDouble, method: str, path: str
) -> None:
    declared = double.app.declared_statuses(method, path)
    answered = {str(status) for status in STATUSES[(method, path)] | {AUTH_STATUS}}
    assert answered <= declared, f"{method} {path}: {sorted(answered - declared)} undeclared"


def _schema(spec: dict[str, Any], ref_or_schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in ref_or_schema:
        name = ref_or_schema["$ref"].rsplit("/", 1)[-1]
        return spec["components"]["schemas"][name]  # type: ignore[no-any-return]
    return ref_or_schema


def _answer_schema(spec: dict[str, Any], method: str, path: str, status: str) -> dict[str, Any]:
    content = spec["paths"][path][method.lower()]["responses"][status]["content"]
    schema = _schema(spec, content["application/json"]["schema"])
    if schema.get("type") == "array":
        return _schema(spec, schema["items"])
    return schema


def _record() -> E2bRecord:
    now = datetime.now(UTC)
    return E2bRecord(
        sandbox_id="iabc",
        template_id="t1",
        alias="base",
        metadata={"k": "v"},
        started_at=now,
        end_at=now,
    )


@pytest.mark.parametrize(
    ("method", "path", "status", "shape"),
    [
        ("POST", "/sandboxes", "201", "created"),
        ("POST", "/sandboxes/{sandboxID}/resume", "201", "created"),
        ("GET", "/sandboxes/{sandboxID}", "200", "detail"),
        ("GET", "/v2/sandboxes", "200", "listed"),
    ],
)
def test_the_double_s_answers_have_the_spec_s_fields(
    double: E2bDouble, method: str, path: str, status: str, shape: str
) -> None:
    schema = _answer_schema(double.app.spec, method, path, status)
    body = getattr(_record(), shape)()
    properties = set(schema["properties"])
    assert set(body) <= properties, f"fields the spec does not have: {set(body) - properties}"
    assert set(schema.get("required", [])) <= set(body), "required fields missing"


def test_the_fields_the_adapter_sends_are_the_spec_s(double: E2bDouble) -> None:
    """What ext.e2b puts in a create, a resume and a timeout exists in those bodies' schemas."""
    schemas = double.app.spec["components"]["schemas"]
    assert {
        "templateID",
        "timeout",
        "metadata",
        "envVars",
        "allow_internet_access",
        "network",
    } <= set(schemas["NewSandbox"]["properties"])
    assert "allowOut" in schemas["SandboxNetworkConfig"]["properties"]
    assert "timeout" in schemas["ResumedSandbox"]["properties"]
    assert schemas["SandboxTimeoutRequest"]["required"] == ["timeout"]
    list_params = {
        p.get("name") for p in double.app.spec["paths"]["/v2/sandboxes"]["get"]["parameters"]
    }
    assert {"metadata", "state"} <= list_params
