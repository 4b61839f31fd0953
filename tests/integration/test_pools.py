"""Warm pools on ext.local, for real: bubblewrap members, claims through the bus, a worker
killed with -9 and restarted, a graceful stop, a profile that changes (docs/pools.md)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from sandboxer import subjects
from sandboxer.bus.event_reader import read_events
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.streams import ensure_streams
from sandboxer.client import SandboxerClient
from sandboxer.config.catalog import Catalog
from sandboxer.config.profile import Profile
from sandboxer.errors import CommandFailed, ExtensionError, InvalidInput
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.local import cgroups
from sandboxer.extensions.local.backend import LocalExtension
from sandboxer.extensions.local.sandbox_lock import LOCK_FILE
from sandboxer.extensions.local.sandbox_uids import UIDS, UIDS_DIR
from sandboxer.workers import pool_keeper
from sandboxer.workers.pool_keeper import PoolKeeper
from tests.integration.conftest import (
    Service,
    reap_local,
    resend_provision_job,
    start_service,
    start_worker,
)

pytestmark = pytest.mark.integration

WARM = """\
id: profile.warm
version: {version}
extension: ext.local
pool: {{min_ready: {min_ready}, max: {max}}}
setup:
  instructions: ["echo set-up > /workspace/hello"]
  secret_refs: {{POOL_TOKEN: "env:POOL_TEST_TOKEN"}}
"""


@pytest.fixture(autouse=True)
def pool_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret the profile's members are given at their claim (workers read it)."""
    monkeypatch.setenv("POOL_TEST_TOKEN", "s3cret-pool-value")


def write_profile(home: Path, *, min_ready: int = 2, max_: int = 3, version: int = 1) -> None:
    (home / "profiles").mkdir(exist_ok=True)
    (home / "profiles" / "profile.warm.yaml").write_text(
        WARM.format(min_ready=min_ready, max=max_, version=version)
    )


def member_dirs(home: Path) -> set[str]:
    """The pool's member directories."""
    return _entries(home / "local" / ".pool")


def _entries(root: Path) -> set[str]:
    """``root``'s entries but its lock file."""
    if not root.is_dir():
        return set()
    return {entry.name for entry in root.iterdir() if entry.name != LOCK_FILE}


async def wait_pool(client: SandboxerClient, ready: int, timeout: float = 30) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            pools = await client.pools()
            if pools and pools[0]["ready"] >= ready and pools[0]["provisioning"] == 0:
                return pools[0]
            await asyncio.sleep(0.05)


async def pool_events(client: SandboxerClient) -> list[dict[str, Any]]:
    return [e async for _seq, e in client.events() if e["type"].startswith("pool_member_")]


