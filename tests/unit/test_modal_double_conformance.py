"""The Modal double against Modal's published API (``../shared/specs/modal-api.proto``).

Every API RPC the double serves must exist in the spec with the same request
and response messages and streaming, and every request field it reads must be a
field of that message in the spec, so a double drifting from the real API fails
here. The command router's RPCs are not in that file (it is a second service,
``task_command_router.proto``, shipped with the SDK): they are held against the
pinned SDK's own descriptor instead. The spec is read where it lives; the
project keeps no copy of it.
"""

from __future__ import annotations

import re
import tomllib
from collections import defaultdict
from pathlib import Path

# The modal SDK is a dev dependency: a missing one fails here, it is never skipped.
import modal_version
import pytest
from modal_proto import api_pb2
from modal_proto import task_command_router_pb2 as router_pb2

from tests.doubles.modal_double import (
    API_SERVICE,
    FIELDS_READ,
    ROUTER_SERVICE,
    ModalDouble,
)

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT.parent / "shared" / "specs" / "modal-api.proto"

_RPC = re.compile(
    r"rpc\s+(\w+)\s*\(\s*(stream\s+)?([\w.]+)\s*\)\s*returns\s*\(\s*(stream\s+)?([\w.]+)\s*\)"
)
_BLOCK = re.compile(r"^(message|enum|oneof|service)\s+(\w+)\s*\{")
_FIELD = re.compile(r"^(?:optional\s+|repeated\s+)?(?:map\s*<[^>]+>|[\w.]+)\s+(\w+)\s*=\s*\d+")


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def parse_spec(text: str) -> tuple[dict[str, tuple[str, str, bool]], dict[str, set[str]]]:
    """RPC name -> (request, response, server streaming); message short name -> its fields."""
    text = re.sub(r"//[^\n]*", "", text)
    service = text.index("service ModalClient {")
    rpcs = {
        m[1]: (_short(m[3]), _short(m[5]), bool(m[4]))
        for m in _RPC.finditer(text, service, text.index("\n}", service))
    }
    fields: dict[str, set[str]] = defaultdict(set)
    stack: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if block := _BLOCK.match(line):
            stack.append((block[1], block[2]))
            if line.endswith("}"):
                stack.pop()
            continue
        if line.startswith("}"):
            if stack:
                stack.pop()
            continue
        messages = [name for kind, name in stack if kind == "message"]
        if messages and stack[-1][0] in {"message", "oneof"} and (field := _FIELD.match(line)):
            fields[messages[-1]].add(field[1])
    return rpcs, fields


@pytest.fixture(scope="module")
def spec() -> tuple[dict[str, tuple[str, str, bool]], dict[str, set[str]]]:
    if not SPEC.is_file():
        pytest.fail(f"the Modal spec is missing: {SPEC} (../shared/specs/ beside the checkout)")
    return parse_spec(SPEC.read_text())


def _served(service: str) -> dict[str, tuple[str, str, bool]]:
    double = ModalDouble(Path("/nonexistent"), token_id="x", token_secret="y")
    handlers = double._api_handlers() if service == API_SERVICE else double._router_handlers()
    module = api_pb2 if service == API_SERVICE else router_pb2
    described = module.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[1]]
    served = {}
    for name in handlers:
        method = described.methods_by_name[name]
        served[name] = (
            method.input_type.name,
            method.output_type.name,
            method.server_streaming,
        )
    return served


def test_the_parser_reads_the_spec(
    spec: tuple[dict[str, tuple[str, str, bool]], dict[str, set[str]]],
) -> None:
    rpcs, fields = spec
    assert rpcs["SandboxCreate"] == ("SandboxCreateRequest", "SandboxCreateResponse", False)
    assert rpcs["ClientHello"] == ("Empty", "ClientHelloResponse", False)
    assert {"app_id", "definition", "tags"} <= fields["SandboxCreateRequest"]
    assert "data" in fields["GenericResult"]  # a field inside a oneof


def test_every_api_rpc_the_double_serves_is_in_the_spec(
    spec: tuple[dict[str, tuple[str, str, bool]], dict[str, set[str]]],
) -> None:
    rpcs, _fields = spec
    served = _served(API_SERVICE)
    assert {"SandboxCreate", "SandboxTerminate", "SandboxList", "SandboxWait"} <= set(served)
    for name, shape in served.items():
        assert name in rpcs, f"the double serves {name}, which the spec does not have"
        assert rpcs[name] == shape, f"{name}: the double {shape}, the spec {rpcs[name]}"


def test_every_field_the_double_reads_is_in_the_spec(
    spec: tuple[dict[str, tuple[str, str, bool]], dict[str, set[str]]],
) -> None:
    _rpcs, fields = spec
    router_messages = set(router_pb2.DESCRIPTOR.message_types_by_name)
    for message, names in FIELDS_READ.items():
        if message in router_messages:
            declared = {f.name for f in router_pb2.DESCRIPTOR.message_types_by_name[message].fields}
            assert names <= declared, (
                f"{message}: {sorted(names - declared)} not in the router proto"
            )
            continue
        assert message in fields, f"the double reads {message}, which the spec does not have"
        missing = names - fields[message]
        assert not missing, f"the double reads {message}.{sorted(missing)}, not in the spec"


def test_router_rpcs_follow_the_pinned_sdk() -> None:
    """Not in the shared spec: held against the SDK's own task_command_router.proto."""
    described = router_pb2.DESCRIPTOR.services_by_name[ROUTER_SERVICE.rsplit(".", 1)[1]]
    for name, shape in _served(ROUTER_SERVICE).items():
        method = described.methods_by_name[name]
        assert shape == (method.input_type.name, method.output_type.name, method.server_streaming)


def test_the_installed_sdk_is_the_pinned_one() -> None:
    """The double and ext.modal are proven with the SDK whose api.proto is the spec."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [pin] = project["optional-dependencies"]["modal"]
    assert pin == f"modal=={modal_version.__version__}"
    assert pin in project["optional-dependencies"]["dev"]
