"""``ext.compose-ssh``: a compose stack per sandbox on an SSH host from the hosts file.

A sandbox is a directory ``<workspace_root>/sbx-<id>/`` on its placement
host holding a copy of the ``repo`` input (a tar stream into the directory a
fresh create has just made, else rsync, or SFTP where rsync is missing), and
the compose project ``sbx-<id>`` started from a compose file
inside it with the host's ``compose_cmd`` (``docker compose``,
``docker-compose`` or ``podman-compose``). Secrets go to
``<workspace_root>/sbx-<id>.env`` (mode 0600, beside the directory: a service
may mount the directory) and into the environment of every
compose command by sourcing that file on the host, so they are never on a
command line, in a descriptor or in an error message. The marker
``<workspace_root>/sbx-<id>.json`` records the compose file for teardown, and the
provisioning that made the sandbox (``made_by``), so that an earlier attempt's teardown
leaves a later one's (:meth:`~..ssh_backend.SshBackend.teardown_attempt`).

Every command runs with the host's ``env`` (e.g. ``DOCKER_HOST``), built
from separately quoted arguments by :mod:`sandboxer.ssh.remote`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from sandboxer.config.settings import Settings
from sandboxer.domain.found import FoundSandbox
from sandboxer.domain.left_out import LeftOut
from sandboxer.errors import (
    InvalidInput,
    RemoteCommandFailed,
    SandboxerError,
)
from sandboxer.extensions import ssh_checks as checks
from sandboxer.extensions.base import OutputSink, ProvisionRequest, Readiness, Stdin
from sandboxer.extensions.compose_ssh import containers, egress, engine, listing, volumes
from sandboxer.extensions.compose_ssh.access import enter
from sandboxer.extensions.compose_ssh.compose_file import (
    ComposeFileError,
    check_compose_file,
    resolve_compose_file,
)
from sandboxer.extensions.compose_ssh.egress_plan import (
    EGRESS_OVERRIDE_FILE,
    allowlist_override,
    gate_bypasses,
    gate_leaks,
    tcp_only_entries,
    uncarried_entries,
)
from sandboxer.extensions.compose_ssh.pausing import set_paused
from sandboxer.extensions.compose_ssh.readiness import await_running, settled, up_and_look
from sandboxer.extensions.compose_ssh.service_exec import check_service, exec_in_service
from sandboxer.extensions.compose_ssh.stack import (
    NO_NETWORK_FILE,
    Plan,
    Stack,
    no_network_override,
)
from sandboxer.extensions.output_capture import redacted_tail
from sandboxer.extensions.ssh_access import ssh_access
from sandboxer.extensions.ssh_backend import SshBackend
from sandboxer.extensions.ssh_handover import Handover
from sandboxer.extensions.ssh_targets import (
    SHORT_TIMEOUT,
    Target,
    host_telemetry,
    session,
    target,
)
from sandboxer.extensions.ssh_workspace import Probe, claim, remove, scan
from sandboxer.ssh import Connection, remote, sync
from sandboxer.workspaces.limits import ArchiveLimits

__all__ = ["ComposeSshExtension"]

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
"""Seconds ``wait_ready`` waits for every container to be running."""
UP_TIMEOUT = 1800.0
"""``up -d`` may pull or build images."""


@dataclass(frozen=True)
class _Provisioned:
    """What a provision saw, handed to its wait_ready so it need not ask the host again."""

    services: list[str] | None
    """The compose file's services, when the policy made provision list them."""
    sightings: engine.Sightings | None
    """Readiness's two sightings, taken in the same command as ``up -d``."""
    access: dict[str, Any] | None
    """The ssh access shape, from the connection verified against the hosts file."""


