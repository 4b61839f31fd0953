"""Building and removing one local sandbox's network: namespace, veth, nftables, proxy.

The boundary for this I/O kind: ``ip``, ``nft`` and ``/proc/sys`` failures
become :class:`~sandboxer.errors.ExtensionError` with the tool's own words.

Per sandbox that may reach anything (see :mod:`.egress_policy` for the rules):

* a network namespace ``sbx-<name>`` (``/run/netns``), in which bwrap runs
  the holder with the network shared instead of unshared;
* a veth pair: ``eth0`` inside, ``sbxh<slot>`` on the host (alias
  ``sbx-<name>``), a /30 of 169.254.0.0/16, the host's end as default route;
  IPv4 forwarding is enabled on that one interface only (packets entering
  from this sandbox), never host-wide;
* nftables: the table ``sandboxer`` inside the namespace, and ``sbx_<name>``
  in the host's, both loaded before the link is up;
* with name entries, a proxy process (:mod:`.egress_proxy`) on the host's end.

Everything is found again from ``name`` alone (``<sandbox id>-<root tag>``),
so :func:`teardown` cleans up after a crash that lost ``state.json`` as well.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sandboxer.cleanup_waits import communicate_within
from sandboxer.errors import ExtensionError
from sandboxer.extensions.local import egress_proxy
from sandboxer.extensions.local.egress_policy import (
    PROXY_PORT,
    SLOTS,
    LocalEgress,
    Network,
    host_ruleset,
    host_table_for,
    namespace_for,
    network_for,
    proxy_env,
    sandbox_ruleset,
)
from sandboxer.extensions.local.holder import HOST_ENV, launch_detached, tail
from sandboxer.extensions.local.host_slots import RUN_DIR, SlotFiles
from sandboxer.extensions.local.procs import ProcessRef, kill, stat_of

__all__ = [
    "NETNS_DIR",
    "SLOTS_DIR",
    "EgressState",
    "leftover_namespaces",
    "link_slots",
    "namespace_path",
    "setup",
    "teardown",
]

NETNS_DIR = Path("/run/netns")
SLOTS_DIR = RUN_DIR / "egress-slots"
"""Link slots, host-wide: ``<n>`` holds the name of the sandbox whose link is block n."""
TOOL_TIMEOUT = 10.0
PROXY_SCRIPT = Path(egress_proxy.__file__)


@dataclass(frozen=True, kw_only=True)
class EgressState:
    """What ``state.json`` records about a sandbox's network (``State.egress``)."""

    namespace: str
    slot: int
    host_interface: str
    gateway: str
    address: str
    proxy_pid: int | None = None
    proxy_start_time: int | None = None
    env: dict[str, str] | None = None
    """Variables every command in the sandbox gets (the proxy's address)."""
    allow_all: bool = False
    """The policy is ``default: allow``: everything but this host is reachable."""

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> EgressState | None:
        if not raw:
            return None
        try:
            return cls(**raw)
        except TypeError:
            return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def proxy(self) -> ProcessRef | None:
        if self.proxy_pid is None or self.proxy_start_time is None:
            return None
        return ProcessRef(self.proxy_pid, self.proxy_start_time)


def namespace_path(namespace: str) -> Path:
    return NETNS_DIR / namespace


def link_slots(directory: Path = SLOTS_DIR) -> SlotFiles:
    """The link blocks of 169.254.0.0/16 (:data:`.egress_policy.SLOTS`), taken in ``directory``."""
    return SlotFiles(directory, SLOTS, "an egress slot", "sandboxes with network access")


