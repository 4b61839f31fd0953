"""ext.local egress enforcement for real: namespaces, veth, nftables and the name proxy.

Every target is inside a network namespace this test makes (``sxt-<hex>``,
addresses from 198.18.0.0/15, the benchmarking range) or on loopback: nothing
else is ever contacted. The target namespace is linked to the host by its own
veth, so the host (and the proxy running there) reaches it directly, and a
sandbox allowed to reach it is routed there through the host.

Names resolve through a hosts file given to the backend (there is no DNS here).
Clients inside sandboxes are curl and the system python3, run as the sandbox's
user; "root inside" is uid 0 entered with the capabilities bwrap drops dropped.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sandboxer.config.profile import Profile
from sandboxer.errors import ExtensionError
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.local import LocalExtension
from sandboxer.extensions.local.egress_policy import (
    DENY,
    AddressRule,
    DomainRule,
    LocalEgress,
    host_table_for,
    namespace_for,
)
from sandboxer.extensions.local.egress_proxy import Proxy, load_allowlist
from sandboxer.extensions.local.procs import ProcessRef, children_of
from sandboxer.extensions.local.steps import compile_policy
from tests.conftest import require_tool

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
NAMES = ("pkg.allowed.test", "other.test", "a.files.test")


@pytest.fixture(autouse=True)
def _tools() -> None:
    for name, package in (
        ("bwrap", "bubblewrap"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("curl", "curl"),
    ):
        require_tool(name, package)
    if os.geteuid() != 0:
        pytest.fail("egress enforcement needs root (network namespaces, nftables)", pytrace=False)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@dataclass(frozen=True)
class Target:
    namespace: str
    interface: str
    address: str
    """Where the target's servers answer."""
    other_address: str
    """A second address of the same target: never allowed by these tests."""
    ca_dir: Path
    """A directory holding ``ca.pem`` (the servers' certificate), copied into sandboxes."""
    hosts_file: Path
    sni_log: Path