class ComposeSshExtension(SshBackend):
    """Compose stacks on SSH hosts; hosts come from the hosts file, read at every call."""

    id = "ext.compose-ssh"
    snapshot_leaves_out = (*SshBackend.snapshot_leaves_out, NO_NETWORK_FILE, EGRESS_OVERRIDE_FILE)
    """The network overrides this backend writes into the directory name the old sandbox's
    project and egress gateway; a restore writes those of its own policy, if any."""

    def __init__(self, settings: Settings, *, ready_timeout: float = READY_TIMEOUT) -> None:
        super().__init__(settings)
        self.ready_timeout = ready_timeout
        self._provisioned: Handover[_Provisioned] = Handover()
        """What a provision saw, for its wait_ready (:mod:`..ssh_handover`)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ComposeSshExtension:
        return cls(settings)

    # -- the Extension protocol ------------------------------------------------------------

    async def provision(self, request: ProvisionRequest) -> None:
        plan = self._plan(request)  # every check before any connection
        stack, sandbox_id = plan.stack, request.sandbox_id
        values = list(request.secrets.values())
        self._provisioned.drop(sandbox_id)  # a retry starts over
        listed: list[str] | None = None
        sightings: engine.Sightings | None = None
        started = time.monotonic()
        try:
            async with session(stack.target) as conn:
                marker = {
                    "extension": self.id,
                    "compose_project": stack.project,
                    "compose_file": stack.compose_file,
                    "created_at": datetime.now(UTC).isoformat(),
                    **({"network": "none"} if stack.no_network else {}),
                    **({"network": "allowlist"} if stack.egress else {}),
                }
                # Nothing of the sandbox on the host (the usual create): one round trip
                # sweeps what a lost marker could have left, writes the marker and makes
                # the directory. Otherwise the long way: tear down what is there first.
                # Both record this provisioning in the marker, under the sandbox's lock on
                # the host, and the long way refuses to start clean over a later one's. The
                # rest of the make (the copy mirrors deletions, up, the files) holds that lock
                # and stops if the marker no longer records this provisioning (_making).
                fresh = await claim(
                    conn,
                    stack.target,
                    sandbox_id,
                    marker,
                    made_by=request.made_by,
                    first=engine.sweep_argv(stack.target, stack.project, thorough=True),
                )
                async with self._making(conn, stack.target, request, marker, claimed=fresh.claimed):
                    cleaned = time.monotonic()
                    method = await sync.sync_dir(
                        stack.target.name,
                        stack.target.config,
                        conn,
                        plan.repo,
                        stack.directory,
                        host_has_rsync=fresh.host_has_rsync if fresh.claimed else None,
                        empty=fresh.claimed,  # claim made the directory just now
                    )
                    synced = time.monotonic()
                    if request.secrets:
                        text = checks.env_file_text(request.secrets, sandbox_id)
                        await remote.put_file(conn, stack.env_path, text.encode(), mode=0o600)
                    if stack.no_network:  # deny: every service gets network_mode none
                        services = await self._services(conn, stack.without_override(), values)
                        listed = services
                        await remote.put_file(
                            conn, stack.no_network_path, no_network_override(services).encode()
                        )
                    if stack.egress:  # an allowlist: the internal network, rules and proxy
                        services = await self._services(conn, stack.without_override(), values)
                        listed = services
                        bridge = await egress.prepare(
                            conn,
                            stack.target,
                            sandbox_id,
                            request.profile.network.policy(),
                        )
                        await remote.put_file(
                            conn,
                            stack.egress_path,
                            allowlist_override(services, stack.project, bridge.gateway).encode(),
                        )
                        await self._check_merged(conn, stack, values)
                    if plan.volume_keys:  # a restored snapshot: fill the volumes before any start
                        await self._up(conn, stack, values, "--no-start")
                        await volumes.seed(
                            conn, stack.target, stack.project, stack.directory, plan.volume_keys
                        )
                        await volumes.remove_seed(conn, stack.target, stack.directory)
                    if stack.egress:  # after up: podman makes the bridge when a container joins
                        await self._up(conn, stack, values, "-d")
                        await egress.start_proxy(conn, stack.target, sandbox_id)
                    else:  # readiness's two sightings in the same remote command as `up -d`
                        sightings = await self._up(conn, stack, values, "-d", look=True)
                access = ssh_access(stack.target, conn, workdir=stack.directory, enter=enter(stack))
                self._provisioned.give(sandbox_id, _Provisioned(listed, sightings, access))
        except (SandboxerError, OSError) as exc:
            raise checks.scrubbed(exc, values, sandbox_id=sandbox_id, extension=self.id) from None
        log.info(
            "compose sandbox %s on %s: connected and cleaned in %.0f ms, synced by %s in "
            "%.0f ms, up in %.0f ms",
            sandbox_id,
            stack.target.name,
            (cleaned - started) * 1000,
            method,
            (synced - cleaned) * 1000,
            (time.monotonic() - synced) * 1000,
        )

    async def _up(
        self, conn: Connection, stack: Stack, values: list[str], flag: str, *, look: bool = False
    ) -> engine.Sightings | None:
        """``up FLAG``; with ``look``, readiness's two sightings right after, same command."""
        try:
            if look:
                return await up_and_look(conn, stack, stack.argv("up", flag), UP_TIMEOUT)
            await stack.run(conn, "up", flag, timeout=UP_TIMEOUT)
            return None
        except RemoteCommandFailed as exc:
            raise checks.with_output(
                exc,
                f"'{stack.target.config.compose_cmd} up {flag}' of "
                f"{stack.compose_file} on host {stack.target.name}",
                values,
                sandbox_id=stack.sandbox_id,
                extension=self.id,
                fix="fix the compose file or what it needs (images, build context, "
                "variables), then create the sandbox again",
            ) from None

    async def wait_ready(self, request: ProvisionRequest) -> Readiness:
        plan = self._plan(request)
        stack, sandbox_id = plan.stack, request.sandbox_id
        values = list(request.secrets.values())
        # What this worker's provision saw: with the services known and both sightings
        # settled, the stack is confirmed without another round trip.
        seen = self._provisioned.take(sandbox_id) or _Provisioned(None, None, None)
        running = settled(seen.sightings) if seen.sightings is not None else None
        try:
            if seen.services is not None and running is not None and seen.access is not None:
                services, reach = seen.services, seen.access
            else:
                async with session(stack.target) as conn:
                    waiting = await_running(conn, stack, self.ready_timeout, seen.sightings)
                    if seen.services is not None:
                        services, running = seen.services, await waiting
                    else:
                        services, running = await asyncio.gather(
                            self._services(conn, stack, values), waiting
                        )
                    reach = ssh_access(
                        stack.target, conn, workdir=stack.directory, enter=enter(stack)
                    )
            assert running is not None  # settled, or waited for
            found = containers.assess(running, services)
        except (SandboxerError, OSError) as exc:
            raise checks.scrubbed(exc, values, sandbox_id=sandbox_id, extension=self.id) from None
        warnings = []
        if found.missing:
            warnings.append(
                f"services {', '.join(found.missing)} of {stack.compose_file} have no container "
                "(compose did not start them, e.g. an inactive profile)"
            )
        profile = request.profile
        if profile.resources.model_dump(exclude_none=True):
            warnings.append(
                "resource limits of the profile not applied by ext.compose-ssh: set "
                "them per service in the compose file"
            )
        policy = profile.network.policy()
        uncarried = uncarried_entries(policy) if stack.egress else []
        if uncarried:
            warnings.append(
                f"network: the egress proxy relays TCP only: {', '.join(uncarried)} "
                "(UDP) cannot be reached"
            )
        tcp_only = tcp_only_entries(policy) if stack.egress else []
        if tcp_only:
            warnings.append(
                f"network: egress {', '.join(tcp_only)}: UDP not provided, TCP only: the "
                "egress proxy relays TCP; write such an entry with /tcp "
                f"({tcp_only[0]}/tcp) to ask for what is enforced"
            )
        if profile.setup.instructions:
            warnings.append(
                "setup.instructions are not run by ext.compose-ssh: put such steps "
                "in the compose file (a service's command or an init service)"
            )
        descriptor: dict[str, Any] = {
            "kind": "compose-ssh",
            **stack.target.describe(),
            "directory": stack.directory,
            "compose_project": stack.project,
            "compose_file": stack.compose_path,
            "compose_cmd": stack.target.config.compose_cmd,
            "services": found.services,
            "exec": f"sandboxer exec {sandbox_id} [--service NAME] -- CMD (runs in the "
            "service's container; the first service by default)",
            **reach,
        }
        if request.secrets:
            descriptor["secrets_file"] = stack.env_path
        return Readiness(descriptor=descriptor, warnings=warnings)

    async def inspect_host(self, host: str | None = None) -> dict[str, Any]:
        """Load, memory, disk and the sandboxer-owned workspaces, projects and containers."""
        item = target(
            self.settings, host, sandbox_id=None, extension=self.id, what="host to inspect"
        )
        async with session(item) as conn:
            report = await host_telemetry(conn, item)
            held = await scan(conn, item)
            report["engine"] = containers.engine(item.config)
            report["compose_cmd"] = item.config.compose_cmd
            report["workspaces"] = sorted(held.directories)
            report["sandboxes"] = held.owned_by(self.id)
            report["egress_allowlist"] = await egress.host_support(conn, item)
            try:
                owned = await engine.owned_containers(conn, item)
            except RemoteCommandFailed as exc:
                # The newest lines of the engine's answer, not its whole 8 KiB window: the
                # report is an event, and readers keep its first 500 characters.
                tail = redacted_tail(exc.output_tail, (), lines=5)
                report["engine_error"] = f"{exc.message}: {tail}"
                owned = []
        projects: dict[str, list[containers.Container]] = {}
        for container in owned:
            projects.setdefault(container.project, []).append(container)
        report["compose_projects"] = [
            {
                "project": project,
                "sandbox_id": containers.sandbox_of_project(project),
                "containers": len(items),
                "running": sum(1 for c in items if c.running),
            }
            for project, items in sorted(projects.items())
        ]
        report["containers"] = [c.summary() for c in owned]
        return report

    async def exec(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        output: OutputSink,
        *,
        host: str | None = None,
        service: str | None = None,
        stdin: Stdin | None = None,
    ) -> int:
        """Run ``argv`` inside a service's container (the first service by default)."""
        checks.check_sandbox_id(sandbox_id, self.id)
        checks.check_argv(argv, sandbox_id, self.id)
        check_service(service, sandbox_id)
        item = await self._exec_target(sandbox_id, host)
        async with session(item) as conn:
            return await exec_in_service(conn, item, sandbox_id, argv, output, service, stdin=stdin)

    async def snapshot_workspace(
        self, sandbox_id: str, destination: Path, *, host: str | None = None
    ) -> LeftOut:
        """The project's directory (secrets left out), then its named volumes under
        ``.sandboxer/volumes/<key>/`` (:mod:`.volumes`), copied as the containers run; what
        the copies left out, a volume's below its directory."""
        left_out = await super().snapshot_workspace(sandbox_id, destination, host=host)
        item = await self._exec_target(sandbox_id, host)
        limits = ArchiveLimits.from_mb(self.settings.upload_max_mb)
        async with session(item) as conn:
            copied = await volumes.copy_out(
                conn, item, containers.project_name(sandbox_id), destination, limits, left_out
            )
        if copied:
            log.info(
                "snapshot of compose sandbox %s: volumes %s copied", sandbox_id, ", ".join(copied)
            )
        return left_out

    async def pause(self, sandbox_id: str, *, host: str | None = None) -> None:
        """Freeze every container of the sandbox's project (``compose pause``)."""
        checks.check_sandbox_id(sandbox_id, self.id)
        item = await self._exec_target(sandbox_id, host)
        async with session(item) as conn:
            await set_paused(conn, item, sandbox_id, paused=True)

    async def resume(self, sandbox_id: str, *, host: str | None = None) -> None:
        """Thaw them (``compose unpause``)."""
        checks.check_sandbox_id(sandbox_id, self.id)
        item = await self._exec_target(sandbox_id, host)
        async with session(item) as conn:
            await set_paused(conn, item, sandbox_id, paused=False)

    # -- helpers ----------------------------------------------------------------------------

    def _plan(self, request: ProvisionRequest) -> Plan:
        """Validate the id, the inputs, the secret names and the host; no I/O beyond the
        worker's own disk (the repo, the hosts file)."""
        sandbox_id = request.sandbox_id
        checks.check_sandbox_id(sandbox_id, self.id)
        compose_input = request.inputs.get("compose_file")
        if compose_input:
            try:
                check_compose_file(compose_input)
            except ComposeFileError as exc:
                raise InvalidInput(str(exc), sandbox_id=sandbox_id, extension=self.id) from None
        repo = checks.local_repo(
            request.inputs.get("repo"), required=True, sandbox_id=sandbox_id, extension=self.id
        )
        assert repo is not None
        try:
            compose_file = resolve_compose_file(repo, compose_input)
        except ComposeFileError as exc:
            raise InvalidInput(str(exc), sandbox_id=sandbox_id, extension=self.id) from None
        item = target(self.settings, request.host, sandbox_id=sandbox_id, extension=self.id)
        checks.check_secrets(request.secrets, item.config.env, sandbox_id, self.id)
        network = _network_mode(request, repo / compose_file, self.id)
        stack = Stack(
            item,
            sandbox_id,
            compose_file,
            with_secrets=bool(request.secrets),
            no_network=network == "none",
            egress=network == "allowlist",
        )
        return Plan(stack, repo, volumes.seed_keys(repo, sandbox_id))

    async def _services(self, conn: Connection, stack: Stack, values: list[str]) -> list[str]:
        try:
            return sorted(await stack.services(conn))
        except RemoteCommandFailed as exc:
            raise self._config_failed(
                exc,
                stack,
                "config --services",
                values,
                "check the compose file and the compose command of the host",
            ) from None

    def _config_failed(
        self, exc: RemoteCommandFailed, stack: Stack, command: str, values: list[str], fix: str
    ) -> RemoteCommandFailed:
        """A failed ``compose <command>`` of the stack's file, its output redacted."""
        return checks.with_output(
            exc,
            f"'{stack.target.config.compose_cmd} {command}' of {stack.compose_file} "
            f"on host {stack.target.name}",
            values,
            sandbox_id=stack.sandbox_id,
            extension=self.id,
            fix=fix,
        )

    async def _check_merged(self, conn: Connection, stack: Stack, values: list[str]) -> None:
        """Refuse the stack unless compose's own merged model (``config``, the override
        included) puts every service on the egress network alone. :func:`_network_mode`
        read one file; compose merges more (extends, include, tags PyYAML does not know),
        and this is what ``up`` will make. Runs before anything starts; the teardown that
        follows a failed create removes the gate made so far."""
        try:
            result = await stack.run(conn, "config", timeout=SHORT_TIMEOUT)
        except RemoteCommandFailed as exc:
            raise self._config_failed(
                exc,
                stack,
                "config",
                values,
                "fix the compose file (the command prints what it rejects)",
            ) from None
        try:  # Docker Compose prints YAML or JSON, the others YAML; JSON is YAML
            resolved = yaml.safe_load(result.stdout)
        except yaml.YAMLError:
            resolved = None  # gate_leaks refuses what it cannot read
        leaks = gate_leaks(resolved, stack.project)
        if leaks:
            raise InvalidInput(
                f"{stack.compose_file} as compose merges it would bypass the egress allowlist: "
                f"{'; '.join(leaks)}; remove networks:, network_mode:, extends: and include: "
                "from the compose file (every service is put on the allowlist's network)",
                sandbox_id=stack.sandbox_id,
                extension=self.id,
            )

    async def _found_on(self, item: Target, conn: Connection) -> list[FoundSandbox]:
        held = await scan(conn, item)
        try:
            owned = await engine.owned_containers(conn, item)
        except RemoteCommandFailed as exc:
            # The engine did not answer (restarting, overloaded): that says nothing of the
            # stacks, and a stack taken for dead is torn down by reconcile and reap.
            log.warning("%s: host %s: cannot list containers: %s", self.id, item.name, exc.message)
            return listing.found_on_host(item, held, [], self.id, engine_error=exc.message)
        return listing.found_on_host(item, held, owned, self.id)

    async def _teardown_on(
        self, conn: Connection, item: Target, sandbox_id: str, found: Probe
    ) -> None:
        """Remove the project, then the directory and the marker; nothing there is fine.

        By the engine's labels of the project, never by ``compose down`` on the project's
        file: a service that mounts its directory can rewrite that file, and ``down
        --volumes`` on it removed volumes it names by name (another project's, the host's)
        and left the project's own (``services: {}``)."""
        await engine.sweep(conn, item, containers.project_name(sandbox_id), thorough=True)
        if (found.marker or {}).get("network") == "allowlist":
            await egress.close(conn, item, sandbox_id)  # after down: the network is unused
        await remove(conn, item, sandbox_id, found)


