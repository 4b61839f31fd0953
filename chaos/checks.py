"""The invariants checked after every scenario, against any running service.

Each check is an async function returning a list of problems, one sentence each (empty when
the invariant holds). They read the log itself (the events stream, raw), the machine (ext.local's
directories and holder processes under ``$SANDBOXER_HOME/local``) and the service's answers;
none trusts a view where the log can be read instead. ``urls`` is a list of NATS URLs or the
comma string ``SANDBOXER_NATS_URL`` takes.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

from nats.aio.client import Client as Nats
from nats.js.errors import BucketNotFoundError

from chaos.harness import ADMIN, bwrap_pids_under
from sandboxer import subjects
from sandboxer.bus.checkpoints import AccountCheckpoints
from sandboxer.bus.connect import connect
from sandboxer.bus.direct_get import read_subject
from sandboxer.bus.event_reader import read_events
from sandboxer.bus.view_checkpoints import ViewCheckpoints
from sandboxer.client import SandboxerClient
from sandboxer.domain.account_state import AccountBook, fold_book
from sandboxer.domain.found import FoundSandbox
from sandboxer.domain.pool_state import MemberState, evolve_member
from sandboxer.domain.sandbox_state import SandboxState, fold
from sandboxer.errors import SandboxerError
from sandboxer.events.account_events import ACCOUNT_EVENTS, AccountEvent
from sandboxer.events.codec import decode_event
from sandboxer.events.pool_events import POOL_EVENTS, PoolEvent, PoolMemberClaimed
from sandboxer.events.sandbox_events import SandboxEvent, SandboxReady
from sandboxer.extensions.local.cgroups import CGROUP_BASE
from sandboxer.extensions.local.egress import SLOTS_DIR
from sandboxer.extensions.local.inventory import scan_sandboxes
from sandboxer.extensions.local.leftovers import scan_leftovers
from sandboxer.extensions.local.sandbox_uids import UIDS_DIR
from sandboxer.extensions.local.workspace import POOL_DIR
from sandboxer.projections.projector import Projector
from sandboxer.projections.sandbox_view import FINGERPRINT
from sandboxer.projections.view_checkpointing import ViewCheckpointing

__all__ = [
    "TERMINAL_EVENTS",
    "Held",
    "LogView",
    "Sent",
    "check_all",
    "every_command_terminal",
    "held_against_log",
    "held_settles",
    "leaked_slots",
    "no_double_debit",
    "no_leaks",
    "no_secret_bytes",
    "pool_claims_once",
    "read_log",
    "replay_equals_live",
    "still_serves",
]

Urls = str | Sequence[str]

TERMINAL_EVENTS: dict[str, frozenset[str]] = {
    "create": frozenset({"ready", "failed"}),
    "recreate": frozenset({"ready", "failed"}),
    "restore": frozenset({"ready", "failed"}),
    "destroy": frozenset({"destroyed"}),
    "expire": frozenset({"destroyed"}),
    "extend_ttl": frozenset({"ttl_extended"}),
    "touch": frozenset({"active", "touched"}),
    "pause": frozenset({"paused", "pause_failed"}),
    "resume": frozenset({"resumed", "pause_failed"}),
    "snapshot": frozenset({"snapshot_finished"}),
}
"""Per verb, the events carrying a command's id that end it (a ``rejected`` ends any)."""

ENDED = frozenset({"destroyed", "failed"})
"""Statuses after which nothing more happens to a sandbox (and nothing of it may remain)."""

LIVE = frozenset({"ready", "active", "paused", "pausing", "resuming", "expired"})
"""Statuses in which the backend holds the sandbox: one holder, exactly."""


class Sent(NamedTuple):
    """A command a scenario published: its verb and, when it names one, its sandbox."""

    verb: str
    sandbox_id: str | None = None


def _url_list(urls: Urls) -> list[str]:
    return [u for u in urls.split(",") if u] if isinstance(urls, str) else list(urls)


