"""The HTTP boundary of hosted backends against a real local server: what each answer maps to."""

from __future__ import annotations

import asyncio
import functools
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sandboxer.errors import (
    DeliveryRefused,
    ProviderAuth,
    ProviderError,
    ProviderQuota,
    ProviderUnavailable,
)
from sandboxer.hosted.http import MAX_ANSWER_BYTES, ProviderHttp
from sandboxer.workers.http_delivery import HttpDelivery
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


async def endless(_request: Request) -> Response:
    """A 200 whose JSON body never ends (a wrong api_url, a misbehaving endpoint): 1 MiB
    pieces at most 50 MiB/s, so that a client reading it whole grows slowly enough to watch."""

    async def pieces() -> AsyncIterator[bytes]:
        yield b'{"items": ["'
        while True:
            yield b"x" * (1024 * 1024)
            await asyncio.sleep(0.02)

    return StreamingResponse(pieces(), media_type="application/json")


async def drip(_request: Request) -> Response:
    """A 200 whose body comes a byte every 0.1 s, for ever: no single read waits long."""

    async def bytes_() -> AsyncIterator[bytes]:
        while True:
            yield b" "
            await asyncio.sleep(0.1)

    return StreamingResponse(bytes_(), media_type="application/json")


BOMB_MIB = 256


@functools.cache
def gzip_bomb() -> bytes:
    """A gzip stream of :data:`BOMB_MIB` MiB of zeros: about 250 KiB, a thousandfold less."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip format
    zeros = bytes(1024 * 1024)
    return b"".join(packer.compress(zeros) for _ in range(BOMB_MIB)) + packer.flush()


ACCEPT_ENCODINGS: list[str | None] = []
"""What each request to /bomb asked for."""


async def bomb(request: Request) -> Response:
    """A 200 (503 to a POST) in gzip, asked for or not (a misbehaving endpoint): each 64 KiB
    read of it is some 64 MiB once decompressed."""
    ACCEPT_ENCODINGS.append(request.headers.get("accept-encoding"))
    return Response(
        gzip_bomb(),
        status_code=503 if request.method == "POST" else 200,
        media_type="application/json",
        headers={"Content-Encoding": "gzip"},
    )


@pytest.fixture
def server() -> Iterator[tuple[Script, str]]:
    script = Script()
    app = Starlette(
        routes=[
            Route("/endless", endless, methods=["GET"]),
            Route("/drip", drip, methods=["GET"]),
            Route("/bomb", bomb, methods=["GET", "POST"]),
            Route("/{rest:path}", script.endpoint, methods=["GET", "POST", "DELETE"]),
        ]
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


async def test_an_endless_answer_is_cut_off_at_the_bound_naming_provider_url_and_limit(
    server: tuple[Script, str],
) -> None:
    """A wrong api_url serving a body that never ends: the read stops past MAX_ANSWER_BYTES,
    and the error names the provider, the URL without its credentials, and the limit. (The
    old code read the whole answer into memory: it never ended, the worker's memory grew.)"""
    _script, url = server
    with_credentials = url.replace("http://", "http://someone:hunter2@")
    http = ProviderHttp(
        provider="ext.test",
        base_url=with_credentials,
        auth_headers={"X-API-Key": KEY},
        key_source="env:TEST_API_KEY",
    )
    try:
        async with asyncio.timeout(5):  # 32 MiB arrive in under a second
            with pytest.raises(ProviderError) as raised:
                await http.call("GET", "/endless", params=httpx.QueryParams(token="s3cr3t"))
    finally:
        await http.aclose()
    message = raised.value.message
    assert message.startswith("ext.test: GET ")
    assert f"{url}/endless answered more than {MAX_ANSWER_BYTES} bytes" in message
    assert "is api_url this provider's API?" in message
    assert "hunter2" not in message
    assert "s3cr3t" not in message
    assert not raised.value.retryable


async def test_an_answer_dripped_a_byte_at_a_time_is_cut_off_at_the_deadline(
    server: tuple[Script, str],
) -> None:
    """httpx's timeout is per read, which a byte every 0.1 s never reaches: an attempt has one
    deadline for all of it. (The old code waited for ever.)"""
    _script, url = server
    http = client(url, timeout=0.5, attempts=2)
    try:
        async with asyncio.timeout(10):
            with pytest.raises(ProviderUnavailable, match=r"GET /drip timed out.* 0\.5 s"):
                await http.call("GET", "/drip")
    finally:
        await http.aclose()


async def test_a_compressed_answer_is_refused_unread(server: tuple[Script, str]) -> None:
    """Review 2026-12-04: the bound counted decompressed bytes, after httpx had decompressed a
    whole network read (and httpx decompresses any coding an answer names, asked for or not):
    a 64 KiB read of a gzip of zeros became some 64 MiB at once, past any bound (stacked
    codings, ``gzip, gzip``, far more). Now nothing is decompressed: the request asks for
    identity, and an answer compressed anyway is refused before its body is read. (The old
    code held more than 64 MiB here, and failed with "answered more than".)"""
    _script, url = server
    gzip_bomb()  # made before the measure
    http = client(url)
    ACCEPT_ENCODINGS.clear()
    tracemalloc.start()
    try:
        async with asyncio.timeout(10):
            with pytest.raises(ProviderError) as raised:
                await http.call("GET", "/bomb", max_bytes=1024 * 1024)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await http.aclose()
    assert peak < 16 * 1024 * 1024, f"{peak} bytes held"
    message = raised.value.message
    assert f"GET {url}/bomb answered a gzip-compressed body (200)" in message
    assert "Accept-Encoding: identity" in message
    assert not raised.value.retryable
    assert ACCEPT_ENCODINGS == ["identity"]


async def test_a_delivery_does_not_read_a_compressed_error_answer(
    server: tuple[Script, str],
) -> None:
    """The event deliveries (State Hub, meter export) read an error answer's reason through
    the same bounded read: a compressed one is not read (the old code held more than 64 MiB
    for its 4 KiB of reason)."""
    _script, url = server
    gzip_bomb()
    delivery = HttpDelivery(f"{url}/bomb", label="test", refuses=lambda _status: True)
    ACCEPT_ENCODINGS.clear()
    tracemalloc.start()
    try:
        async with asyncio.timeout(10):
            with pytest.raises(DeliveryRefused) as refused:
                await delivery.post(b"{}", {}, what="an event")
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await delivery.aclose()
    assert peak < 16 * 1024 * 1024, f"{peak} bytes held"
    assert refused.value.message.endswith(
        "answered 503 Service Unavailable (a gzip body, not read)"
    )
    assert ACCEPT_ENCODINGS == ["identity"]
