"""``ext.vm-packer`` in attach mode: a workspace per sandbox on a pre-built VM reached over SSH.

The VM is a host entry in the hosts file, named by the ``vm`` input (or,
without it, the placement host). A sandbox is the directory
``<workspace_root>/sbx-<id>/`` on it (VM hosts set ``workspace_root: /build``
to get ``/build/sbx-<id>/``), optionally holding a copy of the ``repo``
input, with secrets in ``.sandboxer.env`` (mode 0600). The profile's
``setup.instructions`` run there once, in order. Teardown removes the
workspace and nothing else: the VM stays. The marker records the provisioning that made
the workspace (``made_by``), so that an earlier attempt's teardown leaves a later one's
(:meth:`~..ssh_backend.SshBackend.teardown_attempt`).

The VM is the sandbox's host: profiles set ``placement.host_input: vm`` so
placement records it, and a ``vm`` input that disagrees with the placement
host is refused. Teardown and exec act on the recorded host; without one
they look on every host that answers (sandbox ids are unique).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sandboxer.config.settings import Settings
from sandboxer.domain.attempt_order import recorded
from sandboxer.domain.found import FoundSandbox
from sandboxer.errors import ExtensionError, InvalidInput, SandboxerError, SandboxNotFound
from sandboxer.extensions import ssh_checks as checks
from sandboxer.extensions.base import ProvisionRequest, Readiness
from sandboxer.extensions.output_capture import OutputCapture
from sandboxer.extensions.ssh_access import ssh_access
from sandboxer.extensions.ssh_backend import SshBackend
from sandboxer.extensions.ssh_handover import Handover
from sandboxer.extensions.ssh_targets import (
    SHORT_TIMEOUT,
    Target,
    host_telemetry,
    reachable_targets,
    session,
    target,
)
from sandboxer.extensions.ssh_workspace import (
    ENV_FILE,
    Probe,
    claim,
    exists,
    remove,
    scan,
)
from sandboxer.ssh import Connection, remote, stream, sync

__all__ = ["VmPackerExtension"]

log = logging.getLogger(__name__)

SETUP_TIMEOUT = 1800.0
"""Seconds one setup instruction may run; the VM then stops it and all it started."""


class VmPackerExtension(SshBackend):
    """Workspaces on pre-built VMs; the VMs come from the hosts file, read at every call."""

    id = "ext.vm-packer"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._filled: Handover[dict[str, Any]] = Handover()
        """For wait_ready: the access of a workspace its provision has just made and filled,
        over a connection verified against the hosts file (:mod:`..ssh_handover`)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> VmPackerExtension:
        return cls(settings)

    # -- the Extension protocol ------------------------------------------------------------

    async def provision(self, request: ProvisionRequest) -> None:
        item, repo = self._plan(request)  # every check before any connection
        sandbox_id = request.sandbox_id
        values = list(request.secrets.values())
        workspace = item.workspace(sandbox_id)
        self._filled.drop(sandbox_id)
        started = time.monotonic()
        try:
            async with session(item) as conn:
                marker = {
                    "extension": self.id,
                    "created_at": datetime.now(UTC).isoformat(),
                    "placement_host": request.host,
                }
                # Nothing of the sandbox on the VM (the usual create): one round trip writes
                # the marker and makes the workspace. Otherwise tear down what is there first.
                # Both record this provisioning in the marker, under the sandbox's lock on
                # the VM, and the long way refuses to start clean over a later one's. The
                # rest of the make (the copy mirrors deletions, the setup steps) holds that
                # lock and stops if the marker no longer records this provisioning (_making).
                fresh = await claim(conn, item, sandbox_id, marker, made_by=request.made_by)
                async with self._making(conn, item, request, marker, claimed=fresh.claimed):
                    method = "none"
                    if repo is not None:
                        method = await sync.sync_dir(
                            item.name,
                            item.config,
                            conn,
                            repo,
                            workspace,
                            host_has_rsync=fresh.host_has_rsync if fresh.claimed else None,
                            empty=fresh.claimed,  # claim made the workspace just now
                        )
                    elif not fresh.claimed:
                        await remote.run(
                            conn, ["mkdir", "-p", "--", workspace], timeout=SHORT_TIMEOUT
                        )
                    if request.secrets:
                        text = checks.env_file_text(request.secrets, sandbox_id)
                        await remote.put_file(
                            conn, f"{workspace}/{ENV_FILE}", text.encode(), mode=0o600
                        )
                    for index, instruction in enumerate(request.profile.setup.instructions):
                        await self._setup(conn, item, request, index, instruction)
                # Everything above ran in or into the workspace, so it is there now.
                self._filled.give(sandbox_id, ssh_access(item, conn, workdir=workspace))
        except (SandboxerError, OSError) as exc:
            raise checks.scrubbed(exc, values, sandbox_id=sandbox_id, extension=self.id) from None
        log.info(
            "vm-packer sandbox %s on %s: workspace ready in %.0f ms (repo: %s)",
            sandbox_id,
            item.name,
            (time.monotonic() - started) * 1000,
            method,
        )

    async def wait_ready(self, request: ProvisionRequest) -> Readiness:
        item, _ = self._plan(request)
        sandbox_id = request.sandbox_id
        workspace = item.workspace(sandbox_id)
        reach = self._filled.take(sandbox_id)
        present = reach is not None  # this worker's provision has just filled it
        try:
            if reach is None:
                async with session(item) as conn:
                    present = await exists(conn, workspace, "d")
                    reach = ssh_access(item, conn, workdir=workspace)
        except (SandboxerError, OSError) as exc:
            raise checks.scrubbed(
                exc, request.secrets.values(), sandbox_id=sandbox_id, extension=self.id
            ) from None
        if not present:
            raise ExtensionError(
                f"the workspace {workspace} of sandbox {sandbox_id} is missing on VM "
                f"{item.name} right after provisioning; check that nothing on the VM cleans "
                f"{item.config.workspace_root}, then create the sandbox again",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        descriptor: dict[str, Any] = {
            "kind": "vm-packer",
            **item.describe(),
            "workspace": workspace,
            "exec": f"sandboxer exec {sandbox_id} -- CMD (runs on the VM in workspace)",
            **reach,
        }
        if request.secrets:
            descriptor["secrets_file"] = f"{workspace}/{ENV_FILE}"
        warnings = []
        if request.profile.network.default == "deny" or request.profile.network.egress:
            warnings.append(
                "network policy not enforced: ext.vm-packer uses the VM's own network as it is"
            )
        if request.profile.resources.model_dump(exclude_none=True):
            warnings.append("resource limits not enforced: ext.vm-packer uses the VM as it is")
        return Readiness(descriptor=descriptor, warnings=warnings)

    async def _exec_target(self, sandbox_id: str, host: str | None) -> Target:
        if host is not None:
            return target(self.settings, host, sandbox_id=sandbox_id, extension=self.id)
        return await self._locate(sandbox_id)

    async def inspect_host(self, host: str | None = None) -> dict[str, Any]:
        """Load, memory, disk of the workspace root and the sandboxer workspaces on a VM."""
        item = target(
            self.settings, host, sandbox_id=None, extension=self.id, what="host to inspect"
        )
        async with session(item) as conn:
            report = await host_telemetry(conn, item)
            held = await scan(conn, item)
        report["workspaces"] = sorted(held.directories)
        report["sandboxes"] = held.owned_by(self.id)
        return report

    # -- helpers ----------------------------------------------------------------------------

    def _plan(self, request: ProvisionRequest) -> tuple[Target, Path | None]:
        sandbox_id = request.sandbox_id
        checks.check_sandbox_id(sandbox_id, self.id)
        # Routing trusts the declaration's capabilities.network; one edited to claim more
        # than none would send deny profiles here, and the VM would run them unfiltered.
        policy = request.profile.network.policy()
        if policy.needs() != "none":
            raise InvalidInput(
                f"{self.id} cannot enforce the network policy ({policy.describe()}): a shared "
                "VM keeps its own network (network: none). Give the profile network: "
                "{default: allow} or route it to a backend that enforces the policy, and "
                f"leave {self.id}'s declaration at capabilities.network: none",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        repo = checks.local_repo(
            request.inputs.get("repo"), required=False, sandbox_id=sandbox_id, extension=self.id
        )
        vm = request.inputs.get("vm") or None
        if vm is not None and request.host is not None and vm != request.host:
            raise InvalidInput(
                f"the vm input names {vm!r} but the sandbox was placed on {request.host!r}; "
                "give the profile 'placement: {host_input: vm}' (profile.vm-haskell-build "
                f"has it) or create it with --host {vm}",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        item = target(
            self.settings,
            vm or request.host,
            sandbox_id=sandbox_id,
            extension=self.id,
            what="VM (the vm input)",
        )
        checks.check_secrets(request.secrets, item.config.env, sandbox_id, self.id)
        return item, repo

    async def _setup(
        self,
        conn: Connection,
        item: Target,
        request: ProvisionRequest,
        index: int,
        instruction: str,
    ) -> None:
        capture = OutputCapture()
        code = await stream(
            conn,
            ["sh", "-c", instruction],
            capture.keep,
            env=item.config.env,
            cwd=item.workspace(request.sandbox_id),
            timeout=SETUP_TIMEOUT,
        )
        if code != 0:
            raise ExtensionError(
                f"setup.instructions[{index}] ({instruction!r}) exited with code {code} on VM "
                f"{item.name}; fix the instruction or the VM image. Last output:\n"
                + (capture.tail(request.secrets) or "(no output)"),
                sandbox_id=request.sandbox_id,
                extension=self.id,
            )

    async def _locate(self, sandbox_id: str) -> Target:
        """The host holding the sandbox's workspace, when no host was recorded."""

        async def holds(item: Target, conn: Connection) -> bool:
            return await exists(conn, item.workspace(sandbox_id), "d")

        for item, present in await reachable_targets(self.settings, self.id, holds):
            if present:
                return item
        raise SandboxNotFound(
            f"vm-packer sandbox {sandbox_id} has no workspace on any reachable host of the "
            "hosts file; create it again or tear it down",
            sandbox_id=sandbox_id,
            extension=self.id,
        )

    async def _found_on(self, item: Target, conn: Connection) -> list[FoundSandbox]:
        held = await scan(conn, item)
        found = []
        for sandbox_id in held.owned_by(self.id):
            present = sandbox_id in held.directories
            detail: dict[str, Any] = {
                "workspace": item.workspace(sandbox_id) if present else None,
                "created_at": held.markers[sandbox_id].get("created_at"),
            }
            if not present:  # its marker stayed: ours, but nothing left to work in
                detail["dead"] = f"its workspace {item.workspace(sandbox_id)} was deleted"
            found.append(
                FoundSandbox(
                    sandbox_id=sandbox_id,
                    alive=present,
                    host=item.name,
                    detail=detail,
                    made_by=recorded(held.markers[sandbox_id].get("made_by")),
                )
            )
        return found

    async def _teardown_on(
        self, conn: Connection, item: Target, sandbox_id: str, found: Probe
    ) -> None:
        """Remove the workspace and its marker; nothing there is fine. The VM stays."""
        await remove(conn, item, sandbox_id, found)