@contextlib.asynccontextmanager
async def control_and_local(home: Path, url: str) -> AsyncIterator[SandboxerClient]:
    """``sandboxer worker control ext.local`` in a process of its own, as the two share one
    under ``sandboxer up``, and a client in this one; stopped, and its sandboxes reaped, after."""
    env = dict(os.environ, SANDBOXER_HOME=str(home), SANDBOXER_NATS_URL=url)
    with (home / "workers.log").open("ab") as log:
        workers = subprocess.Popen(
            [sys.executable, "-m", "sandboxer.cli.app", "worker", "control", "ext.local"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    client = await SandboxerClient.connect([url], actor={"type": "atm", "id": "pytest"})
    try:
        yield client
    finally:
        await client.close()
        workers.terminate()
        await asyncio.to_thread(workers.wait, 30)
        await reap_local(home)


async def test_a_create_claims_a_warm_member_with_its_inputs(nats_server: Any, home: Path) -> None:
    write_profile(home)
    svc = await start_service(home, nats_server.url)
    client = svc.client
    try:
        pool = await wait_pool(client, 2)
        assert (pool["profile"], pool["min_ready"], pool["max"]) == ("profile.warm", 2, 3)
        assert await client.list_sandboxes() == []  # members are no one's sandboxes
        before = member_dirs(home)

        ready = await client.create("profile.warm")
        sandbox_id = ready["sandbox_id"]
        events = [e async for _seq, e in client.events(sandbox_id=sandbox_id)]
        (ready_event,) = [e for e in events if e["type"] == "ready"]
        member = ready_event["pool_member"]
        assert member in before
        assert member not in member_dirs(home)
        assert (home / "local" / sandbox_id / "state.json").is_file()

        out = bytearray()

        async def keep(_stream: str, data: bytes) -> None:
            out.extend(data)

        script = "cat hello .sandboxer/secrets.env; whoami; getent passwd $(id -u) | cut -d: -f6"
        code = await client.exec(sandbox_id, ["/bin/sh", "-c", script], keep)
        assert code == 0
        assert b"set-up" in out
        assert b"POOL_TOKEN" in out
        assert out.endswith(b"\nsandbox\n/workspace\n")  # the member's user has a name

        await wait_pool(client, 2)  # refilled
        claims = [e for e in await pool_events(client) if e["type"] == "pool_member_claimed"]
        assert [(c["member_id"], c["sandbox_id"]) for c in claims] == [(member, sandbox_id)]
        assert [s["sandbox_id"] for s in await client.list_sandboxes()] == [sandbox_id]

        await client.destroy(sandbox_id)
        assert not (home / "local" / sandbox_id).exists()
        assert not any(
            path.name.startswith(member)
            for ctl in Path("/sys/fs/cgroup").iterdir()
            if ctl.is_dir()
            for path in ctl.iterdir()
        )
    finally:
        await client.close()
        await svc.shutdown()
        await reap_local(home)
    assert member_dirs(home) == set()  # a graceful stop drains the pool
    removed = [e for e in await _events_of(nats_server.url) if e["type"] == "pool_member_removed"]
    assert removed
    assert all("drained" in e["reason"] for e in removed)


async def _events_of(url: str) -> list[dict[str, Any]]:
    client = await SandboxerClient.connect([url], actor={"type": "atm", "id": "pytest"})
    try:
        return await pool_events(client)
    finally:
        await client.close()


async def test_concurrent_creates_claim_each_member_once(nats_server: Any, home: Path) -> None:
    write_profile(home, min_ready=4, max_=4)
    svc = await start_service(home, nats_server.url)
    client = svc.client
    try:
        await wait_pool(client, 4)
        readies = await asyncio.gather(*(client.create("profile.warm") for _ in range(10)))
        members = []
        for ready in readies:
            events = [e async for _s, e in client.events(sandbox_id=ready["sandbox_id"])]
            (ready_event,) = [e for e in events if e["type"] == "ready"]
            if ready_event["pool_member"]:
                members.append(ready_event["pool_member"])
        assert members, "no create was served from the pool"
        assert len(set(members)) == len(members)  # no member went to two creates
        claims = Counter(
            e["member_id"] for e in await pool_events(client) if e["type"] == "pool_member_claimed"
        )
        assert set(claims) == set(members)
        assert set(claims.values()) == {1}
        await asyncio.gather(*(client.destroy(r["sandbox_id"]) for r in readies))
        assert _entries(home / "local") == {".pool"}  # no sandbox
    finally:
        await client.close()
        await svc.shutdown()
        await reap_local(home)


async def test_a_warm_create_s_claim_goes_out_after_its_provisioning(
    nats_server: Any, home: Path
) -> None:
    """A create's job comes with its events, and the worker's first append after it expects
    ``routed`` as the stream's last message. The member's ``claimed`` starts once the job has
    the sandbox's turn in its process, so it never lands between the two: it did in 10 of 60
    warm creates while the control worker still held the turn, awaiting the acks of the
    events the job had outrun, and each of those creates then read the log again. The
    control and ext.local workers share a process of their own here, as under
    ``sandboxer up``; the client is this one. The race is one of timing: on the old order
    this failed in one run of three, on a loaded machine."""
    write_profile(home, min_ready=12, max_=12)
    async with control_and_local(home, nats_server.url) as client:
        await wait_pool(client, 12, timeout=60)
        made = []
        for _ in range(12):
            await wait_pool(client, 12)  # refilled: the keeper is quiet during the create
            await asyncio.sleep(0.05)  # and the create meets idle workers, as a lone one does
            made.append((await client.create("profile.warm"))["sandbox_id"])
        logged = [subject async for _seq, subject, _data, _pending in read_events(client.js)]
        for sandbox_id in made:
            routed = logged.index(f"sandboxer.evt.sandbox.{sandbox_id}.routed")
            provisioning = logged.index(f"sandboxer.evt.sandbox.{sandbox_id}.provisioning")
            between = logged[routed + 1 : provisioning]
            assert not [subject for subject in between if subject.endswith(".claimed")]
        await asyncio.gather(*(client.destroy(sandbox_id) for sandbox_id in made))


PLAIN = """\
id: profile.warm
version: 1
extension: ext.local
pool: {min_ready: 8, max: 8}
"""


async def test_a_plain_warm_create_sends_provisioning_claimed_and_ready_in_one_write(
    nats_server: Any, home: Path
) -> None:
    """A claim with nothing to apply moves the member first, then sends the sandbox's
    `provisioning`, the member's `claimed` and the sandbox's `ready` together, each after the
    first expecting the one before it as the stream's last message (workers/claim_ahead.py):
    they land one after another, and the sandbox is the member, running. Control and
    ext.local share a process, as under ``sandboxer up``."""
    (home / "profiles").mkdir(exist_ok=True)
    (home / "profiles" / "profile.warm.yaml").write_text(PLAIN)
    async with control_and_local(home, nats_server.url) as client:
        await wait_pool(client, 8, timeout=60)
        made = []
        for _ in range(6):
            await asyncio.sleep(0.05)
            made.append(await client.create("profile.warm"))
        logged = [(seq, subject) async for seq, subject, _data, _pending in read_events(client.js)]
        subjects_logged = [subject for _seq, subject in logged]
        claimed_members = []
        for ready in made:
            sandbox_id = ready["sandbox_id"]
            assert ready["pool_member"]
            claimed_members.append(ready["pool_member"])
            at = subjects_logged.index(f"sandboxer.evt.sandbox.{sandbox_id}.provisioning")
            assert subjects_logged[at + 1 : at + 3] == [
                f"sandboxer.evt.pool.{ready['pool_member']}.claimed",
                f"sandboxer.evt.sandbox.{sandbox_id}.ready",
            ]
            # Sent before `claimed` was acknowledged: `ready` named it as the stream's last.
            claim, ready_msg = [
                await client.js.get_msg(subjects.EVENTS_STREAM, logged[at + n][0]) for n in (1, 2)
            ]
            assert (ready_msg.headers or {}).get("Nats-Expected-Last-Msg-Id") == (
                claim.headers or {}
            ).get("Nats-Msg-Id")
            assert await client.exec(sandbox_id, ["true"], lambda _s, _d: None) == 0
        assert len(set(claimed_members)) == len(made)  # each member claimed once
        assert not set(claimed_members) & member_dirs(home)  # moved out of the pool
        await asyncio.gather(*(client.destroy(ready["sandbox_id"]) for ready in made))


async def test_the_pool_survives_kill_9_and_follows_its_profile(
    nats_server: Any, home: Path
) -> None:
    write_profile(home)
    svc: Service = await start_service(home, nats_server.url, roles=["control", "projector"])
    client = svc.client
    worker = start_worker(home, nats_server.url)
    try:
        await wait_pool(client, 2)
        kept = member_dirs(home)
        assert len(kept) == 2
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        assert member_dirs(home) == kept  # a crash leaves the members ...

        worker = start_worker(home, nats_server.url)
        await wait_pool(client, 2)
        assert member_dirs(home) == kept  # ... and the next worker adopts them from the log
        ready = await client.create("profile.warm")
        events = [e async for _s, e in client.events(sandbox_id=ready["sandbox_id"])]
        assert next(e["pool_member"] for e in events if e["type"] == "ready") in kept
        await client.destroy(ready["sandbox_id"])
        await wait_pool(client, 2)  # refilled: no member is half made when the worker dies

        worker.send_signal(signal.SIGKILL)
        worker.wait()
        old = member_dirs(home)
        write_profile(home, version=2)  # the profile changed while no worker ran
        worker = start_worker(home, nats_server.url)
        async with asyncio.timeout(30):
            while member_dirs(home) & old or len(member_dirs(home)) < 2:
                await asyncio.sleep(0.05)
        removed = {
            e["member_id"]: e["reason"]
            for e in await pool_events(client)
            if e["type"] == "pool_member_removed"
        }
        assert old <= set(removed)
        assert all("version" in removed[m] for m in old), removed

        worker.send_signal(signal.SIGTERM)  # what `sandboxer down` sends
        assert worker.wait(timeout=30) == 0
        assert member_dirs(home) == set()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        await client.close()
        await svc.shutdown()
        await reap_local(home)


async def test_members_no_profile_pools_any_more_are_drained_at_the_next_start(
    nats_server: Any, home: Path
) -> None:
    """Members left by a worker killed with -9, then the profile lost its pool: with nothing
    pooling on the backend no keeper ran, and they (holders, cgroups, networks) ran for good,
    seen by no listing."""
    write_profile(home)
    svc: Service = await start_service(home, nats_server.url, roles=["control", "projector"])
    worker = start_worker(home, nats_server.url)
    try:
        await wait_pool(svc.client, 2)
        assert len(member_dirs(home)) == 2
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        (home / "profiles" / "profile.warm.yaml").write_text(
            WARM.replace("pool: {{min_ready: {min_ready}, max: {max}}}\n", "").format(version=2)
        )
        worker = start_worker(home, nats_server.url)
        async with asyncio.timeout(30):
            while member_dirs(home):
                await asyncio.sleep(0.1)
        removed = [e for e in await pool_events(svc.client) if e["type"] == "pool_member_removed"]
        assert len(removed) == 2
        assert all("no profile pools it" in e["reason"] for e in removed)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        await svc.client.close()
        await svc.shutdown()
        await reap_local(home)


async def test_a_backend_declaration_can_pool_its_profiles(nats_server: Any, home: Path) -> None:
    packaged = Path(__file__).parents[2] / "extensions" / "ext.local.yaml"
    (home / "extensions").mkdir()
    (home / "extensions" / "ext.local.yaml").write_text(
        packaged.read_text() + "pool: {min_ready: 1, max: 1}\n"
    )
    write_profile(home, min_ready=2, max_=2)  # a profile's own pool wins over the backend's
    svc = await start_service(home, nats_server.url)
    client = svc.client
    try:
        async with asyncio.timeout(30):
            while True:
                pools = {p["profile"]: p for p in await client.pools()}
                if pools.get("profile.local", {}).get("ready") == 1:
                    break
                await asyncio.sleep(0.05)
        assert (pools["profile.warm"]["min_ready"], pools["profile.warm"]["max"]) == (2, 2)
        ready = await client.create("profile.local")
        events = [e async for _s, e in client.events(sandbox_id=ready["sandbox_id"])]
        assert next(e["pool_member"] for e in events if e["type"] == "ready")
        await client.destroy(ready["sandbox_id"])
    finally:
        await client.close()
        await svc.shutdown()
        await reap_local(home)
    assert member_dirs(home) == set()


async def test_a_setup_instruction_failing_at_the_claim_fails_the_create(
    nats_server: Any, home: Path
) -> None:
    (home / "profiles").mkdir()
    (home / "profiles" / "profile.warm.yaml").write_text(
        "id: profile.warm\nextension: ext.local\npool: {min_ready: 1, max: 1}\n"
        'setup:\n  instructions: ["uname -n; exit 3"]\n'
    )
    svc = await start_service(home, nats_server.url)
    client = svc.client
    try:
        await wait_pool(client, 1)
        with pytest.raises(CommandFailed) as caught:
            await client.create("profile.warm")
        failed = caught.value.event
        assert "exited with code 3" in failed["reason"]
        # It ran in the claimed member (its hostname), and was not run again in a cold sandbox.
        assert "sbx-pool" in failed["reason"]
        assert not (home / "local" / failed["sandbox_id"]).exists()
    finally:
        await client.close()
        await svc.shutdown()
        await reap_local(home)


def local_pool(home: Path) -> tuple[LocalExtension, LocalExtension, Profile]:
    """ext.local under ``home``, the same backend over its pool's members, and
    ``profile.local``: what the tests of a claim drive by hand."""
    extension = LocalExtension(home / "local")
    return extension, extension.pool_members(), Catalog.load().profile("profile.local")


def member_request(extension: LocalExtension, profile: Profile, member_id: str) -> ProvisionRequest:
    """The request that makes the pool member ``member_id`` of ``profile``."""
    return ProvisionRequest(
        sandbox_id=member_id, profile=extension.member_profile(profile), inputs={}
    )


async def test_a_claim_cut_short_after_the_move_is_finished_by_its_retry(home: Path) -> None:
    extension, members, profile = local_pool(home)
    member = member_request(extension, profile, "pool00000000000000a1")
    request = ProvisionRequest(sandbox_id="sbxclaimcut01", profile=profile, inputs={})
    try:
        await members.provision(member)
        real_rename = os.rename

        def rename_then_crash(source: Any, target: Any) -> None:
            real_rename(source, target)
            raise KeyboardInterrupt  # the worker dies right after the move

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "rename", rename_then_crash)
            with pytest.raises(KeyboardInterrupt):
                await extension.claim(member.sandbox_id, request)
        await extension.claim(member.sandbox_id, request)  # the redelivered job's
        assert await extension.exec(request.sandbox_id, ["true"], _discard) == 0
        await extension.teardown(request.sandbox_id)
        # The member's cgroups went with it: the sandbox's state named them.
        assert cgroups.sandbox_dirs(f"{member.sandbox_id}-{extension._root_tag}") == []
    finally:
        await reap_local(home)


async def test_a_claim_ahead_given_back_leaves_the_member_whole_in_the_pool(home: Path) -> None:
    """``LocalExtension.claim_ahead`` for real: a member given back (its claim refused) is in
    the pool again, nothing left under the sandbox's name, and a later claim of it works; one
    kept is the sandbox; one cut short by a crash after its move is adopted by the
    redelivered job's usual claim (``_take``)."""
    extension, members, profile = local_pool(home)
    member = member_request(extension, profile, "pool00000000000000b1")
    refused = ProvisionRequest(sandbox_id="sbxaheadback1", profile=profile, inputs={})
    kept = ProvisionRequest(sandbox_id="sbxaheadkept1", profile=profile, inputs={})
    try:
        await members.provision(member)
        async with extension.claim_ahead(member.sandbox_id, refused) as ahead:
            assert (home / "local" / refused.sandbox_id).is_dir()
            ahead.give_back()
        assert member.sandbox_id in member_dirs(home)
        assert not (home / "local" / refused.sandbox_id).exists()
        async with extension.claim_ahead(member.sandbox_id, kept) as ahead:
            assert ahead.readiness.descriptor["kind"] == "local"
        assert member.sandbox_id not in member_dirs(home)
        assert await extension.exec(kept.sandbox_id, ["true"], _discard) == 0
        # A crash right after the move: the member is under the sandbox's name, its claim on
        # record or not; the redelivered job's usual claim takes it as its own.
        await extension.teardown(kept.sandbox_id)
        await members.provision(member)
        cut_short = ProvisionRequest(sandbox_id="sbxaheadcut01", profile=profile, inputs={})
        with pytest.raises(KeyboardInterrupt):
            async with extension.claim_ahead(member.sandbox_id, cut_short):
                raise KeyboardInterrupt
        await extension.claim(member.sandbox_id, cut_short)
        assert await extension.exec(cut_short.sandbox_id, ["true"], _discard) == 0
        with pytest.raises(InvalidInput):  # something to apply: the usual claim's work
            async with extension.claim_ahead(
                member.sandbox_id, dataclasses.replace(refused, secrets={"A": "b"})
            ):
                pass
    finally:
        await reap_local(home)


def made_by(home: Path, sandbox_id: str) -> list[int]:
    recorded: list[int] = json.loads((home / "local" / sandbox_id / "state.json").read_text())[
        "made_by"
    ]
    return recorded


async def test_a_recreates_claim_records_its_generation(home: Path) -> None:
    """A recreate (generation 2) whose create claims a member: the sandbox records the claim's
    provisioning, not the member's own [1, 1], so that a generation 1 attempt resumed late
    (its worker frozen past the ack wait) leaves it alone, and generation 2's removes it."""
    extension, members, profile = local_pool(home)
    member = member_request(extension, profile, "pool00000000000000a5")
    request = ProvisionRequest(
        sandbox_id="sbxclaimgen02", profile=profile, inputs={}, generation=2, attempt=1
    )
    try:
        await members.provision(member)
        await extension.claim(member.sandbox_id, request)
        assert made_by(home, request.sandbox_id) == [2, 1]
        await extension.teardown_attempt(request.sandbox_id, (1, 5))
        assert await extension.exec(request.sandbox_id, ["true"], _discard) == 0
        await extension.teardown_attempt(request.sandbox_id, (2, 1))
        assert await extension.list_sandboxes() == []
    finally:
        await reap_local(home)


async def test_a_claim_retried_after_the_move_records_its_attempt(home: Path) -> None:
    """The claim's first attempt moved the member and died; the redelivered job's attempt 2
    finds it moved and takes it as it is: it records itself, so that attempt 1, should it
    resume, neither claims over it nor removes it."""
    extension, members, profile = local_pool(home)
    member = member_request(extension, profile, "pool00000000000000a6")
    first = ProvisionRequest(sandbox_id="sbxclaimretry", profile=profile, inputs={})
    again = ProvisionRequest(sandbox_id=first.sandbox_id, profile=profile, inputs={}, attempt=2)
    try:
        await members.provision(member)
        real_rename = os.rename

        def rename_then_crash(source: Any, target: Any) -> None:
            real_rename(source, target)
            raise KeyboardInterrupt  # the worker dies right after the move

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "rename", rename_then_crash)
            with pytest.raises(KeyboardInterrupt):
                await extension.claim(member.sandbox_id, first)
        await extension.claim(member.sandbox_id, again)
        assert made_by(home, first.sandbox_id) == [1, 2]
        with pytest.raises(ExtensionError, match="a later provisioning"):
            await extension.claim(member.sandbox_id, first)  # attempt 1, resumed
        await extension.teardown_attempt(first.sandbox_id, (1, 1))
        assert await extension.exec(first.sandbox_id, ["true"], _discard) == 0
    finally:
        await reap_local(home)


