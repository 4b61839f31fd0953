"""ext.compose-ssh's network policy against a real sshd host and a real engine (docs/network.md):
under deny every service is cut off the network, whatever the compose file says; under an
allowlist of names the only way out is the egress proxy, which lets through those names
only; after destroy nothing of either is left."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxer.config.network_policy import DENY_ALL, NetworkPolicy, parse_policy
from sandboxer.errors import InvalidInput, RemoteCommandFailed
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.compose_ssh import backend as compose_backend
from sandboxer.extensions.compose_ssh.egress import HOSTS_FILE, gate_directory
from sandboxer.extensions.compose_ssh.egress_plan import PROXY_PORT, bridge_of
from sandboxer.extensions.compose_ssh.stack import NO_NETWORK_FILE
from tests.conftest import require_tool
from tests.integration.remote_fixtures import ENGINES
from tests.integration.test_ext_compose_ssh import Env, env, make_repo

__all__ = ["env"]  # a fixture, used by name

pytestmark = pytest.mark.integration

UPSTREAM_PORT = 8080

# No network_mode: left alone, compose would put both services on the project's network.
NETWORKED = """\
services:
  web:
    image: localhost/mini:latest
    command: ["sleep", "3600"]
    init: true
  worker:
    image: localhost/mini:latest
    command: ["sleep", "3600"]
    init: true