def _certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egress target")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in NAMES]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "ca.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """A namespace of our own with HTTP and HTTPS servers, linked to the host by a veth."""
    tag = uuid.uuid4().hex[:6]
    namespace, interface = f"sxt-{tag}", f"sxt{tag}"
    block = ipaddress.ip_network("198.18.0.0/15")
    subnet = ipaddress.ip_network(
        (int(block.network_address) + 8 * random.randrange(block.num_addresses // 8), 29)
    )
    host_end, address, other = (str(subnet.network_address + n) for n in (1, 2, 3))
    work = tmp_path_factory.mktemp("egress-target")
    ca_dir = work / "ca"
    ca_dir.mkdir()
    cert, key = _certificate(ca_dir)
    key.rename(work / "key.pem")
    hosts_file = work / "hosts"
    hosts_file.write_text("".join(f"{address} {name}\n" for name in NAMES))
    sni_log = work / "sni.log"
    sni_log.touch()
    server: subprocess.Popen[str] | None = None
    try:
        sh("ip", "netns", "add", namespace)
        sh("ip", "link", "add", interface, "type", "veth", "peer", "name", "eth0",
           "netns", namespace)  # fmt: skip
        sh("ip", "address", "add", f"{host_end}/29", "dev", interface)
        sh("ip", "link", "set", interface, "up")
        # Replies to a sandbox enter the host here: route them (this interface only).
        Path(f"/proc/sys/net/ipv4/conf/{interface}/forwarding").write_text("1\n")
        for command in (
            ["link", "set", "lo", "up"],
            ["address", "add", f"{address}/29", "dev", "eth0"],
            ["address", "add", f"{other}/29", "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["route", "add", "default", "via", host_end],
        ):
            sh("ip", "-n", namespace, *command)
        server = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, str(HERE / "egress_target.py"),
             "--cert", str(cert), "--key", str(work / "key.pem"), "--sni-log", str(sni_log)],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert server.stdout is not None
        assert server.stdout.readline() == "ready\n"
        yield Target(namespace, interface, address, other, ca_dir, hosts_file, sni_log)
    finally:
        if server is not None:
            server.kill()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()
        sh("ip", "link", "delete", interface, check=False)
        sh("ip", "netns", "delete", namespace, check=False)


def profile() -> Profile:
    return Profile.model_validate({"id": "profile.test", "extension": "ext.local"})


def new_id() -> str:
    return "e" + uuid.uuid4().hex[:15]


class Egress:
    """What the backend's ``egress_for`` answers: set per sandbox by the test."""

    def __init__(self) -> None:
        self.by_id: dict[str, LocalEgress] = {}

    def __call__(self, request: ProvisionRequest) -> LocalEgress:
        return self.by_id.get(request.sandbox_id, DENY)


@pytest.fixture
def policies() -> Egress:
    return Egress()


@pytest.fixture
async def ext(tmp_path: Path, target: Target, policies: Egress) -> AsyncIterator[LocalExtension]:
    root = tmp_path / "local"
    extension = LocalExtension(root, egress_for=policies, egress_hosts_file=target.hosts_file)
    yield extension
    for found in await extension.list_sandboxes():
        await extension.teardown(found.sandbox_id)


async def create(
    ext: LocalExtension, policies: Egress, target: Target, egress: LocalEgress
) -> tuple[str, dict[str, Any]]:
    sandbox_id = new_id()
    policies.by_id[sandbox_id] = egress
    req = ProvisionRequest(
        sandbox_id=sandbox_id, profile=profile(), inputs={"repo": str(target.ca_dir)}
    )
    await ext.provision(req)
    ready = await ext.wait_ready(req)
    return sandbox_id, ready.descriptor


class Output:
    def __init__(self) -> None:
        self.data: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    async def __call__(self, stream: Literal["stdout", "stderr"], data: bytes) -> None:
        self.data[stream].extend(data)


async def run(ext: LocalExtension, sandbox_id: str, *argv: str) -> tuple[int, str, str]:
    output = Output()
    code = await ext.exec(sandbox_id, list(argv), output)
    return code, output.data["stdout"].decode(), output.data["stderr"].decode()


CURL_CONNECT_REFUSED = 7
CURL_PROXY_REFUSED = 56  # CONNECT answered with an error status


async def curl(ext: LocalExtension, sandbox_id: str, url: str, *options: str) -> tuple[int, str]:
    """curl's exit code and output; ``--connect-timeout`` only bounds a broken test."""
    code, out, err = await run(
        ext, sandbox_id, "curl", "-sS", "--connect-timeout", "5", "--max-time", "10",
        "--cacert", "/workspace/ca.pem", *options, url,
    )  # fmt: skip
    return code, out + err


def leftovers(ext: LocalExtension, sandbox_id: str) -> dict[str, Any]:
    """What the sandbox's network could leave on the host, found by its name."""
    name = f"{sandbox_id}-{ext._root_tag}"
    tables = sh("nft", "list", "tables").stdout
    links = sh("ip", "-o", "link", "show").stdout
    proxies = sh("pgrep", "-f", "--", f"--name sbx-{name}", check=False).stdout.split()
    return {
        "netns": namespace_for(name) in sh("ip", "netns", "list").stdout,
        "table": host_table_for(name) in tables,
        "links": [line for line in links.splitlines() if f"sbx-{name}" in line],
        "proxies": proxies,
        "slots": [p.name for p in Path("/run/sandboxer/egress-slots").glob("*")
                  if p.read_text().strip() == name],
    }  # fmt: skip


NOTHING = {"netns": False, "table": False, "links": [], "proxies": [], "slots": []}


# -- the tests -----------------------------------------------------------------------------


async def test_deny_builds_no_network_and_nothing_connects(
    ext: LocalExtension, policies: Egress, target: Target
) -> None:
    sandbox_id, descriptor = await create(ext, policies, target, DENY)
    assert descriptor["network"] == "loopback only"
    assert leftovers(ext, sandbox_id) == NOTHING  # no namespace of ours, no veth, no proxy
    code, out, _ = await run(ext, sandbox_id, "cat", "/proc/net/dev")
    assert code == 0
    assert [line.split(":")[0].strip() for line in out.splitlines()[2:]] == ["lo"]
    for url in (f"http://{target.address}:8080/", "http://pkg.allowed.test/"):
        code, said = await curl(ext, sandbox_id, url)
        assert code != 0, said
        assert "hello" not in said


async def test_allowed_address_and_port_connect_and_others_are_refused_at_once(
    ext: LocalExtension, policies: Egress, target: Target
) -> None:
    allowed = AddressRule(ipaddress.ip_network(f"{target.address}/32"), ((8080, 8080),), "tcp")
    sandbox_id, descriptor = await create(ext, policies, target, LocalEgress(addresses=(allowed,)))
    assert descriptor["network"].startswith("egress allowlist")
    info = await ext.inspect_host()
    assert info["egress_namespaces"] == [namespace_for(f"{sandbox_id}-{ext._root_tag}")]
    code, said = await curl(ext, sandbox_id, f"http://{target.address}:8080/")
    assert (code, said) == (0, f"hello from {target.address}:8080:8080\n")
    gateway = json.loads((ext.root / sandbox_id / "state.json").read_text())["egress"]["gateway"]
    for refused in (
        f"http://{target.address}:8081/",  # another port
        f"http://{target.other_address}:8080/",  # another address
        f"http://{gateway}:22/",  # the host, through the sandbox's own link
        f"http://{gateway}:3128/",  # no proxy for a sandbox without name entries
    ):
        code, said = await curl(ext, sandbox_id, refused)
        # A reset, at once: exit 7 is "connection refused", a timeout would be 28.
        assert code == CURL_CONNECT_REFUSED, (refused, said)
    code, out, _ = await run(ext, sandbox_id, "python3", "-c", _UDP_PROBE, target.address)
    assert (code, out) == (0, "udp refused\n")

    # Root inside the sandbox changes nothing. The sandbox's own root is its init's idle
    # command: uid 0 without capabilities, unable to gain any (bwrap's --cap-drop ALL).
    state = json.loads((ext.root / sandbox_id / "state.json").read_text())
    (idle,) = children_of(state["holder_pid"])
    status = Path(f"/proc/{idle}/status").read_text()
    for line in ("Uid:\t0\t", "CapPrm:\t0000000000000000", "CapEff:\t0000000000000000",
                 "NoNewPrivs:\t1"):  # fmt: skip
        assert line in status
    # The same state entered from outside: uid 0, no capabilities, none to be won by exec.
    as_sandbox_root = [
        "nsenter", "-t", str(state["holder_pid"]), "-a", "--",
        "setpriv", "--securebits=+noroot,+noroot_locked", "--inh-caps=-all",
        "--ambient-caps=-all", "--no-new-privs", "--",
    ]  # fmt: skip
    assert sh(*as_sandbox_root, "id", "-u").stdout == "0\n"
    for attempt in (
        ["nft", "flush", "ruleset"],
        ["ip", "route", "replace", "default", "dev", "eth0"],
        ["ip", "link", "set", "eth0", "down"],
    ):
        result = sh(*as_sandbox_root, *attempt, check=False)
        assert result.returncode != 0, attempt
        assert "Operation not permitted" in result.stderr, result.stderr
    code, said = await curl(ext, sandbox_id, f"http://{target.address}:8081/")
    assert code == CURL_CONNECT_REFUSED, said
    ruleset = sh("ip", "netns", "exec", state["egress"]["namespace"], "nft", "list", "ruleset")
    assert "policy drop" in ruleset.stdout


_UDP_PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"x", (sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 53))
    print("udp sent")
except PermissionError:
    print("udp refused")
"""


async def test_allowed_names_pass_the_proxy_and_other_names_are_refused(
    ext: LocalExtension, policies: Egress, target: Target
) -> None:
    egress = LocalEgress(
        domains=(DomainRule("pkg.allowed.test"), DomainRule("*.files.test", ((443, 443),)))
    )
    sandbox_id, descriptor = await create(ext, policies, target, egress)
    assert "proxy" in descriptor["network"]
    code, out, _ = await run(ext, sandbox_id, "sh", "-c", "echo $HTTPS_PROXY")
    assert out.startswith("http://169.254.")

    # Allowed: plain HTTP (absolute URI), HTTPS through CONNECT, a wildcard name on its port.
    assert await curl(ext, sandbox_id, "http://pkg.allowed.test/") == (
        0,
        "hello from pkg.allowed.test:80\n",
    )
    assert await curl(ext, sandbox_id, "https://pkg.allowed.test/") == (
        0,
        "hello from pkg.allowed.test:443\n",
    )
    assert await curl(ext, sandbox_id, "https://a.files.test/") == (
        0,
        "hello from a.files.test:443\n",
    )
    # Refused: another name, a wildcard name on another port, the target's address itself.
    code, said = await curl(ext, sandbox_id, "http://other.test/")
    assert "not on this sandbox's allowlist" in said
    assert "hello" not in said
    code, said = await curl(ext, sandbox_id, "https://other.test/")
    assert code == CURL_PROXY_REFUSED, said
    code, said = await curl(ext, sandbox_id, "http://a.files.test/")
    assert "not on this sandbox's allowlist" in said
    code, said = await curl(ext, sandbox_id, f"https://{target.address}/", "--noproxy", "*")
    assert code == CURL_CONNECT_REFUSED, said
    # A Host header naming another host than the URL, and a TLS name other than CONNECT's.
    code, said = await curl(ext, sandbox_id, "http://pkg.allowed.test/", "-H", "Host: other.test")
    assert "names another host" in said
    sni_before = target.sni_log.read_text()
    code, out, err = await run(ext, sandbox_id, "python3", "-c", _SNI_MISMATCH)
    assert out == "tunnel closed\n", err
    assert "other.test" not in target.sni_log.read_text()[len(sni_before) :]


_SNI_MISMATCH = """
import os, socket, ssl
host, port = os.environ["HTTPS_PROXY"].removeprefix("http://").split(":")
s = socket.create_connection((host, int(port)), timeout=5)
s.sendall(b"CONNECT pkg.allowed.test:443 HTTP/1.1\\r\\nHost: pkg.allowed.test:443\\r\\n\\r\\n")
assert s.recv(1024).startswith(b"HTTP/1.1 200")
context = ssl.create_default_context(cafile="/workspace/ca.pem")
try:
    context.wrap_socket(s, server_hostname="other.test")
    print("handshake completed")
except (ssl.SSLError, OSError):
    print("tunnel closed")
"""


async def test_destroy_and_failed_creates_leave_nothing(
    ext: LocalExtension, policies: Egress, target: Target, tmp_path: Path
) -> None:
    egress = LocalEgress(
        addresses=(AddressRule(ipaddress.ip_network(f"{target.address}/32")),),
        domains=(DomainRule("pkg.allowed.test"),),
    )
    sandbox_id, _ = await create(ext, policies, target, egress)
    built = leftovers(ext, sandbox_id)
    assert built["netns"]
    assert built["table"]
    assert [len(built[key]) for key in ("links", "proxies", "slots")] == [1, 1, 1]
    # A redelivered create starts over: still one of everything.
    req = ProvisionRequest(sandbox_id=sandbox_id, profile=profile(), inputs={})
    await ext.provision(req)
    again = leftovers(ext, sandbox_id)
    assert [len(again[key]) for key in ("links", "proxies", "slots")] == [1, 1, 1]
    proxy = json.loads((ext.root / sandbox_id / "state.json").read_text())["egress"]
    ref = ProcessRef(proxy["proxy_pid"], proxy["proxy_start_time"])
    await ext.teardown(sandbox_id)
    assert leftovers(ext, sandbox_id) == NOTHING
    assert not ref.alive()

    # A worker killed mid-create, its state.json lost: a new backend finds all by name.
    sandbox_id, _ = await create(ext, policies, target, egress)
    (ext.root / sandbox_id / "state.json").unlink()
    await LocalExtension(ext.root).teardown(sandbox_id)
    assert leftovers(ext, sandbox_id) == NOTHING

    # A create that fails while building the network (the proxy cannot read its hosts
    # file) undoes what it built before it raises.
    broken = LocalExtension(
        ext.root, egress_for=policies, egress_hosts_file=tmp_path / "missing-hosts"
    )
    sandbox_id = new_id()
    policies.by_id[sandbox_id] = egress
    with pytest.raises(ExtensionError, match="egress proxy did not start"):
        await broken.provision(
            ProvisionRequest(sandbox_id=sandbox_id, profile=profile(), inputs={})
        )
    assert leftovers(ext, sandbox_id) == NOTHING
    await broken.teardown(sandbox_id)


async def test_concurrent_creates_get_distinct_links(
    ext: LocalExtension, policies: Egress, target: Target
) -> None:
    egress = LocalEgress(addresses=(AddressRule(ipaddress.ip_network(f"{target.address}/32")),))
    made = await asyncio.gather(*(create(ext, policies, target, egress) for _ in range(4)))
    states = [
        json.loads((ext.root / sandbox_id / "state.json").read_text())["egress"]
        for sandbox_id, _ in made
    ]
    assert len({state["slot"] for state in states}) == 4
    assert len({state["address"] for state in states}) == 4
    for sandbox_id, _ in made:
        assert await curl(ext, sandbox_id, f"http://{target.address}:8081/") == (
            0,
            f"hello from {target.address}:8081:8081\n",
        )


async def test_allow_all_reaches_other_hosts_but_never_this_one(
    ext: LocalExtension, policies: Egress, target: Target
) -> None:
    # A listener of the test's on every host address: the host end of the target's link
    # (198.18.x.1) reaches it, as would any service of this machine.
    listener = await asyncio.start_server(lambda _r, w: w.close(), "0.0.0.0", 0)
    port = listener.sockets[0].getsockname()[1]
    host_end = str(ipaddress.ip_address(target.address) - 1)
    try:
        sandbox_id, _ = await create(ext, policies, target, LocalEgress(allow_all=True))
        for url in (f"http://{target.address}:8081/", f"http://{target.other_address}:8080/"):
            code, said = await curl(ext, sandbox_id, url)
            assert code == 0, said
            assert said.startswith("hello from")
        code, said = await curl(ext, sandbox_id, f"http://{host_end}:{port}/")
        assert code == CURL_CONNECT_REFUSED, said
    finally:
        listener.close()
        await listener.wait_closed()


async def test_allow_all_never_reaches_a_port_this_host_forwards(
    ext: LocalExtension, policies: Egress, target: Target
) -> None:
    """A port this host publishes by DNAT (docker's ``-p``, a Kubernetes NodePort) is one of
    its services: a connection to the host's address there is forwarded, not delivered, so
    the host table's input chain never sees it. Here a table of the test's own forwards a
    port of the host's address to the target's 8080, as docker does for a container."""
    host_end = str(ipaddress.ip_address(target.address) - 1)
    port = random.randrange(20000, 30000)
    table = f"sxt_dnat_{uuid.uuid4().hex[:6]}"
    ruleset = (
        f"table ip {table} {{\n  chain prerouting {{\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        f"    ip daddr {host_end} tcp dport {port} dnat to {target.address}:8080\n  }}\n}}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=ruleset, text=True, check=True)
    try:
        sandbox_id, _ = await create(ext, policies, target, LocalEgress(allow_all=True))
        code, said = await curl(ext, sandbox_id, f"http://{target.other_address}:8080/")
        assert code == 0, said  # everything else is reached
        code, said = await curl(ext, sandbox_id, f"http://{host_end}:{port}/")
        assert code == CURL_CONNECT_REFUSED, said
        assert "hello" not in said
    finally:
        sh("nft", "delete", "table", "ip", table, check=False)


@pytest.mark.parametrize("allowed", ["listed", "allow_all", "not_listed"])
async def test_an_address_the_host_redirects_elsewhere_follows_the_sandboxs_rules(
    ext: LocalExtension, policies: Egress, target: Target, allowed: str
) -> None:
    """An address that is not the host's, which the host redirects elsewhere (a Kubernetes
    ClusterIP, which kube-proxy DNATs to a pod), is not the host: the sandbox reaches it when
    its rules allow that address, as any other. Here a table of the test's own redirects a
    service address to the target's 8080, as kube-proxy does."""
    service = str(ipaddress.ip_address("198.51.100.0") + random.randrange(1, 255))
    port = random.randrange(20000, 30000)
    table = f"sxt_vip_{uuid.uuid4().hex[:6]}"
    ruleset = (
        f"table ip {table} {{\n  chain prerouting {{\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        f"    ip daddr {service} tcp dport {port} dnat to {target.address}:8080\n  }}\n}}\n"
    )
    egress = {
        "listed": LocalEgress(addresses=(AddressRule(ipaddress.ip_network(f"{service}/32")),)),
        "allow_all": LocalEgress(allow_all=True),
        "not_listed": LocalEgress(),
    }[allowed]
    subprocess.run(["nft", "-f", "-"], input=ruleset, text=True, check=True)
    try:
        sandbox_id, _ = await create(ext, policies, target, egress)
        code, said = await curl(ext, sandbox_id, f"http://{service}:{port}/")
        if allowed == "not_listed":
            assert code != 0
            assert "hello" not in said
        else:
            assert code == 0, said
            assert "hello" in said
    finally:
        sh("nft", "delete", "table", "ip", table, check=False)