async def test_a_member_gets_its_uid_when_made_and_its_claim_keeps_it(
    home: Path, tmp_path: Path
) -> None:
    """The member's uid, taken under the member's name when it was made, is the claimed
    sandbox's: its inputs are handed to it, its commands run as it, its teardown frees it."""
    extension, members, profile = local_pool(home)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "file").write_text("copied")
    member = member_request(extension, profile, "pool00000000000000a4")
    request = ProvisionRequest(
        sandbox_id="sbxclaimuid01",
        profile=profile,
        inputs={"repo": str(repo)},
        secrets={"TOKEN": "v"},
    )
    try:
        await members.provision(member)
        made = json.loads((home / "local" / ".pool" / member.sandbox_id / "state.json").read_text())
        uid = made["uid"]
        assert uid in UIDS
        slot = UIDS_DIR / str(uid)
        assert slot.read_text() == f"{member.sandbox_id}-{extension._root_tag}\n"
        await extension.claim(member.sandbox_id, request)
        assert (
            json.loads((home / "local" / request.sandbox_id / "state.json").read_text())["uid"]
            == uid
        )
        out = bytearray()

        async def keep(_stream: str, data: bytes) -> None:
            out.extend(data)

        owners = "id -u; stat -c %u file .sandboxer/secrets.env"
        assert await extension.exec(request.sandbox_id, ["sh", "-c", owners], keep) == 0
        assert out.decode() == f"{uid}\n" * 3
        # Named from the member's making: its passwd moved with its directory, bound since.
        out.clear()
        names = 'whoami; id -un; getent passwd "$(id -u)"'
        assert await extension.exec(request.sandbox_id, ["sh", "-c", names], keep) == 0
        assert out.decode() == (
            f"sandbox\nsandbox\nsandbox:x:{uid}:{uid}:sandboxer sandbox:/workspace:/bin/sh\n"
        )
        await extension.teardown(request.sandbox_id)
        assert not slot.exists()
    finally:
        await reap_local(home)