@asynccontextmanager
async def _bus(urls: Urls) -> AsyncIterator[Nats]:
    nc = await connect(_url_list(urls), name="chaos-check", long_lived=False)
    try:
        yield nc
    finally:
        await nc.close()


@asynccontextmanager
async def _client(urls: Urls) -> AsyncIterator[SandboxerClient]:
    client = await SandboxerClient.connect(_url_list(urls), actor=ADMIN)
    try:
        yield client
    finally:
        await client.close()


class LogView:
    """The events stream read from the start, raw, and what the checks need of it;
    :meth:`catch_up` reads only what was appended since."""

    def __init__(self) -> None:
        self.last_seq = 0
        self.by_command: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
        """command id -> ``(event type, sandbox id)`` of every event carrying it."""
        self.sandbox_events: dict[str, list[SandboxEvent]] = defaultdict(list)
        self.account_events: list[dict[str, Any]] = []
        self.pool_events: dict[str, list[PoolEvent]] = defaultdict(list)
        """member id -> its events (``sandboxer.evt.pool.<member>.*``), in log order."""
        self.raw: list[tuple[int, str, bytes]] = []
        self.undecodable: list[str] = []

    async def catch_up(self, nc: Nats) -> None:
        js = nc.jetstream()
        async for seq, subject, data, _pending in read_events(js, start_seq=self.last_seq + 1):
            self.last_seq = seq
            self._take(seq, subject, data)

    def _take(self, seq: int, subject: str, data: bytes) -> None:
        self.raw.append((seq, subject, data))
        try:
            body = json.loads(data)
        except ValueError:
            self.undecodable.append(f"event #{seq} on {subject} is not JSON")
            return
        kind = body.get("type")
        if body.get("command_id"):
            self.by_command[str(body["command_id"])].append((kind, body.get("sandbox_id")))
        if subject.startswith("sandboxer.evt.sandbox."):
            try:
                event = decode_event(data)
            except Exception as exc:  # any decoding failure is a finding, not a crash
                self.undecodable.append(f"event #{seq} on {subject}: {exc}")
                return
            self.sandbox_events[subject.split(".")[3]].append(event)  # type: ignore[arg-type]
        elif subject.startswith("sandboxer.evt.account."):
            self.account_events.append(body)
        elif subject.startswith("sandboxer.evt.pool."):
            try:
                pool_event = decode_event(data)
            except Exception as exc:
                self.undecodable.append(f"event #{seq} on {subject}: {exc}")
                return
            if isinstance(pool_event, POOL_EVENTS):
                self.pool_events[pool_event.member_id].append(pool_event)

    def states(self) -> dict[str, SandboxState]:
        return {sid: fold(sid, events) for sid, events in self.sandbox_events.items()}

    def member_states(self) -> dict[str, MemberState]:
        """Every pool member folded with the domain's own ``evolve_member``."""
        folded = {}
        for member_id, events in self.pool_events.items():
            state = MemberState(member_id=member_id)
            for event in events:
                state = evolve_member(state, event)
            folded[member_id] = state
        return folded

    def claimants(self) -> dict[str, str]:
        """member id -> the sandbox that claimed it (pool members become sandboxes)."""
        return {
            member_id: state.claimed_by
            for member_id, state in self.member_states().items()
            if state.claimed_by is not None
        }


async def read_log(urls: Urls) -> LogView:
    """The whole events stream as it is now."""
    view = LogView()
    async with _bus(urls) as nc:
        await view.catch_up(nc)
    return view


# -- every command terminal ----------------------------------------------------------------------