async def setup(
    *,
    name: str,
    sandbox_id: str,
    egress: LocalEgress,
    sandbox_dir: Path,
    hosts_file: Path | None = None,
    slots_dir: Path = SLOTS_DIR,
) -> EgressState:
    """Build the sandbox's network; on any failure, remove whatever was built, then raise."""
    egress.check()
    slot = link_slots(slots_dir).allocate(name)
    net = network_for(name, slot)
    proxy = bool(egress.domains)
    try:
        await _nft(host_ruleset(net, proxy=proxy), sandbox_id=sandbox_id)
        await _tool(["ip", "netns", "add", net.namespace], sandbox_id=sandbox_id)
        await _tool(
            ["ip", "link", "add", net.host_interface, "type", "veth",
             "peer", "name", "eth0", "netns", net.namespace],
            sandbox_id=sandbox_id,
        )  # fmt: skip
        await _nft(sandbox_ruleset(egress, net, proxy=proxy), sandbox_id=sandbox_id, netns=net)
        await _ip_batch(
            [
                f"link set dev {net.host_interface} alias {net.namespace}",
                f"address add {net.gateway}/{net.prefix} dev {net.host_interface}",
                f"link set dev {net.host_interface} up",
            ],
            sandbox_id=sandbox_id,
        )
        _forward_from(net.host_interface, sandbox_id)
        await _ip_batch(
            [
                "link set dev lo up",
                f"address add {net.address}/{net.prefix} dev eth0",
                "link set dev eth0 up",
                f"route add default via {net.gateway}",
            ],
            sandbox_id=sandbox_id,
            netns=net.namespace,
        )
        state = EgressState(
            namespace=net.namespace,
            slot=slot,
            host_interface=net.host_interface,
            gateway=str(net.gateway),
            address=str(net.address),
            allow_all=egress.allow_all,
        )
        if not proxy:
            return state
        ref = await _start_proxy(name, net, egress, sandbox_dir, hosts_file, sandbox_id)
        return dataclasses.replace(
            state, proxy_pid=ref.pid, proxy_start_time=ref.start_time, env=proxy_env(net)
        )
    except BaseException:
        await teardown(name, slots_dir=slots_dir)
        raise


async def teardown(
    name: str, recorded: EgressState | None = None, *, slots_dir: Path = SLOTS_DIR
) -> None:
    """Remove everything :func:`setup` may have made for ``name``; quiet when nothing is left."""
    namespace = namespace_for(name)
    link = link_slots(slots_dir)
    slots = link.owned_by(name)
    if not (slots or recorded or namespace_path(namespace).exists()):
        # setup takes a slot first and frees it last, and starts a proxy only in between:
        # nothing was ever built. (Checked before the scan of /proc for proxies, which costs
        # a read per process of the machine: with a thousand sandboxes, most of a teardown.)
        return
    refs = _proxies_named(name)
    if recorded is not None and recorded.proxy is not None:
        refs.append(recorded.proxy)
    for ref in refs:
        kill(ref)
    deadline = time.monotonic() + 5.0
    while any(ref.alive() for ref in refs):
        if time.monotonic() > deadline:
            raise ExtensionError(
                f"egress proxy processes {[ref.pid for ref in refs if ref.alive()]} of "
                f"sbx-{name} survived SIGKILL for 5s",
                extension="ext.local",
            )
        await asyncio.sleep(0.01)
    for slot in slots:
        interface = network_for(name, slot).host_interface
        if _alias(interface) == namespace:  # ours: a slot reused by another sandbox is left alone
            await _tool(["ip", "link", "delete", interface], missing_ok=True)
    await _tool(["nft", "delete", "table", "inet", host_table_for(name)], missing_ok=True)
    if namespace_path(namespace).exists():
        await _tool(["ip", "netns", "delete", namespace], missing_ok=True)
    for slot in link.owned_by(name):
        link.release(name, slot)


def leftover_namespaces(tag: str) -> list[str]:
    """Namespaces of local sandboxes made under the root whose tag is ``tag``."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(
        entry.name
        for entry in NETNS_DIR.iterdir()
        if entry.name.startswith("sbx-") and entry.name.endswith(f"-{tag}")
    )


# -- helpers -------------------------------------------------------------------------------


async def _tool(
    argv: list[str],
    *,
    sandbox_id: str | None = None,
    stdin: bytes | None = None,
    missing_ok: bool = False,
) -> None:
    """Run ``argv`` (ip, nft); a failure raises ExtensionError with its stderr."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=HOST_ENV,
        )
    except FileNotFoundError:
        package = {"nft": "nftables", "nsenter": "util-linux"}.get(argv[0], "iproute2")
        raise ExtensionError(
            f"{argv[0]} is not installed; sandboxes with network access need it "
            f"(apt install {package})",
            sandbox_id=sandbox_id,
            extension="ext.local",
        ) from None
    # Not asyncio.timeout: a teardown runs this while its provision is being cancelled.
    answered = await communicate_within(process, TOOL_TIMEOUT, stdin)
    if answered is None:
        raise ExtensionError(
            f"{' '.join(argv[:4])} did not finish in {TOOL_TIMEOUT:.0f}s",
            sandbox_id=sandbox_id,
            extension="ext.local",
        ) from None
    if process.returncode == 0:
        return
    text = answered[1].decode(errors="replace").strip()
    if missing_ok and (
        "No such file" in text or "Cannot find device" in text or "not found" in text
    ):
        return
    raise ExtensionError(
        f"{' '.join(argv[:4])} failed (exit {process.returncode}): {text[-2000:]}",
        sandbox_id=sandbox_id,
        extension="ext.local",
    )