async def test_a_retried_claim_never_copies_into_what_the_sandbox_ran_in(
    home: Path, tmp_path: Path
) -> None:
    """A claim's job redelivered after its setup ran the sandbox's code: that code replaced
    a directory of the repo with a link out. The retry copied the repo through it as root
    (a file in any host directory, its mode changed); what went in once stays."""
    extension, members, profile = local_pool(home)
    repo = tmp_path / "repo"
    (repo / "x").mkdir(parents=True)
    (repo / "x" / "payload").write_text("copied")
    outside = tmp_path / "host-dir"
    outside.mkdir(mode=0o755)
    outside.chmod(0o755)
    member = member_request(extension, profile, "pool00000000000000a2")
    first = ProvisionRequest(
        sandbox_id="sbxclaimlink1", profile=profile, inputs={"repo": str(repo)}
    )
    try:
        await members.provision(member)
        await extension.claim(member.sandbox_id, first)
        planted = f"rm -rf /workspace/x && ln -s {outside} /workspace/x"
        assert await extension.exec(first.sandbox_id, ["sh", "-c", planted], _discard) == 0
        again = ProvisionRequest(
            sandbox_id=first.sandbox_id, profile=profile, inputs=first.inputs, attempt=2
        )
        await extension.claim(member.sandbox_id, again)  # idempotent: the sandbox it made
        assert list(outside.iterdir()) == []
        assert outside.stat().st_mode & 0o777 == 0o755
        assert await extension.exec(first.sandbox_id, ["true"], _discard) == 0
    finally:
        await reap_local(home)