def _unfinished(
    sent: Mapping[str, Sent], view: LogView, states: Mapping[str, SandboxState], drained: bool
) -> dict[str, str]:
    """command id -> why it has not ended yet."""
    open_: dict[str, str] = {}
    for command_id, (verb, sandbox_id) in sent.items():
        seen = view.by_command.get(command_id, [])
        kinds = {kind for kind, _ in seen}
        if "rejected" in kinds or kinds & TERMINAL_EVENTS.get(verb, frozenset()):
            continue
        sandboxes = {sid for _, sid in seen if sid} | ({sandbox_id} if sandbox_id else set())
        # Once the control worker has handled every command: work a sandbox's end cut short
        # is over, and two silences are outcomes by design: a destroy while another tears
        # the sandbox down (the first's outcome is both's), and a touch soon after another
        # (sandbox_lifetime.decide_touch). Any other command recording nothing is lost.
        ended = any(s in states and states[s].status in ENDED for s in sandboxes)
        cut_short = ended and (kinds or verb in {"destroy", "expire"})
        if drained and (cut_short or (verb == "touch" and not kinds)):
            continue
        status = ", ".join(f"{s} is {states[s].status}" for s in sandboxes if s in states)
        open_[command_id] = f"{verb} {command_id}: events {sorted(kinds) or 'none'}" + (
            f" ({status})" if status else ""
        )
    return open_


async def _control_drained(nc: Nats) -> bool:
    try:
        info = await nc.jetstream().consumer_info(subjects.COMMANDS_STREAM, "control")
    except Exception:  # no consumer yet, or no leader now: not drained as far as we know
        return False
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def every_command_terminal(
    urls: Urls, sent: Mapping[str, Sent], *, timeout: float = 120.0
) -> list[str]:
    """Every command in ``sent`` reached its end within ``timeout`` (waited for): a
    ``rejected`` event, an event ending its verb (TERMINAL_EVENTS), or, once the control
    worker's consumer holds nothing (none pending, none unacknowledged), its sandbox
    destroyed or failed, or (a touch) nothing recorded."""
    view = LogView()
    deadline = time.monotonic() + timeout
    open_: dict[str, str] = dict.fromkeys(sent, "not read yet")
    async with _bus(urls) as nc:
        while True:
            drained = await _control_drained(nc)  # first: what it handled is in the log read next
            await view.catch_up(nc)
            open_ = _unfinished(sent, view, view.states(), drained)
            if not open_ or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
    if not open_:
        return []
    shown = list(open_.values())[:5]
    more = f" (and {len(open_) - 5} more)" if len(open_) > 5 else ""
    return [
        f"{len(open_)} of {len(sent)} commands reached no terminal event in "
        f"{timeout:g} s: {'; '.join(shown)}{more}"
    ]


# -- no leaks ------------------------------------------------------------------------------------


class Holders(NamedTuple):
    """The outermost bubblewrap processes under ext.local's root (bwrap forks once inside
    its pid namespace: a sandbox shows two, of which the outer one is its holder here)."""

    sandboxes: dict[str, list[int]]
    """sandbox id -> pids, for holders made cold (their command line names the sandbox)."""
    members: dict[str, list[int]]
    """pool member id -> pids: a warm member's holder names ``.pool/<member>`` for good, also
    once a claim moved its directory and it became a sandbox (bwrap's arguments stay)."""


def _holders(root: Path) -> Holders:
    pids = bwrap_pids_under(root)
    in_root = re.compile(re.escape(str(root)).encode() + rb"/([a-z0-9]+)/")
    in_pool = re.compile(re.escape(str(root / POOL_DIR)).encode() + rb"/([a-z0-9]+)/")
    found = Holders(defaultdict(list), defaultdict(list))
    for pid, parent in pids.items():
        if parent in pids:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        for ids, into in ((in_root, found.sandboxes), (in_pool, found.members)):
            for name in {m.decode() for m in ids.findall(cmdline)}:
                into[name].append(pid)
    return found


LEFTOVERS_SETTLE = 2.0
"""Seconds between the two looks of :func:`no_leaks` for leftovers: a teardown under way has
removed a sandbox's groups and freed its slots before it removes its directory, which one
look may see in between; what is there at both looks is a leak."""