async def _nft(ruleset: str, *, sandbox_id: str, netns: Network | None = None) -> None:
    argv = ["nft", "-f", "-"]
    if netns is not None:
        argv = ["nsenter", f"--net={namespace_path(netns.namespace)}", "--", *argv]
    await _tool(argv, sandbox_id=sandbox_id, stdin=ruleset.encode())


async def _ip_batch(commands: list[str], *, sandbox_id: str, netns: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    await _tool(argv, sandbox_id=sandbox_id, stdin=("\n".join(commands) + "\n").encode())


def _forward_from(interface: str, sandbox_id: str) -> None:
    """Route packets that enter from this sandbox's link (IPv4 checks the incoming interface)."""
    try:
        Path(f"/proc/sys/net/ipv4/conf/{interface}/forwarding").write_text("1\n")
    except OSError as exc:
        raise ExtensionError(
            f"cannot enable forwarding on {interface}: {exc}",
            sandbox_id=sandbox_id,
            extension="ext.local",
        ) from exc


def _alias(interface: str) -> str | None:
    try:
        return Path(f"/sys/class/net/{interface}/ifalias").read_text().strip()
    except OSError:
        return None


async def _start_proxy(
    name: str,
    net: Network,
    egress: LocalEgress,
    sandbox_dir: Path,
    hosts_file: Path | None,
    sandbox_id: str,
) -> ProcessRef:
    """Start the proxy detached (like the holder: it outlives a worker restart); wait until it listens."""
    config = sandbox_dir / "egress-proxy.json"
    config.write_text(
        json.dumps(
            {
                "listen": str(net.gateway),
                "port": PROXY_PORT,
                "hosts_file": str(hosts_file) if hosts_file else None,
                "domains": [
                    {"pattern": rule.pattern, "ports": [list(pair) for pair in rule.ports]}
                    for rule in egress.domains
                ],
            }
        )
    )
    log_file = sandbox_dir / "egress-proxy.log"
    ready_read, ready_write = os.pipe()
    argv = [
        sys.executable, "-I", str(PROXY_SCRIPT),
        "--name", f"sbx-{name}", "--config", str(config), "--ready-fd", str(ready_write),
    ]  # fmt: skip
    _, out, said = await launch_detached(argv, ready_read, ready_write, [], log_file, TOOL_TIMEOUT)
    ref = ProcessRef.of(int(out.strip() or b"0"))
    if said != b"ready\n" or ref is None:
        raise ExtensionError(
            f"the egress proxy did not start. Last lines of {log_file}:\n"
            f"{tail(log_file) or '(empty)'}",
            sandbox_id=sandbox_id,
            extension="ext.local",
        )
    return ref


def _proxies_named(name: str) -> list[ProcessRef]:
    """Running proxies of ``sbx-<name>``, found by their command line (state.json may be gone)."""
    wanted = ["--name", f"sbx-{name}"]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [arg.decode(errors="replace") for arg in args]
        if not any(word.endswith(f"/{PROXY_SCRIPT.name}") for word in words):
            continue  # (any install's copy: the worker may have been upgraded since)
        at = words.index("--name") if "--name" in words else -1
        if at >= 0 and words[at : at + 2] == wanted:
            stat = stat_of(int(entry))
            if stat is not None:
                found.append(ProcessRef(int(entry), stat.start_time))
    return found