@contextlib.asynccontextmanager
async def keepers(
    url: str, home: Path, *, min_ready: int, max_: int
) -> AsyncIterator[Callable[[str], PoolKeeper]]:
    """Pool keepers of profile.warm on one real bus, as separate workers would run them (each
    test drives their steps itself, to set up a race deterministically)."""
    write_profile(home, min_ready=min_ready, max_=max_)
    catalog = Catalog.load(home)
    nc = await nats.connect(url)
    try:
        await ensure_streams(nc.jetstream())
        store = JetStreamEventStore(nc, nc.jetstream())
        yield lambda worker: PoolKeeper(
            nc, store, catalog, LocalExtension(home / "local"), worker=worker
        )
    finally:
        await nc.close()
        await reap_local(home)


async def test_a_removal_leaves_a_member_another_process_claimed(
    nats_server: Any, home: Path
) -> None:
    async with keepers(nats_server.url, home, min_ready=1, max_=1) as keeper_for:
        keeper = keeper_for("a")
        await keeper._refill()  # makes one member
        await asyncio.gather(*keeper._tasks)
        (member_id,) = member_dirs(home)
        other = keeper_for("b")
        await other.catch_up()
        profile = Catalog.load(home).profile("profile.warm")
        assert await other.claim(profile, "sbxclaimed01", "job-1", retry=False) == member_id

        # The first keeper's index still says ready: its removal must not tear the member down.
        assert keeper.index.members[member_id].status == "ready"
        await keeper._remove(member_id, "drained: beyond max")
        assert member_dirs(home) == {member_id}
        found = await keeper._members.list_sandboxes()
        assert [(f.sandbox_id, f.alive) for f in found] == [(member_id, True)]
        assert keeper.index.members[member_id].status == "claimed"


