"""The State Hub's delivery rules without a hub: which answers are refused for good, what the
status keeps, URLs without credentials, and the settings' checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxer.config.settings import Settings
from sandboxer.errors import ConfigError, SettingError
from sandboxer.statehub.follower import bearer_auth, check_state_hub_settings, refused_for_good
from sandboxer.statehub.status import KEEP_REFUSED, DeliveryStatus
from sandboxer.workers.http_delivery import public_url


@pytest.mark.parametrize("status", [400, 409, 413, 415, 422])
def test_a_4xx_the_body_caused_is_refused_for_good(status: int) -> None:
    assert refused_for_good(status)


@pytest.mark.parametrize("status", [401, 403, 404, 408, 429, 500, 502, 503, 504])
def test_a_hub_that_is_down_busy_or_misconfigured_is_retried(status: int) -> None:
    assert not refused_for_good(status)


def test_urls_are_shown_without_credentials() -> None:
    assert public_url("https://user:s3cret@hub.example:8443/v1/events?key=s3cret") == (
        "https://hub.example:8443/v1/events"
    )
    assert public_url("http://[::1]:9000/e") == "http://[::1]:9000/e"


def test_the_status_keeps_the_last_refusals_and_survives_a_restart(tmp_path: Path) -> None:
    status = DeliveryStatus()
    body = {"event_id": "e1", "type": "ready", "sandbox_id": "s", "stream_seq": 3, "at": "t"}
    status.on_failure(body, "hub.example is unreachable", None)
    assert status.retrying == {"event_id": "e1", "type": "ready", "sandbox_id": "s",
                               "stream_seq": 3, "at": "t"}  # fmt: skip
    status.on_delivered(body)
    assert status.retrying is None
    assert status.delivered == 1
    for n in range(KEEP_REFUSED + 5):
        status.on_refused({**body, "event_id": f"r{n}"}, "400 Bad Request", 400)
    assert status.refused_count == KEEP_REFUSED + 5
    assert [r["event_id"] for r in status.refused][-1] == f"r{KEEP_REFUSED + 4}"
    assert len(status.refused) == KEEP_REFUSED
    path = tmp_path / "statehub" / "status.json"
    status.save(path)
    again = DeliveryStatus.load(path)
    assert again.as_dict() == {**status.as_dict(), "retrying": None}
    path.write_text("{not json")
    assert DeliveryStatus.load(path).delivered == 0


def test_the_token_setting_takes_a_reference_never_the_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SANDBOXER_STATE_HUB_URL", "https://hub.example/events")
    monkeypatch.setenv("SANDBOXER_STATE_HUB_TOKEN", "hunter2-the-token")
    with pytest.raises(SettingError) as refused:
        Settings.from_env()
    assert "hunter2" not in refused.value.message
    monkeypatch.setenv("SANDBOXER_STATE_HUB_TOKEN", "file:relative/path")
    with pytest.raises(SettingError):
        Settings.from_env()
    monkeypatch.setenv("SANDBOXER_STATE_HUB_TOKEN", "env:HUB_TOKEN")
    monkeypatch.setenv("SANDBOXER_STATE_HUB_URL", "ftp://hub.example/")
    with pytest.raises(SettingError):
        Settings.from_env()
    monkeypatch.setenv("SANDBOXER_STATE_HUB_URL", "https://hub.example/events")
    settings = Settings.from_env()
    assert (settings.state_hub_url, settings.state_hub_token) == (
        "https://hub.example/events",
        "env:HUB_TOKEN",
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://hub-user:s3cret-pw@hub.example/events here",
        "https://hub.example/events here?token=s3cret-pw",
        "https://hub-user:s3cret-pw@hub.example:notaport/events",
        "https://hub-user:s3cret-pw@[::1/events",
    ],
)
def test_a_malformed_hub_url_is_refused_without_its_credentials(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """The refusal quoted the whole URL, Basic auth password and query included, and a port
    that is no number was taken (every POST then failed on it)."""
    monkeypatch.setenv("SANDBOXER_STATE_HUB_URL", url)
    monkeypatch.delenv("SANDBOXER_STATE_HUB_TOKEN", raising=False)
    with pytest.raises(SettingError) as refused:
        Settings.from_env()
    assert "s3cret" not in refused.value.message
    assert "SANDBOXER_STATE_HUB_URL" in refused.value.message


def test_the_role_needs_a_url_and_a_readable_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = Settings(home=tmp_path, nats_urls=(), nats_server=None, ack_wait=5.0)
    with pytest.raises(ConfigError, match="SANDBOXER_STATE_HUB_URL"):
        check_state_hub_settings(base)
    monkeypatch.delenv("HUB_TOKEN", raising=False)
    missing = Settings(
        home=tmp_path,
        nats_urls=(),
        nats_server=None,
        ack_wait=5.0,
        state_hub_url="http://hub.example/e",
        state_hub_token="env:HUB_TOKEN",
    )
    with pytest.raises(ConfigError, match="HUB_TOKEN"):
        check_state_hub_settings(missing)
    token_file = tmp_path / "token"
    token_file.write_text("abc123\n")
    auth = bearer_auth(f"file:{token_file}")
    assert auth is not None
    assert auth() == {"Authorization": "Bearer abc123"}
    token_file.write_text("rotated\n")  # read again for every attempt
    assert auth() == {"Authorization": "Bearer rotated"}


@pytest.mark.parametrize("bad", ["first\nsecond-kept-secret", "s\u00e9kret-kept-secret", "a b"])
def test_a_token_no_header_can_hold_is_refused_without_showing_it(tmp_path: Path, bad: str) -> None:
    """A line break made the HTTP client quote the token in its error; a non-ASCII character
    escaped the retries and crashed the role."""
    token_file = tmp_path / "token"
    token_file.write_text(bad + "\n")
    auth = bearer_auth(f"file:{token_file}")
    assert auth is not None
    with pytest.raises(ConfigError, match="not one bearer token") as refused:
        auth()
    assert bad not in refused.value.message
    assert str(token_file) in refused.value.message


def test_up_runs_the_statehub_role_only_when_the_hub_is_configured(tmp_path: Path) -> None:
    from sandboxer.config.catalog import Catalog
    from sandboxer.service import _runnable_roles

    catalog = Catalog.load(tmp_path)
    base = Settings(home=tmp_path, nats_urls=(), nats_server=None, ack_wait=5.0)
    assert "statehub" not in _runnable_roles(base, catalog, None)
    with_hub = Settings(
        home=tmp_path,
        nats_urls=(),
        nats_server=None,
        ack_wait=5.0,
        state_hub_url="http://hub.example/e",
    )
    assert "statehub" in _runnable_roles(with_hub, catalog, None)
    assert _runnable_roles(with_hub, catalog, ["statehub"]) == ["statehub"]
    with pytest.raises(ConfigError, match="SANDBOXER_STATE_HUB_URL"):
        _runnable_roles(base, catalog, ["statehub"])


async def test_the_delivery_retries_until_taken_and_stops_at_a_refusal() -> None:
    import httpx

    from sandboxer.errors import DeliveryFailed, DeliveryRefused
    from sandboxer.workers.http_delivery import HttpDelivery

    answers = [500, 429, 202, 422]
    seen: list[httpx.Request] = []

    def hub(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(answers.pop(0), text="no\r\nsuch\x1b[31m thing")

    failures: list[DeliveryFailed] = []
    delivery = HttpDelivery(
        "http://u:p@hub.test/e?k=v",
        label="test",
        client=httpx.AsyncClient(transport=httpx.MockTransport(hub)),
        wait_max=0.01,
        refuses=refused_for_good,
        on_failure=failures.append,
        auth=lambda: {"Authorization": "Bearer t"},
    )
    assert await delivery.post(b"{}", {"Idempotency-Key": "e1"}, what="e1") == 202
    assert [f.status for f in failures] == [500, 429]
    assert "\r" not in failures[0].message
    assert "\x1b" not in failures[0].message
    assert "u:p" not in failures[0].message
    assert {r.headers["authorization"] for r in seen} == {"Bearer t"}
    with pytest.raises(DeliveryRefused) as refused:
        await delivery.post(b"{}", {"Idempotency-Key": "e2"}, what="e2")
    assert refused.value.status == 422
    assert len(failures) == 2  # a refusal is not retried


def test_up_runs_the_gateway_only_with_an_http_address(tmp_path: Path) -> None:
    """SANDBOXER_HTTP_ADDR=off: `up` leaves the gateway out before importing its modules."""
    from sandboxer.config.catalog import Catalog
    from sandboxer.service import _runnable_roles

    catalog = Catalog.load(tmp_path)
    off = Settings(home=tmp_path, nats_urls=(), nats_server=None, ack_wait=5.0)
    assert "gateway" not in _runnable_roles(off, catalog, None)
    on = Settings(
        home=tmp_path, nats_urls=(), nats_server=None, ack_wait=5.0, http_addr=("127.0.0.1", 0)
    )
    assert "gateway" in _runnable_roles(on, catalog, None)
