"""Making and removing a compose sandbox's egress gate on its host (see :mod:`.egress_plan`).

The gate is three things on the host, all named from the sandbox id so that
teardown finds them again after any crash: the engine network
``sbx-<id>-egress`` (``--internal``, labelled with the compose project), the
nftables table ``sbx_compose_<id>``, and the proxy process, whose script,
config, log and pid are in ``/run/sandboxer-compose/sbx-<id>/`` and whose
command line names ``sbx-<id>``: teardown finds it by that in ``/proc``, not by its
pid file, which a session cut off right after the start never wrote (checked again
before the KILL, so a reused pid is never hit). That directory is root's, outside the sandbox's directory:
a service that mounts its repo could otherwise plant a symlink where root
writes the proxy's log. Each step first removes what an earlier attempt left,
so a redelivered create starts clean.

Failures are :class:`~sandboxer.errors.RemoteCommandFailed` with the tool's
own last lines (nothing here holds a secret).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sandboxer.config.network_policy import NetworkPolicy
from sandboxer.errors import RemoteCommandFailed
from sandboxer.extensions.compose_ssh import containers, gate_proxy
from sandboxer.extensions.compose_ssh.egress_plan import (
    Bridge,
    bridge_of,
    egress_support,
    network_name,
    nft_ruleset,
    nft_table,
    proxy_config,
)
from sandboxer.extensions.local import egress_proxy
from sandboxer.extensions.ssh_targets import SHORT_TIMEOUT, Target
from sandboxer.ssh import Connection, remote

__all__ = [
    "GATE_ROOT",
    "HOSTS_FILE",
    "close",
    "gate_directory",
    "host_support",
    "prepare",
    "start_proxy",
]

EXTENSION = "ext.compose-ssh"
PROXY_FILES = {
    "egress_proxy.py": Path(egress_proxy.__file__).read_bytes(),
    "gate_proxy.py": Path(gate_proxy.__file__).read_bytes(),
}
"""Shipped to the host as they are; its ``python3 -I`` runs gate_proxy.py, which loads
egress_proxy.py from beside it."""
GATE_ROOT = "/run/sandboxer-compose"
"""Where the proxies' files live on a host (a tmpfs: a reboot ends the proxies too)."""
CONFIG_FILE = "config.json"
HOSTS_FILE = "egress-hosts"
"""In the host's workspace root: ``/etc/hosts`` lines the proxies consult before DNS."""
GATE_TIMEOUT = 60.0

# Makes the gate's directory $5 afresh (root's alone), creates the internal
# network $2 labelled $3 with engine $1 (removing a leftover first), prints its
# inspect JSON, then "hosts" if the hosts file $4 exists.
_NETWORK_SCRIPT = r"""
engine=$1 net=$2 label=$3 hosts=$4 gate=$5
rm -rf "$gate" && mkdir -p -m 700 "$gate" || exit $?
"$engine" network rm "$net" >/dev/null 2>&1
"$engine" network create --internal --label "$label" "$net" >/dev/null || exit $?
"$engine" network inspect "$net" || exit $?
if [ -f "$hosts" ]; then echo hosts; fi
"""

# Loads the nft ruleset $2 as table $1, replacing a leftover. It matches the
# bridge by name, so it holds before the bridge exists.
_RULES_SCRIPT = r"""
table=$1 ruleset=$2
nft delete table inet "$table" 2>/dev/null
printf '%s' "$ruleset" | nft -f -
"""