async def test_no_refill_starts_while_claims_come_in(nats_server: Any, home: Path) -> None:
    """A refill waits until claims have stopped for the quiet period, even when the keeper's
    round began before the first claim (it was reading the log when a burst began): members
    made then compete with the burst's creates for the one event loop."""
    async with keepers(nats_server.url, home, min_ready=1, max_=1) as keeper_for:
        keeper = keeper_for("a")
        assert await keeper.refill_when_quiet()  # nothing claimed yet: makes one member
        await asyncio.gather(*keeper._tasks)
        (member_id,) = member_dirs(home)
        profile = Catalog.load(home).profile("profile.warm")
        assert await keeper.claim(profile, "sbxclaimed01", "job-1", retry=False) == member_id

        assert not await keeper.refill_when_quiet()  # just claimed: the pool waits
        assert not keeper._making
        await asyncio.sleep(pool_keeper.QUIET_AFTER_CLAIM)
        assert await keeper.refill_when_quiet()
        assert len(keeper._making) == 1
        await asyncio.gather(*keeper._tasks)


async def test_reconcile_knows_members_another_process_made_since_its_catch_up(
    nats_server: Any, home: Path
) -> None:
    async with keepers(nats_server.url, home, min_ready=1, max_=1) as keeper_for:
        keeper = keeper_for("a")
        await keeper.catch_up()  # before the other keeper's member existed
        other = keeper_for("b")
        await other._refill()
        await asyncio.gather(*other._tasks)
        (member_id,) = member_dirs(home)

        await keeper.reconcile()
        assert member_dirs(home) == {member_id}  # not taken for a stray
        assert keeper.index.members[member_id].status == "ready"