def leaked_slots(
    root: Path,
    *,
    uids_dir: Path = UIDS_DIR,
    links_dir: Path = SLOTS_DIR,
    cgroup_base: Path = CGROUP_BASE,
) -> list[str]:
    """Uid and link-slot files (host-wide, under ``/run/sandboxer``) and cgroups that the
    ext.local root ``root`` made for a sandbox none of its directories, nor its pool's, holds
    any more: a teardown frees and removes them before it removes the directory, so none may
    be left (blocking). Other roots' (another test's, another suite's) are not looked at.
    ext.local's own scan (``scan_leftovers``), without the backend's look for a process
    still using one: here even a used one is a leak."""
    left = scan_leftovers(root, uids_dir=uids_dir, links_dir=links_dir, cgroup_base=cgroup_base)
    return [
        f"{item.sandbox_id}: no directory under {root}, yet uids {list(item.uids)}, link "
        f"slots {list(item.link_slots)} and cgroups {list(item.cgroups)} are still there"
        for item in left
    ]


async def no_leaks(urls: Urls, home: Path) -> list[str]:
    """ext.local holds exactly what the log says is live: no directory or holder of a sandbox
    the log calls destroyed or failed (or never heard of), one holder per live sandbox, and
    no uid or link slot or cgroup of the suite's root without its sandbox's directory
    (:func:`leaked_slots`). A claimed pool member's holder counts as its sandbox's;
    unclaimed members are the pool's (:func:`pool_claims_once`)."""
    view = await read_log(urls)
    states = view.states()
    root = home / "local"
    on_disk = {f.sandbox_id: f for f in await asyncio.to_thread(scan_sandboxes, root)}
    found = await asyncio.to_thread(_holders, root)
    holders = defaultdict(list, found.sandboxes)
    for member_id, sandbox_id in view.claimants().items():
        holders[sandbox_id] += found.members.get(member_id, [])
    problems: list[str] = []
    for sandbox_id, item in sorted(on_disk.items()):
        state = states.get(sandbox_id)
        if state is None:
            problems.append(f"{sandbox_id}: a directory under {root} the log never mentions")
        elif state.status in ENDED:
            problems.append(f"{sandbox_id}: {state.status} in the log, its directory remains")
        elif state.status in LIVE and not item.alive:
            problems.append(f"{sandbox_id}: {state.status} in the log, its holder is dead")
    for sandbox_id, pids in sorted(holders.items()):
        if not pids:
            continue
        state = states.get(sandbox_id)
        status = "unknown to the log" if state is None else state.status
        if state is None or state.status in ENDED:
            problems.append(f"{sandbox_id}: {status}, yet holder pids {pids} run")
        elif len(pids) > 1:
            problems.append(f"{sandbox_id}: duplicated, {len(pids)} holders {pids}")
    for sandbox_id, state in sorted(states.items()):
        if state.status in LIVE and state.extension == "ext.local" and sandbox_id not in on_disk:
            problems.append(f"{sandbox_id}: {state.status} in the log, nothing on disk")
    leaked = await asyncio.to_thread(leaked_slots, root)
    if leaked:
        await asyncio.sleep(LEFTOVERS_SETTLE)
        lasting = set(await asyncio.to_thread(leaked_slots, root))
        leaked = [problem for problem in leaked if problem in lasting]
    return problems + leaked


class Held(NamedTuple):
    """What one kind of thing outside sandboxer holds of our sandboxes (a provider's
    sandboxes, a host's containers or workspace directories), read from the thing itself."""

    what: str
    """How a problem names it: ``E2B sandboxes``, ``containers on the docker engine``..."""
    backends: frozenset[str]
    """The extensions whose sandboxes it may hold."""
    counts: Mapping[str, int]
    """Our sandbox id -> how many it holds of it now."""
    each: int = 1
    """How many a live sandbox has (a compose stack's containers: one per service)."""