"""


def denied(env: Env, sandbox_id: str, repo: Path) -> ProvisionRequest:
    request = env.request(sandbox_id, repo)
    return ProvisionRequest(
        sandbox_id=request.sandbox_id,
        profile=env.profile.with_network(DENY_ALL),
        inputs=request.inputs,
        host=request.host,
    )


@pytest.mark.parametrize("compose_engine", ENGINES, indirect=True)
async def test_deny_gives_every_service_no_network(env: Env, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", NETWORKED)
    request = denied(env, "composenonet1", repo)
    await env.extension.provision(request)
    readiness = await env.extension.wait_ready(request)
    assert not [w for w in readiness.warnings if "network" in w]
    directory = env.root / "sbx-composenonet1"
    override = json.loads((directory / NO_NETWORK_FILE).read_text())
    assert override == {
        "services": {"web": {"network_mode": "none"}, "worker": {"network_mode": "none"}}
    }
    names = env.containers("composenonet1")
    assert len(names) == 2
    for name in names:
        # Inside, only loopback exists: there is no interface to reach anything else through.
        links = env.engine.cli("exec", name, "ls", "/sys/class/net").stdout.split()
        assert links == ["lo"], (name, links)
        mode = env.engine.cli("inspect", "--format", "{{.HostConfig.NetworkMode}}", name)
        assert mode.stdout.strip() == "none"
    code = await _exec(env, "composenonet1", ["ls", "/sys/class/net"])
    assert code == (0, b"lo\n")
    await env.extension.teardown("composenonet1", host="host1")
    assert env.containers("composenonet1") == []
    assert not directory.exists()


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[str]:
    """An HTTP server in a network namespace this test makes (nothing else is a target),
    reached from the host through a veth pair; yields the server's address."""
    require_tool("ip", "iproute2")
    tag = secrets.token_hex(3)
    netns, host_end = f"sbxt-{tag}", f"sbxu{tag}"
    octet = 16 + int(tag[:2], 16) % 200
    host_ip, server_ip = f"198.18.{octet}.1", f"198.18.{octet}.2"
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("hello from upstream\n")

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    ip("netns", "add", netns)
    server: subprocess.Popen[bytes] | None = None
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", netns)
        ip("addr", "add", f"{host_ip}/30", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("-n", netns, "addr", "add", f"{server_ip}/30", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        ip("-n", netns, "link", "set", "lo", "up")
        server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                netns,
                sys.executable,
                "-m",
                "http.server",
                "--bind",
                server_ip,
                "--directory",
                str(tmp_path / "www"),
                str(UPSTREAM_PORT),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):  # listening: a connection from the host succeeds
            with (
                contextlib.suppress(OSError),
                socket.create_connection((server_ip, UPSTREAM_PORT), 1),
            ):
                break
            time.sleep(0.05)
        yield server_ip
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        subprocess.run(["ip", "link", "del", host_end], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)


@contextlib.contextmanager
def greeter() -> Iterator[int]:
    """A service of the host on every address that says hello to whoever connects."""
    listener = socket.create_server(("0.0.0.0", 0))
    listener.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"hello\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join()
        listener.close()


def with_policy(env: Env, sandbox_id: str, repo: Path, policy: NetworkPolicy) -> ProvisionRequest:
    base = env.request(sandbox_id, repo)
    return ProvisionRequest(
        sandbox_id=base.sandbox_id,
        profile=env.profile.with_network(policy),
        inputs=base.inputs,
        host=base.host,
    )


@pytest.mark.parametrize("compose_engine", ENGINES, indirect=True)
async def test_an_allowlist_lets_through_only_its_names(
    env: Env, tmp_path: Path, upstream: str
) -> None:
    sid = env.own_id("composegate1")
    # Both names lead to the test's own server; only one is on the allowlist.
    env.root.mkdir(parents=True, exist_ok=True)
    (env.root / HOSTS_FILE).write_text(f"{upstream} allowed.test other.test\n")
    support = (await env.extension.inspect_host("host1"))["egress_allowlist"]
    assert support["ready"] is True, support
    repo = make_repo(tmp_path / "repo", NETWORKED)
    policy = parse_policy(
        {"egress": [f"allowed.test:{UPSTREAM_PORT}", f"{upstream}:{UPSTREAM_PORT}/tcp"]}
    )
    request = with_policy(env, sid, repo, policy)
    await env.extension.provision(request)
    await env.extension.provision(request)  # a redelivered create starts clean
    readiness = await env.extension.wait_ready(request)
    # allowed.test's entry asks for TCP and UDP: the proxy carries its TCP half, and says so.
    assert [w for w in readiness.warnings if "network" in w] == [
        f"network: egress allowed.test:{UPSTREAM_PORT}: UDP not provided, TCP only: the egress "
        f"proxy relays TCP; write such an entry with /tcp (allowed.test:{UPSTREAM_PORT}/tcp) "
        "to ask for what is enforced"
    ]
    network = f"sbx-{sid}-egress"
    assert env.engine.cli("network", "inspect", network).returncode == 0
    for service in ("web", "worker"):
        code, out = await _exec(
            env,
            sid,
            ["wget", "-q", "-O", "-", f"http://allowed.test:{UPSTREAM_PORT}/"],
            service=service,
        )
        assert (code, out) == (0, b"hello from upstream\n"), service
    # Another name, another port of the allowed name: the proxy answers 403 (one exec).
    refused = " ; ".join(
        f'wget -q -O - {url} ; echo "$?"'
        for url in (f"http://other.test:{UPSTREAM_PORT}/", "http://allowed.test:80/")
    )
    code, out = await _exec(env, sid, ["sh", "-c", refused])
    assert out == b"1\n1\n"
    # TLS: the proxy lets a tunnel to the allowed name through only when the ClientHello
    # names it too (the test's server then answers the TLS bytes with an HTTP 400).
    gateway = _gateway(env, network)
    for server_name, through in (("allowed.test", True), ("other.test", False)):
        connect = f"CONNECT allowed.test:{UPSTREAM_PORT} HTTP/1.1\r\n\r\n".encode()
        script = f"printf '{_octal(connect + client_hello(server_name))}' | timeout 5 nc {gateway} {PROXY_PORT}"
        _, out = await _exec(env, sid, ["sh", "-c", script])
        assert out.startswith(b"HTTP/1.1 200 Connection established\r\n\r\n"), out
        assert (b"400" in out) == through, (server_name, out)
    log = (Path(gate_directory(sid)) / "log").read_text()
    assert f"allowed: CONNECT allowed.test:{UPSTREAM_PORT}\n" in log, log
    assert "with TLS server name 'other.test'" in log, log
    # An address entry: a CONNECT to it is let through, to another port of it refused.
    for port, answer in (
        (UPSTREAM_PORT, b"200 Connection established"),
        (UPSTREAM_PORT + 1, b"403"),
    ):
        connect = f"CONNECT {upstream}:{port} HTTP/1.1\\r\\n\\r\\nGET / HTTP/1.0\\r\\n\\r\\n"
        script = f"printf '{connect}' | timeout 5 nc {gateway} {PROXY_PORT}"
        _, out = await _exec(env, sid, ["sh", "-c", script])
        assert answer in out.split(b"\r\n", 1)[0], out
        assert (b"hello from upstream" in out) == (port == UPSTREAM_PORT), out
    # Without the proxy: the server's address directly, and a service of the host listening
    # on every address (reachable through the bridge's gateway but for the sandbox's rules).
    with greeter() as port:
        tries = (
            f'(timeout 2 wget -q -O - http://{upstream}:{UPSTREAM_PORT}/; echo "wget $?") & '
            f'(timeout 2 nc {gateway} {port}; echo "nc $?") & wait'
        )
        code, out = await _exec(
            env, sid, ["env", "-u", "http_proxy", "-u", "HTTP_PROXY", "sh", "-c", tries]
        )
    lines = sorted(out.decode().splitlines())
    assert len(lines) == 2, out  # only the two statuses: nothing came back from either
    assert lines[0].startswith("nc ")
    assert lines[0] != "nc 0"
    assert lines[1].startswith("wget ")
    assert lines[1] != "wget 0"
    gate = Path(gate_directory(sid))
    pid = int((gate / "pid").read_text())
    assert Path(f"/proc/{pid}").exists()
    await env.extension.teardown(sid, host="host1")
    assert env.containers(sid) == []
    assert env.engine.cli("network", "inspect", network, check=False).returncode != 0
    assert (
        not Path(f"/proc/{pid}").exists()
        or sid.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    )
    tables = subprocess.run(["nft", "list", "tables"], check=True, capture_output=True, text=True)
    assert f"sbx_compose_{sid}" not in tables.stdout
    assert not (env.root / f"sbx-{sid}").exists()
    assert not gate.exists()


@pytest.mark.parametrize("compose_engine", ENGINES, indirect=True)
async def test_a_failed_create_under_an_allowlist_leaves_nothing(env: Env, tmp_path: Path) -> None:
    """compose up fails after the network and rules are made; the teardown the worker then
    runs removes them."""
    sid = env.own_id("composegate2")
    repo = make_repo(tmp_path / "repo", NETWORKED.replace("localhost/mini", "localhost/nope"))
    policy = parse_policy({"egress": ["pypi.org:443"]})
    request = with_policy(env, sid, repo, policy)
    with pytest.raises(RemoteCommandFailed):
        await env.extension.provision(request)
    network = f"sbx-{sid}-egress"
    assert env.engine.cli("network", "inspect", network, check=False).returncode == 0
    await env.extension.teardown(sid, host="host1")
    assert env.engine.cli("network", "inspect", network, check=False).returncode != 0
    tables = subprocess.run(["nft", "list", "tables"], check=True, capture_output=True, text=True)
    assert f"sbx_compose_{sid}" not in tables.stdout
    assert not Path(gate_directory(sid)).exists()
    assert not (env.root / f"sbx-{sid}").exists()


async def test_a_service_with_its_own_network_is_refused(env: Env, tmp_path: Path) -> None:
    sid = env.own_id("composeallow2")
    own = NETWORKED.replace(
        "    init: true\n  worker:", "    init: true\n    network_mode: host\n  worker:"
    )
    repo = make_repo(tmp_path / "repo", own)
    policy = parse_policy({"egress": ["pypi.org:443"]})
    with pytest.raises(InvalidInput, match=r"services web .* choose their own networks"):
        await env.extension.provision(with_policy(env, sid, repo, policy))
    assert not (env.root / f"sbx-{sid}").exists()


@pytest.mark.parametrize("compose_engine", ENGINES, indirect=True)
async def test_compose_s_own_merged_model_is_checked_before_anything_starts(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file check reads one file and compose merges more (extends, include, tags): with
    that check out of the way, compose's own model of the stack (config, the override
    included) still refuses a service with a network of its own, before any container."""
    sid = env.own_id("composeleak1")
    monkeypatch.setattr(compose_backend, "gate_bypasses", lambda compose, name: [])
    own = NETWORKED + "    networks: [outside]\nnetworks:\n  outside: {}\n"
    repo = make_repo(tmp_path / "repo", own)
    policy = parse_policy({"egress": ["pypi.org:443"]})
    with pytest.raises(InvalidInput, match="services worker would not be on the egress network"):
        await env.extension.provision(with_policy(env, sid, repo, policy))
    assert env.containers(sid) == []
    await env.extension.teardown(sid, host="host1")  # as the worker does
    network = f"sbx-{sid}-egress"
    assert env.engine.cli("network", "inspect", network, check=False).returncode != 0
    assert not (env.root / f"sbx-{sid}").exists()


def client_hello(server_name: str) -> bytes:
    """A TLS record holding a minimal ClientHello that names ``server_name`` (SNI)."""
    name = server_name.encode()
    entry = b"\x00" + len(name).to_bytes(2, "big") + name
    sni = len(entry).to_bytes(2, "big") + entry
    extension = b"\x00\x00" + len(sni).to_bytes(2, "big") + sni
    body = (
        b"\x03\x03"
        + bytes(32)
        + b"\x00"
        + b"\x00\x02\x13\x01"
        + b"\x01\x00"
        + len(extension).to_bytes(2, "big")
        + extension
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def _octal(data: bytes) -> str:
    """``data`` as a printf format of octal escapes (busybox printf has no \\x)."""
    return "".join(f"\\{byte:03o}" for byte in data)


def _gateway(env: Env, network: str) -> str:
    out = env.engine.cli("network", "inspect", network).stdout
    bridge = bridge_of(env.engine.name, out)
    assert bridge is not None
    return bridge.gateway


async def _exec(
    env: Env, sandbox_id: str, argv: list[str], service: str | None = None
) -> tuple[int, bytes]:
    out = bytearray()

    async def sink(stream: str, data: bytes) -> None:
        if stream == "stdout":
            out.extend(data)

    code = await env.extension.exec(sandbox_id, argv, sink, host="host1", service=service)
    return code, bytes(out)


def _proxies_of(project: str) -> list[int]:
    """The host's processes whose command line is the gate proxy of ``project``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if b"gate_proxy.py" in args and args[args.index(b"gate_proxy.py") + 1 :][:2] == [
                b"--name",
                project.encode(),
            ]:
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("compose_engine", ENGINES[:1], indirect=True)
async def test_teardown_stops_a_proxy_whose_pid_file_was_never_written(
    env: Env, tmp_path: Path
) -> None:
    """The start script backgrounds the proxy, then writes its pid: a session cut off in
    between (the worker killed, the connection lost) leaves a proxy and no pid file.
    Teardown finds it by its command line all the same, and leaves alone a proxy of another
    sandbox whose name starts with this one's."""
    sid = env.own_id("composegate3")
    repo = make_repo(tmp_path / "repo", NETWORKED)
    policy = parse_policy({"egress": ["pypi.org:443"]})
    request = with_policy(env, sid, repo, policy)
    lookalike = ["gate_proxy.py", "--name", f"sbx-{sid}x", "--config", "config.json"]
    neighbour = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *lookalike])
    try:
        await env.extension.provision(request)
        proxies = _proxies_of(f"sbx-{sid}")
        assert len(proxies) == 1, proxies
        (Path(gate_directory(sid)) / "pid").unlink()  # as if never written
        await env.extension.teardown(sid, host="host1")
        assert _proxies_of(f"sbx-{sid}") == []
        assert neighbour.poll() is None  # another sandbox's proxy is not touched
        assert not Path(gate_directory(sid)).exists()
    finally:
        for pid in _proxies_of(f"sbx-{sid}"):  # no leak from the test on the old code
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        neighbour.kill()
        neighbour.wait(10)
