"""Making and removing a compose sandbox's egress gate on its host (see :mod:`.egress_plan`).

The gate is three things on the host, all named from the sandbox id so that
teardown finds them again after any crash: the engine network
``sbx-<id>-egress`` (``--internal``, labelled with the compose project), the
nftables table ``sbx_compose_<id>``, and the proxy process, whose pid is in
``<dir>/.sandboxer.egress.pid`` and whose command line names ``sbx-<id>``
(checked before it is killed, so a reused pid is never hit). Each step first
removes what an earlier attempt left, so a redelivered create starts clean.

Failures are :class:`~sandboxer.errors.RemoteCommandFailed` with the tool's
own last lines (nothing here holds a secret).
"""

from __future__ import annotations

import json
from pathlib import Path

from sandboxer.config.network_policy import NetworkPolicy
from sandboxer.errors import RemoteCommandFailed
from sandboxer.extensions.compose_ssh import containers
from sandboxer.extensions.compose_ssh.egress_plan import (
    Bridge,
    bridge_of,
    network_name,
    nft_ruleset,
    nft_table,
    proxy_config,
)
from sandboxer.extensions.local import egress_proxy
from sandboxer.extensions.ssh_targets import SHORT_TIMEOUT, Target
from sandboxer.ssh import Connection, remote

__all__ = ["HOSTS_FILE", "HOST_TOOLS_SCRIPT", "close", "prepare", "start_proxy"]

EXTENSION = "ext.compose-ssh"
PROXY_SOURCE = Path(egress_proxy.__file__).read_bytes()
"""The proxy as it is, shipped to the host and run by its ``python3 -I``."""
SCRIPT_FILE = ".sandboxer.egress-proxy.py"
CONFIG_FILE = ".sandboxer.egress.json"
PID_FILE = ".sandboxer.egress.pid"
LOG_FILE = ".sandboxer.egress.log"
READY_FILE = ".sandboxer.egress.ready"
HOSTS_FILE = "egress-hosts"
"""In the host's workspace root: ``/etc/hosts`` lines the proxies consult before DNS."""
GATE_TIMEOUT = 60.0

# Creates the internal network $2 labelled $3 with engine $1 (removing a leftover
# first), prints its inspect JSON, then "hosts" if the hosts file $4 exists.
_NETWORK_SCRIPT = r"""
engine=$1 net=$2 label=$3 hosts=$4
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

# Starts the proxy (python3 -I) named $2 in directory $1 in a session of its own
# (replacing a leftover one), and waits up to 5 s for it to say it listens.
_START_SCRIPT = r"""
dir=$1 name=$2
cd "$dir" || exit 1
old=$(cat .sandboxer.egress.pid 2>/dev/null)
case "$old" in
  ''|*[!0-9]*) ;;
  *) tr '\0' ' ' <"/proc/$old/cmdline" 2>/dev/null | grep -q -- "--name $name " && kill "$old" ;;
esac
rm -f .sandboxer.egress.ready
setsid python3 -I .sandboxer.egress-proxy.py --name "$name" --config .sandboxer.egress.json \
  --ready-fd 3 3>.sandboxer.egress.ready >.sandboxer.egress.log 2>&1 </dev/null &
pid=$!
echo "$pid" >.sandboxer.egress.pid
i=0
while [ "$i" -lt 50 ]; do
  if grep -q ready .sandboxer.egress.ready 2>/dev/null; then exit 0; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
  i=$((i + 1))
done
kill "$pid" 2>/dev/null
tail -n 20 .sandboxer.egress.log >&2
exit 1
"""

# Stops the proxy whose pid is in $1/.sandboxer.egress.pid if its command line
# names $2, deletes nft table $3, removes network $5 of engine $4. Each part is
# absent-is-fine; exits 1 naming what is left.
_CLOSE_SCRIPT = r"""
dir=$1 name=$2 table=$3 engine=$4 net=$5
pid=$(cat "$dir/.sandboxer.egress.pid" 2>/dev/null)
case "$pid" in
  ''|*[!0-9]*) ;;
  *)
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--name $name "; then
      kill "$pid" 2>/dev/null
      i=0
      while [ "$i" -lt 20 ] && kill -0 "$pid" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
      kill -KILL "$pid" 2>/dev/null
    fi
    ;;
esac
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

HOST_TOOLS_SCRIPT = r"""
for tool in python3 nft setsid; do
  if command -v "$tool" >/dev/null 2>&1; then echo "$tool yes"; else echo "$tool no"; fi
done
python3 -c 'import sys; print("python3_version", "%d.%d" % sys.version_info[:2])' 2>/dev/null
"""
"""What ``inspect host`` reports about the tools an egress allowlist needs."""


async def prepare(
    conn: Connection, item: Target, sandbox_id: str, directory: str, policy: NetworkPolicy
) -> Bridge:
    """Make the network and the host's rules, and put the proxy and its config in the
    sandbox's directory; the bridge's gateway is where the services find the proxy.

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
        raise _failed(item, f"reading the gateway of {net} from '{engine} network inspect'", made)
    config = proxy_config(policy, bridge.gateway, hosts if flag.strip() == "hosts" else None)
    await remote.put_file(conn, f"{directory}/{SCRIPT_FILE}", PROXY_SOURCE, mode=0o600)
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


async def start_proxy(conn: Connection, item: Target, sandbox_id: str, directory: str) -> None:
    """Start the proxy :func:`prepare` put in place, once the stack runs."""
    project = containers.project_name(sandbox_id)
    started = await remote.run(
        conn,
        ["sh", "-c", _START_SCRIPT, "sh", directory, project],
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
            item.workspace(sandbox_id),
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