def held_against_log(view: LogView, held: Sequence[Held]) -> list[str]:
    """Each :class:`Held` against the log: anything of a sandbox the log ended, never heard
    of, or gave another backend is a leak; more than ``each`` of one sandbox a duplicate;
    fewer, or none, of a sandbox the log calls live on one of its backends, a loss."""
    states = view.states()
    problems: list[str] = []
    for holding in held:
        for sandbox_id, count in sorted(holding.counts.items()):
            state = states.get(sandbox_id)
            if state is None or state.status in ENDED:
                status = "unknown to the log" if state is None else state.status
                problems.append(f"{holding.what}: {count} of {sandbox_id}, {status}")
            elif state.extension not in holding.backends:
                problems.append(
                    f"{holding.what}: {count} of {sandbox_id}, placed on {state.extension}"
                )
            elif count > holding.each:
                problems.append(
                    f"{holding.what}: {sandbox_id} duplicated, {count} (one sandbox has "
                    f"{holding.each})"
                )
        for sandbox_id, state in sorted(states.items()):
            if state.extension not in holding.backends or state.status not in LIVE:
                continue
            count = holding.counts.get(sandbox_id, 0)
            if count < holding.each:
                problems.append(
                    f"{holding.what}: {sandbox_id} {state.status} in the log, {count} of "
                    f"{holding.each} there"
                )
    return problems


async def held_settles(
    urls: Urls, read: Callable[[], Awaitable[Sequence[Held]]], *, within: float
) -> tuple[list[str], float]:
    """:func:`held_against_log` once it finds nothing (or ``within`` seconds have passed:
    what it finds then), and how long that took. A kill leaves what a later attempt or a
    leak sweep removes a moment later; only what stays is a leak."""
    started = time.monotonic()
    while True:
        problems = held_against_log(await read_log(urls), await read())
        if not problems or time.monotonic() - started > within:
            return problems, time.monotonic() - started
        await asyncio.sleep(0.5)


# -- warm pools ----------------------------------------------------------------------------------


def _served(view: LogView) -> dict[str, set[str]]:
    """member id -> the sandboxes whose ``ready`` names it as their ``pool_member``."""
    served: dict[str, set[str]] = defaultdict(set)
    for sandbox_id, events in view.sandbox_events.items():
        for event in events:
            if isinstance(event, SandboxReady) and event.pool_member:
                served[event.pool_member].add(sandbox_id)
    return served


def _claims_in_log(view: LogView, *, members_may_die: bool) -> list[str]:
    """Each member claimed at most once, by one sandbox, whose ``ready`` names it; no
    ``ready`` naming a member the log does not say it claimed."""
    problems: list[str] = []
    served = _served(view)
    members = view.member_states()
    states = view.states()
    for member_id, sandboxes in sorted(served.items()):
        if len(sandboxes) > 1:
            problems.append(
                f"member {member_id} served {len(sandboxes)} sandboxes {sorted(sandboxes)}"
            )
        member = members.get(member_id)
        for sandbox_id in sorted(sandboxes):
            if member is None or member.claimed_by != sandbox_id:
                said = (
                    "unknown"
                    if member is None
                    else f"{member.status}, claimed by {member.claimed_by}"
                )
                problems.append(
                    f"{sandbox_id}: its ready names member {member_id}, which the log calls {said}"
                )
    for member_id, events in sorted(view.pool_events.items()):
        claims = [e.sandbox_id for e in events if isinstance(e, PoolMemberClaimed)]
        if len(claims) > 1:
            problems.append(f"member {member_id} claimed {len(claims)} times, by {claims}")
    for member_id, member in sorted(members.items()):
        if member.claimed_by is None:
            continue
        claimant = member.claimed_by
        named = {m for m, sandboxes in served.items() if claimant in sandboxes}
        sandbox = states.get(claimant)
        readied_at = [
            e.at for e in view.sandbox_events.get(claimant, []) if isinstance(e, SandboxReady)
        ]
        readied = bool(readied_at)
        claimed_at = [
            e.at
            for e in view.pool_events.get(member_id, [])
            if isinstance(e, PoolMemberClaimed) and e.sandbox_id == claimant
        ]
        # A job delivered again after its sandbox was made claims beside a `provisioning`
        # that conflicts: that member serves no one and the keeper tears it down.
        late_claim = readied and bool(claimed_at) and min(claimed_at) > min(readied_at)
        if named - {member_id}:
            problems.append(
                f"{claimant} claimed member {member_id} but its ready names {sorted(named)}"
            )
        elif readied and not named and not members_may_die and not late_claim:
            problems.append(
                f"{claimant} claimed member {member_id}, then was made cold "
                "(its member was found dead or gone at the claim)"
            )
        elif not readied and (sandbox is None or sandbox.status not in ENDED):
            status = "unknown to the log" if sandbox is None else sandbox.status
            problems.append(f"{claimant} claimed member {member_id} and is {status}, never ready")
    return problems