# Defines stop_proxies NAME: stops every process of the host whose command line is
# the gate proxy named NAME, found by scanning /proc, not through the pid file: the
# start script writes that file only after it has started the proxy, and a session cut
# off in between (the worker killed, the connection lost) left a proxy no pid file
# names. The match is the whole " gate_proxy.py --name NAME --config " (quoted, so
# literal; a case, not a grep, whose own command line would hold it), so another
# sandbox's proxy, whose name may start with NAME, is never hit; the command line is
# checked again before the KILL, so a pid reused meanwhile is not either.
_STOP_PROXY = r"""
is_proxy() {
  args=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  case "$args" in *" gate_proxy.py --name $2 --config "*) return 0 ;; esac
  return 1
}
stop_proxies() {
  pids=""
  for f in $(grep -l -F -- "$1" /proc/[0-9]*/cmdline 2>/dev/null); do
    p=${f#/proc/}
    p=${p%/cmdline}
    if is_proxy "$p" "$1" && kill "$p" 2>/dev/null; then pids="$pids $p"; fi
  done
  for p in $pids; do
    i=0
    while [ "$i" -lt 20 ] && kill -0 "$p" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
    if is_proxy "$p" "$1"; then kill -KILL "$p" 2>/dev/null; fi
  done
}
"""

# Starts the proxy (python3 -I) named $2 in the gate's directory $1 in a session
# of its own (replacing a leftover one), and waits up to 30 s for it to say it
# listens (or to die, which ends the wait at once): 5 s, as it was, is little for a
# Python's start on a loaded host. The pid file is only for reading; teardown finds the
# proxy by its name.
_START_SCRIPT = (
    _STOP_PROXY
    + r"""
dir=$1 name=$2
cd "$dir" || exit 1
stop_proxies "$name"
rm -f ready
setsid python3 -I gate_proxy.py --name "$name" --config config.json \
  --ready-fd 3 3>ready >log 2>&1 </dev/null &
pid=$!
echo "$pid" >pid
i=0
while [ "$i" -lt 300 ]; do
  if grep -q ready ready 2>/dev/null; then exit 0; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
  i=$((i + 1))
done
kill "$pid" 2>/dev/null
tail -n 20 log >&2
exit 1
"""
)

# Stops the proxy named $2 (stop_proxies), removes the gate's directory $1, deletes
# nft table $3, removes network $5 of engine $4. Each part is absent-is-fine; exits 1
# naming what is left.
_CLOSE_SCRIPT = (
    _STOP_PROXY
    + r"""
dir=$1 name=$2 table=$3 engine=$4 net=$5
stop_proxies "$name"
rm -rf "$dir"
left=""
if command -v nft >/dev/null 2>&1; then
  nft delete table inet "$table" 2>/dev/null
  if nft list table inet "$table" >/dev/null 2>&1; then left="$left nft table $table;"; fi
fi
if command -v "$engine" >/dev/null 2>&1; then
  "$engine" network rm "$net" >/dev/null 2>&1
  if "$engine" network inspect "$net" >/dev/null 2>&1; then left="$left network $net;"; fi
fi
if [ -n "$left" ]; then echo "left on the host:$left" >&2; exit 1; fi
exit 0
"""
)

# $1: the host's engine. podman's network backend matters: with CNI an internal
# network has no gateway address, so there is nowhere for the proxy to listen.
_HOST_TOOLS_SCRIPT = r"""
for tool in python3 nft setsid; do
  if command -v "$tool" >/dev/null 2>&1; then echo "$tool yes"; else echo "$tool no"; fi
done
python3 -c 'import sys; print("python3_version", "%d.%d" % sys.version_info[:2])' 2>/dev/null
if [ "$1" = podman ]; then
  echo "podman_network_backend $(podman info --format '{{.Host.NetworkBackend}}' 2>/dev/null)"
fi
"""


async def host_support(conn: Connection, item: Target) -> dict[str, Any]:
    """What ``inspect host`` reports about an egress allowlist here: the tools it needs,
    whether they are all there, and what is missing."""
    result = await remote.run(
        conn,
        ["sh", "-c", _HOST_TOOLS_SCRIPT, "sh", containers.engine(item.config)],
        env=item.config.env,
        timeout=SHORT_TIMEOUT,
        check=False,
    )
    return egress_support(result.stdout)


def gate_directory(sandbox_id: str) -> str:
    return f"{GATE_ROOT}/{containers.project_name(sandbox_id)}"