async def _discard(_stream: str, _data: bytes) -> None:
    return None


async def test_a_member_that_cannot_be_torn_down_holds_up_no_other(
    nats_server: Any, home: Path
) -> None:
    async with keepers(nats_server.url, home, min_ready=2, max_=2) as keeper_for:
        keeper = keeper_for("a")
        await keeper._refill()
        await asyncio.gather(*keeper._tasks)
        stuck, dying = sorted(member_dirs(home))
        for member_id in (stuck, dying):  # both die; one's teardown will keep failing
            state = json.loads((home / "local" / ".pool" / member_id / "state.json").read_text())
            os.kill(state["holder_pid"], signal.SIGKILL)
        async with asyncio.timeout(10):  # a signal is delivered, not yet acted on, at kill()
            while any(f.alive for f in await keeper._members.list_sandboxes()):
                await asyncio.sleep(0.02)
        teardown = keeper._members.teardown

        async def failing(sandbox_id: str, *, host: str | None = None) -> None:
            if sandbox_id == stuck:  # a fault injected into the backend, as a host may fail
                raise ExtensionError("survived SIGKILL for 5s", sandbox_id=sandbox_id)
            await teardown(sandbox_id, host=host)

        keeper._members.teardown = failing  # type: ignore[method-assign]
        await keeper.reconcile()
        assert member_dirs(home) == {stuck}  # the other was torn down all the same
        assert keeper.index.members[dying].status == "removed"