def _member_dir_problem(member: MemberState | None, item: FoundSandbox) -> str | None:
    """What is wrong with a directory under ``.pool`` that the log calls ``member``."""
    if member is None:
        return "a directory under .pool the log never mentions"
    if member.status in {"removed", "claimed"}:
        by = f" by {member.claimed_by}" if member.claimed_by else ""
        return f"{member.status}{by} in the log, its directory remains in .pool"
    if member.status == "adding":
        return "still being made (adding)"
    if not item.alive:
        return "ready in the log, its holder is dead"
    return None


def _pool_against_machine(
    view: LogView, root: Path, bounds: Mapping[str, tuple[int, int]]
) -> list[str]:
    """What lies under ``<root>/.pool`` and runs from there against the log (blocking)."""
    members = view.member_states()
    on_disk = {f.sandbox_id: f for f in scan_sandboxes(root / POOL_DIR)}
    holders = _holders(root).members
    problems: list[str] = []
    for member_id, item in sorted(on_disk.items()):
        problem = _member_dir_problem(members.get(member_id), item)
        if problem:
            problems.append(f"member {member_id}: {problem}")
    for member_id, pids in sorted(holders.items()):
        member = members.get(member_id)
        if member is None or member.status == "removed":
            status = "unknown to the log" if member is None else "removed"
            problems.append(f"member {member_id}: {status}, yet holder pids {pids} run")
        elif len(pids) > 1:
            problems.append(f"member {member_id}: {len(pids)} holders {pids}")
    ready: Counter[str] = Counter()
    for member_id, member in sorted(members.items()):
        if member.status in {"adding", "ready"} and member_id not in on_disk:
            problems.append(f"member {member_id}: {member.status} in the log, nothing in .pool")
        if member.status == "ready":
            ready[member.profile] += 1
    for profile, (min_ready, max_members) in sorted(bounds.items()):
        if not min_ready <= ready[profile] <= max_members:
            problems.append(
                f"pool of {profile}: {ready[profile]} ready members in the log, "
                f"not within min_ready {min_ready} and max {max_members}"
            )
    return problems


async def pool_claims_once(
    urls: Urls,
    home: Path,
    *,
    bounds: Mapping[str, tuple[int, int]],
    settle: float = 20.0,
    members_may_die: bool = False,
) -> list[str]:
    """Warm pools (docs/pools.md) kept their word: no member served two sandboxes, each
    claimed member is one sandbox's (its ``ready`` names it, unless it never became ready),
    and, once the keepers have settled (waited up to ``settle`` s: they reconcile every 5 s),
    ``$SANDBOXER_HOME/local/.pool`` holds exactly the members the log calls adding or
    ready, alive, no holder runs for a removed member, and each pool in ``bounds``
    (profile -> ``(min_ready, max)``) holds between its bounds of ready members.
    ``members_may_die``: the scenario kills members, so a claim may be made cold."""
    deadline = time.monotonic() + settle
    while True:
        view = await read_log(urls)
        problems = _claims_in_log(view, members_may_die=members_may_die)
        problems += await asyncio.to_thread(_pool_against_machine, view, home / "local", bounds)
        if not problems or time.monotonic() > deadline:
            return problems
        await asyncio.sleep(1.0)


# -- no double debit -----------------------------------------------------------------------------