async def test_a_worker_killed_with_sigkill_leaves_nothing_a_restart_cannot_remove(
    tmp_path: Path, target: Target
) -> None:
    """The sandbox (holder and proxy) outlives its worker; the next worker adopts and removes it."""
    root = tmp_path / "local"
    script = f"""
import asyncio, ipaddress, sys
from pathlib import Path
from sandboxer.config.profile import Profile
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.local import LocalExtension
from sandboxer.extensions.local.egress_policy import AddressRule, DomainRule, LocalEgress

egress = LocalEgress(
    addresses=(AddressRule(ipaddress.ip_network("{target.address}/32")),),
    domains=(DomainRule("pkg.allowed.test"),),
)
async def main():
    ext = LocalExtension(Path({str(root)!r}), egress_for=lambda _r: egress,
                         egress_hosts_file=Path({str(target.hosts_file)!r}))
    profile = Profile.model_validate({{"id": "profile.test", "extension": "ext.local"}})
    await ext.provision(ProvisionRequest(sandbox_id="ekilled0001", profile=profile, inputs={{}}))
    print("provisioned", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline() == "provisioned\n"
        worker.kill()
        worker.wait()
    finally:
        if worker.stdout is not None:
            worker.stdout.close()
    restarted = LocalExtension(root)
    (found,) = await restarted.list_sandboxes()
    assert (found.sandbox_id, found.alive) == ("ekilled0001", True)
    assert await run(restarted, "ekilled0001", "sh", "-c", "curl -sS http://pkg.allowed.test/") == (
        0,
        "hello from pkg.allowed.test:80\n",
        "",
    )
    assert leftovers(restarted, "ekilled0001")["proxies"]
    await restarted.teardown("ekilled0001")
    assert leftovers(restarted, "ekilled0001") == NOTHING


async def test_the_proxy_refuses_hostile_input_and_names_that_point_into_the_host() -> None:
    """The proxy itself, on loopback: every answer is a refusal, and it keeps serving."""
    proxy = Proxy(
        load_allowlist([{"pattern": "inside.test", "ports": []}, {"pattern": "*.ok.test"}]),
        {"inside.test": ["127.0.0.1"], "a.ok.test": ["169.254.1.1"]},
    )
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0, limit=16 * 1024)
    port = server.sockets[0].getsockname()[1]

    async def ask(data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        if writer.can_write_eof():
            writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return answer

    try:
        for data, expected in (
            (
                b"CONNECT inside.test:4222 HTTP/1.1\r\n\r\n",
                b"resolves only to addresses of this host",
            ),
            (b"GET http://a.ok.test/ HTTP/1.1\r\n\r\n", b"resolves only to addresses of this host"),
            (b"CONNECT other.test:443 HTTP/1.1\r\n\r\n", b"not on this sandbox's allowlist"),
            (b"\x16\x03\x01\x02\x00\x01" + bytes(600) + b"\r\n\r\n", b"400 Bad Request"),
            (b"GET / HTTP/1.1\r\nHost: " + b"a" * 20000 + b"\r\n\r\n", b""),
            (b"", b""),
        ):
            answer = await ask(data)
            assert expected in answer, (data[:40], answer)
        assert b"not on this sandbox's allowlist" in await ask(
            b"GET http://b.test/ HTTP/1.1\r\n\r\n"
        )
    finally:
        server.close()
        await server.wait_closed()


async def test_a_profile_policy_compiled_by_compile_policy_is_enforced(
    tmp_path: Path, target: Target
) -> None:
    """What switching ext.local on will be: the profile's policy in force, compiled."""

    def from_profile(request: ProvisionRequest) -> LocalEgress:
        return compile_policy(request.profile.network.policy())

    ext = LocalExtension(
        tmp_path / "local", egress_for=from_profile, egress_hosts_file=target.hosts_file
    )
    prof = Profile.model_validate(
        {
            "id": "profile.test",
            "extension": "ext.local",
            "network": {
                "default": "deny",
                "egress": [
                    "pkg.allowed.test:80",
                    f"{target.address}:8080/tcp",
                    "dns.test:53/udp",  # not enforceable here: left out, and said so
                ],
            },
        }
    )
    sandbox_id = new_id()
    req = ProvisionRequest(sandbox_id=sandbox_id, profile=prof, inputs={})
    try:
        await ext.provision(req)
        ready = await ext.wait_ready(req)
        assert len(ready.warnings) == 2
        assert "dns.test:53/udp not provided" in ready.warnings[0]
        # pkg.allowed.test:80 asks for TCP and UDP: only its TCP half is carried, and said.
        assert ready.warnings[1].startswith("egress pkg.allowed.test:80: UDP not provided")
        code, out, _ = await run(ext, sandbox_id, "python3", "-c", _UDP_PROBE, target.address, "80")
        assert (code, out) == (0, "udp refused\n")
        assert await curl(ext, sandbox_id, "http://pkg.allowed.test/") == (
            0,
            "hello from pkg.allowed.test:80\n",
        )
        assert await curl(ext, sandbox_id, f"http://{target.address}:8080/", "--noproxy", "*") == (
            0,
            f"hello from {target.address}:8080:8080\n",
        )
        code, said = await curl(ext, sandbox_id, f"http://{target.address}:80/", "--noproxy", "*")
        assert code == CURL_CONNECT_REFUSED, said
        code, said = await curl(ext, sandbox_id, "https://pkg.allowed.test/")
        assert code == CURL_PROXY_REFUSED, said  # the name is allowed on port 80 only
    finally:
        await ext.teardown(sandbox_id)
    assert leftovers(ext, sandbox_id) == NOTHING