async def test_a_duplicate_provision_job_claims_beside_and_gives_the_member_back(
    nats_server: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim goes out beside `provisioning` (extension_worker.py). A provision job sent
    again once its sandbox is ready claims a member for nothing: the sandbox is left as it
    is, the worker tears that member down at once, and the pool refills. The keeper's
    reconcile, which did it before (up to 5 s later, once claims were quiet; ``make
    chaos`` found one running past its cycles' end), is put an hour off here."""
    monkeypatch.setattr(pool_keeper, "RECONCILE_EVERY", 3600.0)
    write_profile(home)
    svc = await start_service(home, nats_server.url)
    client = svc.client
    try:
        await wait_pool(client, 2)
        ready = await client.create("profile.warm")
        sandbox_id = ready["sandbox_id"]
        await wait_pool(client, 2)
        await resend_provision_job(client, sandbox_id)

        async with asyncio.timeout(30):  # claimed for nothing, then torn down by the worker
            while True:
                events = await pool_events(client)
                claims = [e for e in events if e["type"] == "pool_member_claimed"]
                spare = [c["member_id"] for c in claims if c["sandbox_id"] == sandbox_id]
                if len(spare) == 2 and spare[1] not in member_dirs(home):
                    break
                await asyncio.sleep(0.1)
        types = [e["type"] async for _s, e in client.events(sandbox_id=sandbox_id)]
        assert types == ["requested", "routed", "provisioning", "ready"]
        assert await client.exec(sandbox_id, ["true"], _discard) == 0
        await wait_pool(client, 2)  # refilled
    finally:
        await client.close()
        await svc.shutdown()
        await reap_local(home)


async def test_a_retried_claim_takes_no_member_made_for_the_profile_before_it_changed(
    nats_server: Any, home: Path
) -> None:
    """A create's claim landed and moved its member; then its worker was killed -9 and
    restarted with the profile changed (its limits, its network, its workspace access). The
    redelivered job found that claim on record and went on in the member made for the old
    profile, where a cold create would have been made again for the new one."""
    async with keepers(nats_server.url, home, min_ready=1, max_=1) as keeper_for:
        before = keeper_for("a")
        await before._refill()
        await asyncio.gather(*before._tasks)
        (stale,) = member_dirs(home)
        extension = LocalExtension(home / "local")
        first = ProvisionRequest(
            sandbox_id="sbxrecipe0001",
            profile=Catalog.load(home).profile("profile.warm"),
            inputs={},
        )
        assert await before.claim(first.profile, first.sandbox_id, "job-1", retry=False) == stale
        await extension.claim(stale, first)  # moved; then the worker died

        write_profile(home, min_ready=1, max_=1, version=2)  # while no worker ran
        catalog = Catalog.load(home)
        after = PoolKeeper(before._nc, before._store, catalog, extension, worker="b")
        await after.reconcile()  # as at its start: the moved member is forgotten
        await after._refill()
        await asyncio.gather(*after._tasks)
        (fresh,) = member_dirs(home)
        again = ProvisionRequest(
            sandbox_id=first.sandbox_id,
            profile=catalog.profile("profile.warm"),
            inputs={},
            attempt=2,
        )
        assert await after.claim(again.profile, again.sandbox_id, "job-1", retry=True) == fresh
        await extension.claim(fresh, again)  # takes the sandbox's directory from the old one
        state = json.loads((home / "local" / again.sandbox_id / "state.json").read_text())
        assert state["pool_member"] == fresh
        assert cgroups.sandbox_dirs(f"{stale}-{extension._root_tag}") == []
        assert await extension.exec(again.sandbox_id, ["true"], _discard) == 0


async def test_a_stop_drains_a_member_claimed_by_a_create_that_failed_before_taking_it(
    nats_server: Any, home: Path
) -> None:
    """A create claims beside its `provisioning`; when it fails before it takes the member
    (an input refused, a secret missing), the member stays in the pool directory, claimed
    by a sandbox that will never have it, until reconcile tears it down. A stop within those
    seconds drained only unclaimed members: this one kept running after `sandboxer down`."""
    async with keepers(nats_server.url, home, min_ready=1, max_=1) as keeper_for:
        keeper = keeper_for("a")
        await keeper._refill()
        await asyncio.gather(*keeper._tasks)
        (member_id,) = member_dirs(home)
        profile = Catalog.load(home).profile("profile.warm")
        # A sandbox the log has no provisioning of: as over as a failed one.
        assert await keeper.claim(profile, "sbxneverone01", "job-1", retry=False) == member_id

        await keeper.drain("drained: its worker stopped")
        assert member_dirs(home) == set()
        assert cgroups.sandbox_dirs(f"{member_id}-{keeper._members._root_tag}") == []