_MONEY = ("credits_added", "credits_reserved", "credits_released", "usage_metered")


async def no_double_debit(urls: Urls) -> list[str]:
    """Per project, no credit movement recorded twice for one thing: one event per command id
    (client ids and the derived ``reserve-``/``extend-``/``release-``/``meter-`` ids,
    domain/account_decide.py), one metering and one create reservation per sandbox."""
    return double_debits(await read_log(urls))


async def checkpoints_agree(urls: Urls) -> list[str]:
    """Every account checkpoint in the bucket is the fold of the log up to the event it names
    (bus/checkpoints.py), and the sandbox view's checkpoint is the view a rebuild up to its
    position makes (bus/view_checkpoints.py): a process that starts from one decides, or
    answers, on what the log says. A checkpoint the service would not read (of another log,
    unreadable) is a problem too."""
    problems: list[str] = []
    async with _bus(urls) as nc:
        js = nc.jetstream()
        try:  # read as it is: opening it as the service does would purge and create
            bucket = await js.object_store(subjects.CHECKPOINTS_BUCKET)
        except BucketNotFoundError:
            return []
        problems += await _view_checkpoint_problems(nc, ViewCheckpoints(js, bucket))
        checkpoints = AccountCheckpoints(js, bucket)
        for project in await checkpoints.projects():
            kept = await checkpoints.read(project)
            if kept is None:
                problems.append(f"the checkpoint of account {project} cannot be read")
                continue
            events: list[AccountEvent] = []
            async for seq, data in read_subject(nc, subjects.account_events_filter(project)):
                if seq > kept.last_seq:
                    break
                event = decode_event(data)
                if isinstance(event, ACCOUNT_EVENTS):
                    events.append(event)
            if fold_book(AccountBook.empty(project), events) != kept.book:
                problems.append(
                    f"the checkpoint of account {project} at event {kept.last_seq} is not the "
                    "fold of the log up to it"
                )
    return problems


async def _view_checkpoint_problems(nc: Nats, views: ViewCheckpoints) -> list[str]:
    """The view's checkpoint of this code's shape, if any, read as a projector reads it and
    verified as ``sandboxer replay --verify`` verifies a live view: row by row against a
    rebuild from sequence 1 up to its position."""
    stored = await views.stored(FINGERPRINT)
    if stored is None:
        return []
    with tempfile.TemporaryDirectory(prefix="chaos-view-") as tmp:
        path = Path(tmp) / "view.sqlite3"
        if await ViewCheckpointing(views, path, after=1).fetch(path) is None:
            return [f"the view's checkpoint at event {stored.position} cannot be read"]
        projector = Projector(nc, nc.jetstream(), path)
        await projector.open()
        try:
            report = await projector.verify()
        finally:
            await projector.close()
    return [
        f"the view's checkpoint at event {stored.position}: {difference}"
        for difference in report.differences or []
    ]


def double_debits(view: LogView) -> list[str]:
    """What :func:`no_double_debit` finds in the log ``view``."""
    by_command: Counter[tuple[str, str, str]] = Counter()
    metered: Counter[tuple[str, str]] = Counter()
    reserved: Counter[tuple[str, str]] = Counter()
    for event in view.account_events:
        kind, project = str(event.get("type")), str(event.get("project"))
        if kind not in _MONEY:
            continue
        by_command[(project, kind, str(event.get("command_id")))] += 1
        if kind == "usage_metered":
            metered[(project, str(event.get("sandbox_id")))] += 1
        if kind == "credits_reserved" and event.get("reason", "create") == "create":
            reserved[(project, str(event.get("sandbox_id")))] += 1
    problems = [
        f"project {p}: {kind} recorded {n} times for command {c}"
        for (p, kind, c), n in by_command.items()
        if n > 1
    ]
    problems += [
        f"project {p}: sandbox {s} metered {n} times" for (p, s), n in metered.items() if n > 1
    ]
    problems += [
        f"project {p}: sandbox {s} reserved {n} times at create"
        for (p, s), n in reserved.items()
        if n > 1
    ]
    return problems