async def prepare(conn: Connection, item: Target, sandbox_id: str, policy: NetworkPolicy) -> Bridge:
    """Make the network and the host's rules, and put the proxy and its config in the
    gate's directory; the bridge's gateway is where the services find the proxy.

    The proxy starts after the stack (:func:`start_proxy`): podman makes the bridge, and
    so the gateway address the proxy listens on, only when a container joins it."""
    engine = containers.engine(item.config)
    project = containers.project_name(sandbox_id)
    net = network_name(project)
    hosts = f"{item.config.workspace_root.rstrip('/')}/{HOSTS_FILE}"
    made = await remote.run(
        conn,
        [
            "sh",
            "-c",
            _NETWORK_SCRIPT,
            "sh",
            engine,
            net,
            f"{containers.PROJECT_LABEL}={project}",
            hosts,
            gate_directory(sandbox_id),
        ],
        env=item.config.env,
        timeout=GATE_TIMEOUT,
        check=False,
    )
    if made.exit_status != 0:
        raise _failed(item, f"'{engine} network create --internal {net}'", made)
    inspect_json, _, flag = made.stdout.rpartition("]")
    bridge = bridge_of(engine, inspect_json + "]")
    if bridge is None:
        hint = " (podman's CNI network backend gives an internal network none)"
        raise _failed(
            item,
            f"reading the gateway of {net} from '{engine} network inspect'"
            + (hint if engine == "podman" else ""),
            made,
        )
    config = proxy_config(policy, bridge.gateway, hosts if flag.strip() == "hosts" else None)
    directory = gate_directory(sandbox_id)
    for file_name, source in PROXY_FILES.items():
        await remote.put_file(conn, f"{directory}/{file_name}", source, mode=0o600)
    await remote.put_file(
        conn, f"{directory}/{CONFIG_FILE}", json.dumps(config).encode(), mode=0o600
    )
    table = nft_table(sandbox_id)
    ruled = await remote.run(
        conn,
        ["sh", "-c", _RULES_SCRIPT, "sh", table, nft_ruleset(table, bridge)],
        env=item.config.env,
        timeout=GATE_TIMEOUT,
        check=False,
    )
    if ruled.exit_status != 0:
        raise _failed(item, f"loading the nftables table {table}", ruled)
    return bridge


async def start_proxy(conn: Connection, item: Target, sandbox_id: str) -> None:
    """Start the proxy :func:`prepare` put in place, once the stack runs."""
    project = containers.project_name(sandbox_id)
    started = await remote.run(
        conn,
        ["sh", "-c", _START_SCRIPT, "sh", gate_directory(sandbox_id), project],
        env=item.config.env,
        timeout=GATE_TIMEOUT,
        check=False,
    )
    if started.exit_status != 0:
        raise _failed(item, f"starting the egress proxy of {project}", started)


async def close(conn: Connection, item: Target, sandbox_id: str) -> None:
    """Stop the proxy, delete the rules, remove the network; nothing there is fine."""
    engine = containers.engine(item.config)
    project = containers.project_name(sandbox_id)
    result = await remote.run(
        conn,
        [
            "sh",
            "-c",
            _CLOSE_SCRIPT,
            "sh",
            gate_directory(sandbox_id),
            project,
            nft_table(sandbox_id),
            engine,
            network_name(project),
        ],
        env=item.config.env,
        timeout=SHORT_TIMEOUT,
        check=False,
    )
    if result.exit_status != 0:
        raise _failed(item, f"removing the egress gate of {project}", result)


def _failed(item: Target, what: str, result: remote.RemoteResult) -> RemoteCommandFailed:
    return RemoteCommandFailed(
        f"{what} on host {item.name} failed (exit status {result.exit_status}); the host "
        "needs python3, nft, setsid and root for an egress allowlist "
        "(docs/ext-compose-ssh.md#egress-allowlists)",
        exit_status=result.exit_status,
        output_tail="\n".join((result.stdout + result.stderr).splitlines()[-20:]),
        extension=EXTENSION,
    )