def _network_mode(
    request: ProvisionRequest, compose_path: Path, extension: str
) -> Literal["all", "none", "allowlist"]:
    """How the stack is networked under the policy in force: as its compose file says
    (allow), not at all (deny), or through the egress gate (an allowlist). A compose file
    whose services would keep a way around the gate is refused before anything is made."""
    policy = request.profile.network.policy()
    if policy.default == "allow":
        return "all"
    if not policy.egress:
        return "none"
    # A file we cannot read is refused, not waved through: compose may read it (it knows
    # tags such as !reset that PyYAML does not), and then its networks would go unchecked.
    try:
        parsed = yaml.safe_load(compose_path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidInput(
            f"{compose_path.name} cannot be checked for networks of its own, which the egress "
            f"allowlist needs: {_why_unreadable(exc)}; write it as plain YAML (no tags such as "
            "!reset or !override)",
            sandbox_id=request.sandbox_id,
            extension=extension,
        ) from None
    reasons = gate_bypasses(parsed, compose_path.name)
    if reasons:
        raise InvalidInput("; ".join(reasons), sandbox_id=request.sandbox_id, extension=extension)
    return "allowlist"


def _why_unreadable(exc: Exception) -> str:
    """A YAML error in one line (its text quotes the file over several), else the error."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        return f"{exc.problem} (line {mark.line + 1})" if mark else exc.problem
    return f"{type(exc).__name__}: {exc}"