# -- no secret bytes -----------------------------------------------------------------------------


def _forms(value: str | bytes) -> set[bytes]:
    """The value's raw bytes and its JSON-escaped form (events are JSON)."""
    raw = value if isinstance(value, bytes) else value.encode()
    text = raw.decode(errors="replace")
    return {
        raw,
        json.dumps(text)[1:-1].encode(),
        json.dumps(text, ensure_ascii=False)[1:-1].encode(),
    }


def _files_holding(files: Iterable[Path], needles: set[bytes]) -> list[str]:
    found = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if any(n in data for n in needles):
            found.append(str(path))
    return found


async def no_secret_bytes(
    values: Sequence[str | bytes], urls: Urls, *, files: Sequence[Path] = ()
) -> list[str]:
    """None of ``values`` appears in any message (subject or body) of the events stream, read
    raw, nor in any of ``files`` (the projector's database, logs...)."""
    view = await read_log(urls)
    problems = []
    for value in values:
        needles = {n for n in _forms(value) if n}
        shown = repr(value)[:12] + "..."
        hits = [
            seq
            for seq, subject, data in view.raw
            if any(n in data or n in subject.encode() for n in needles)
        ]
        if hits:
            problems.append(f"secret {shown} in {len(hits)} events (first #{hits[0]})")
        in_files = await asyncio.to_thread(_files_holding, files, needles)
        if in_files:
            problems.append(f"secret {shown} in {', '.join(in_files)}")
    return problems


# -- replay equals live, still serves ------------------------------------------------------------


async def replay_equals_live(urls: Urls) -> list[str]:
    """The projector's rebuild from the whole log equals its live view (``replay --verify``)."""
    try:
        async with _client(urls) as client:
            report = await client.replay(verify=True)
    except SandboxerError as exc:
        return [f"replay --verify failed: {exc}"]
    if report.get("verified"):
        return []
    differences = [str(d) for d in report.get("differences", [])]
    return [f"replay differs from live ({len(differences)}): {'; '.join(differences[:5])}"]


async def still_serves(urls: Urls, *, profile: str = "profile.local") -> list[str]:
    """A fresh client's create -> ready -> destroy works."""
    try:
        async with _client(urls) as client:
            ready = await client.create(profile, timeout=90)
            await client.destroy(ready["sandbox_id"], timeout=60)
    except SandboxerError as exc:
        return [f"a fresh create -> ready -> destroy failed: {exc}"]
    return []


# -- all of them ---------------------------------------------------------------------------------


async def check_all(
    urls: Urls,
    home: Path,
    *,
    sent: Mapping[str, Sent] | None = None,
    secrets: Sequence[str | bytes] = (),
    secret_files: Sequence[Path] = (),
    terminal_timeout: float = 120.0,
    client_urls: Urls | None = None,
) -> list[str]:
    """Every check, in an order where each can rely on the ones before: commands settle
    first, the service serving is proven last (after the leak check, so its own sandbox is
    not counted while it is being made). Each problem is prefixed with its check's name.
    ``client_urls``: what a client connects to, where that is another identity than the
    checks' (an embedded server's client identity, which may send commands and ask for a
    replay)."""
    problems: list[str] = []

    def note(check: str, found: list[str]) -> None:
        problems.extend(f"{check}: {p}" for p in found)

    note(
        "every_command_terminal",
        await every_command_terminal(urls, sent or {}, timeout=terminal_timeout),
    )
    note("no_leaks", await no_leaks(urls, home))
    note("no_double_debit", await no_double_debit(urls))
    note("checkpoints_agree", await checkpoints_agree(urls))
    note("no_secret_bytes", await no_secret_bytes(secrets, urls, files=secret_files))
    as_client = urls if client_urls is None else client_urls
    note("replay_equals_live", await replay_equals_live(as_client))
    note("still_serves", await still_serves(as_client))
    view = await read_log(urls)
    note("log", view.undecodable)
    return problems
