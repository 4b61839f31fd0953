"""docs/openapi.json is what the gateway serves: regenerate it with
``python -m sandboxer.gateway.openapi`` after changing a route or a model."""

from __future__ import annotations

from openapi_spec_validator import validate

from sandboxer.gateway.openapi import DEFAULT_PATH, generate, render


def test_the_committed_openapi_document_is_current() -> None:
    assert DEFAULT_PATH.read_text() == render(generate()), (
        "docs/openapi.json is stale: run .venv/bin/python -m sandboxer.gateway.openapi"
    )


def test_every_operation_documents_the_error_shape() -> None:
    document = generate()
    assert document["openapi"].startswith("3.")
    for path, operations in document["paths"].items():
        assert path.startswith("/v1/"), path
        for method, operation in operations.items():
            refs = {
                str(answer.get("content", {}).get("application/json", {}).get("schema", {}))
                for status, answer in operation["responses"].items()
                if status.startswith(("4", "5"))
            }
            assert any("ErrorBody" in ref for ref in refs), (method, path)


def test_the_document_is_valid_openapi() -> None:
    validate(generate())  # type: ignore[arg-type]
