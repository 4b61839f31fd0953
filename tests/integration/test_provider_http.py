"""The HTTP boundary of hosted backends against a real local server: what each answer maps to."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandboxer.errors import ProviderAuth, ProviderError, ProviderQuota, ProviderUnavailable
from sandboxer.hosted.http import ProviderHttp
from tests.doubles.spec_double import Served

pytestmark = pytest.mark.integration

KEY = "sk-very-secret-key-1234"


class Script:
    """What the server answers next, per path: a list of (status, body) consumed in order."""

    def __init__(self) -> None:
        self.answers: dict[str, list[tuple[int, Any]]] = {}
        self.seen: list[str] = []

    async def endpoint(self, request: Request) -> Response:
        path = request.url.path
        self.seen.append(path)
        if request.headers.get("x-api-key") != KEY:
            return JSONResponse(
                {"code": 401, "message": f"bad key {request.headers.get('x-api-key')}"}, 401
            )
        status, body = self.answers.get(path, [(200, {"ok": True})]).pop(0)
        if status == 0:  # hang past the client's timeout
            await asyncio.sleep(2)
            status = 200
        return JSONResponse(body, status) if body is not None else Response(status_code=status)


@pytest.fixture
def server() -> Iterator[tuple[Script, str]]:
    script = Script()
    app = Starlette(
        routes=[Route("/{rest:path}", script.endpoint, methods=["GET", "POST", "DELETE"])]
    )
    with Served(app) as served:
        yield script, served.url


def client(url: str, key: str = KEY, **how: Any) -> ProviderHttp:
    return ProviderHttp(
        provider="ext.test",
        base_url=url,
        auth_headers={"X-API-Key": key},
        key_source="env:TEST_API_KEY",
        wait_initial=0.01,
        **how,
    )


async def test_5xx_is_retried_with_backoff_then_succeeds(server: tuple[Script, str]) -> None:
    script, url = server
    script.answers["/things"] = [
        (503, {"message": "busy"}),
        (500, {"message": "oops"}),
        (200, {"id": 1}),
    ]
    http = client(url)
    assert (await http.call("GET", "/things")).json() == {"id": 1}
    assert script.seen == ["/things"] * 3
    await http.aclose()


async def test_a_create_is_not_repeated_and_keeps_the_providers_words(
    server: tuple[Script, str],
) -> None:
    script, url = server
    script.answers["/create"] = [(500, {"code": 500, "message": "node lost"}), (201, {})]
    http = client(url)
    with pytest.raises(ProviderUnavailable, match="node lost") as raised:
        await http.call("POST", "/create", json_body={}, retry=False)
    assert raised.value.retryable
    assert raised.value.status == 500
    assert script.seen == ["/create"]
    await http.aclose()


@pytest.mark.parametrize(
    ("status", "kind"), [(429, ProviderQuota), (400, ProviderError), (409, ProviderError)]
)
async def test_client_errors_map_to_our_tree(
    server: tuple[Script, str], status: int, kind: type[ProviderError]
) -> None:
    script, url = server
    script.answers["/x"] = [(status, {"code": status, "message": "the provider says no"})]
    http = client(url)
    with pytest.raises(kind, match="the provider says no") as raised:
        await http.call("POST", "/x", json_body={})
    assert raised.value.status == status
    assert script.seen == ["/x"]  # not retried
    assert raised.value.retryable is (status == 429)
    await http.aclose()


async def test_a_refused_key_is_named_by_its_source_never_its_value(
    server: tuple[Script, str],
) -> None:
    _script, url = server
    wrong = "sk-wrong-and-also-secret"
    http = client(url, key=wrong)
    with pytest.raises(ProviderAuth) as raised:
        await http.call("GET", "/x")
    assert "env:TEST_API_KEY" in raised.value.message
    assert wrong not in raised.value.message  # the server echoed it; we redact it
    await http.aclose()


async def test_accepted_statuses_are_returned_not_raised(server: tuple[Script, str]) -> None:
    script, url = server
    script.answers["/gone"] = [(404, {"message": "no such sandbox"})]
    http = client(url)
    assert (await http.call("DELETE", "/gone", accept={404})).status_code == 404
    await http.aclose()


async def test_a_timeout_is_retried_then_named(server: tuple[Script, str]) -> None:
    script, url = server
    script.answers["/slow"] = [(0, {}), (0, {})]
    http = client(url, timeout=0.3, attempts=2)
    with pytest.raises(ProviderUnavailable, match="timed out"):
        await http.call("GET", "/slow")
    assert script.seen == ["/slow", "/slow"]
    await http.aclose()
