"""Where the time of one local create goes, step by step, on an idle service.

    python bench/bench_steps.py                      # the steps of this checkout
    python bench/bench_steps.py --against HEAD~3     # and other revisions (repeatable), same run

The service runs in its own process (as ``sandboxer up`` does, against a private
nats-server) with timing hooks wrapped around the functions each step runs; the
client, in another process, wraps its own. Both record spans on the machine's
monotonic clock, so they line up. Each create is timed from the client's call
to its ``ready`` event; a pause between creates keeps the service idle, and a
step belongs to the create whose window it starts in.

``--against REV`` (repeatable) extracts REV's tree (``git archive``) and
measures it in the same run, alternating rounds with this checkout so that the
load of other users on the machine falls on both alike. The hooks skip what a
revision does not have. The figures are for comparison in one run only.

``--pool`` measures creates served by a warm pool instead (a profile whose pool
keeps a few members ready, full again before each create). ``--timeline`` also prints every
step of the create of median length in the order they started: where its time went, hop by
hop (docs/performance.md#the-warm-path).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import functools
import importlib
import inspect
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PAUSE_BETWEEN = 0.05  # seconds after each create and destroy: the next create meets an idle service

Span = tuple[str, int, int]  # name, start ns, end ns (CLOCK_MONOTONIC: shared by processes)
SPANS: list[Span] = []

# (module, attribute path, step name). Absent ones are skipped: an older revision lacks some.
SERVICE_HOOKS = [
    ("sandboxer.workers.control", "ControlWorker.handle", "control: handle command"),
    ("sandboxer.workers.control", "bus_identity_refusal", "control: identity check"),
    ("sandboxer.workers.control", "ControlWorker._to_domain", "control: admission + routing"),
    ("sandboxer.workers.control", "reserve_for_create", "control: credits"),
    ("sandboxer.workers.control", "apply", "control: decide+append requested/routed"),
    ("sandboxer.workers.control", "ControlWorker._dispatch", "control: publish job"),
    ("sandboxer.bus.jetstream_store", "JetStreamEventStore.load", "store: load (direct get)"),
    ("sandboxer.bus.jetstream_store", "JetStreamEventStore.append", "store: append"),
    ("sandboxer.workers.extension_worker", "ExtensionWorker.handle", "ext: handle job"),
    ("sandboxer.workers.extension_worker", "ExtensionWorker._provision", "ext: provision job"),
    ("sandboxer.workers.deciding", "apply", "ext: load+decide+append"),
    ("sandboxer.workers.extension_worker", "backend_for", "ext: backend_for"),
    ("sandboxer.workers.extension_worker", "resolve_secrets", "ext: resolve secrets"),
    ("sandboxer.workers.extension_worker", "run_setup_commands", "ext: setup commands"),
    ("sandboxer.extensions.local.backend", "LocalExtension.provision", "local: provision"),
    ("sandboxer.extensions.local.backend", "LocalExtension.teardown", "local: teardown"),
    ("sandboxer.extensions.local.workspace", "write_state", "local: write state.json"),
    ("sandboxer.extensions.local.workspace", "Layout.create", "local: make directories"),
    ("sandboxer.extensions.local.workspace", "chown_tree", "local: chown workspace"),
    ("sandboxer.extensions.local.cgroups", "setup", "local: cgroups"),
    ("sandboxer.extensions.local.freezer", "create_group", "local: freezer group"),
    ("sandboxer.extensions.local.backend", "spawn_holder", "local: spawn holder"),
    ("sandboxer.extensions.local.holder", "launch_detached", "local: launcher + bwrap info"),
    ("sandboxer.extensions.local.holder", "read_pipe", "local: read bwrap's info pipe"),
    ("sandboxer.extensions.local.holder", "_until_set_up", "local: wait for bwrap set-up"),
    ("asyncio", "create_subprocess_exec", "fork+exec a process"),
    ("sandboxer.extensions.local.backend", "LocalExtension.wait_ready", "local: wait_ready"),
    ("sandboxer.workers.pool_keeper", "PoolKeeper.claim", "ext: claim a pool member on record"),
    ("sandboxer.extensions.local.backend", "LocalExtension.claim", "local: claim (move, inputs)"),
    ("sandboxer.extensions.local.backend", "LocalExtension._run_inside", "local: nsenter run"),
    ("nats.aio.msg", "Msg.ack", "ack"),
    # A warm claim with nothing to apply (workers/claim_ahead.py), and what every append runs.
    ("sandboxer.workers.extension_worker", "ExtensionWorker._ahead", "ext: claim ahead"),
    ("sandboxer.workers.extension_worker", "ExtensionWorker._profile_of", "ext: profile of"),
    ("sandboxer.workers.claim_ahead", "_plan", "ahead: plan"),
    ("sandboxer.workers.pool_keeper", "PoolKeeper.pick", "ahead: pick a member"),
    ("sandboxer.workers.claim_ahead", "_moved_and_sent", "ahead: move, then send"),
    ("sandboxer.extensions.local.backend", "LocalExtension._take", "local: take the member"),
    ("sandboxer.extensions.local.backend", "LocalExtension._readiness", "local: readiness"),
    ("sandboxer.workers.claim_ahead", "_sends", "ahead: the three appends started"),
    ("sandboxer.extensions.local.workspace", "read_state", "local: read state.json"),
    ("sandboxer.domain.admission", "route", "control: route"),
    ("sandboxer.domain.admission", "derive_sandbox_id", "control: derive the sandbox id"),
    ("sandboxer.bus.jetstream_store", "encode_event", "store: encode an event"),
    ("sandboxer.bus.ack_inbox", "_AckInbox.publish_all", "bus: publish awaiting acks"),
    ("nats.aio.client", "Client.publish", "nats: publish"),
]
CLIENT_HOOKS = [
    ("sandboxer.client.bus", "SandboxerClient.create", "client: create"),
    ("sandboxer.client.bus", "derive_sandbox_id", "client: derive the sandbox id"),
    ("nats.aio.client", "Client.subscribe", "client: subscribe"),
    ("sandboxer.client.bus", "SandboxerClient.publish_command", "client: publish command"),
    ("sandboxer.command_outcomes", "OutcomeWatcher._catch_up", "client: read logged outcome"),
    ("sandboxer.command_outcomes", "OutcomeWatcher._note_position", "client: note position"),
]


def _record(name: str, start: int) -> None:
    SPANS.append((name, start, time.monotonic_ns()))


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            start = time.monotonic_ns()
            try:
                return await fn(*args, **kwargs)
            finally:
                _record(name, start)

        return timed_async

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            _record(name, start)

    return timed


def install(hooks: list[tuple[str, str, str]]) -> None:
    for module_name, path, name in hooks:
        try:
            owner: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        *parents, attribute = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent, None)
        if owner is None or not hasattr(owner, attribute):
            continue
        setattr(owner, attribute, _timed(name, getattr(owner, attribute)))
    # The moment a worker's fetch hands it messages (the wait for them is not a step). The
    # loop calls fetch_some; a revision before 2026-12-06 called fetch_one.
    with contextlib.suppress(ImportError, AttributeError):
        pull_loop = importlib.import_module("sandboxer.workers.pull_loop")
        name = "fetch_some" if hasattr(pull_loop, "fetch_some") else "fetch_one"
        fetch = getattr(pull_loop, name)

        async def fetch_marked(psub: Any, durable: str, *most: int) -> Any:
            got = await fetch(psub, durable, *most)
            if got and got is not pull_loop.FETCH_FAILED:  # a message, or a list of some
                now = time.monotonic_ns()
                SPANS.append((f"{durable}: message fetched", now, now))
            return got

        setattr(pull_loop, name, fetch_marked)


def dump_spans(path: Path) -> None:
    path.write_text(json.dumps(SPANS))


# -- the service process -----------------------------------------------------------------------


def serve(spans_file: Path) -> None:
    install(SERVICE_HOOKS)
    atexit.register(dump_spans, spans_file)
    from sandboxer.cli.app import main as cli_main

    sys.argv = ["sandboxer", "up"]
    with contextlib.suppress(SystemExit):
        cli_main()


# -- the measuring process (client side) --------------------------------------------------------


# The baseline: bubblewrap running ``true`` with the isolation flags of bench_create's baseline.
BWRAP_TRUE = [
    "bwrap", "--unshare-all", "--die-with-parent", "--new-session",
    "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64", "--ro-bind", "/etc", "/etc",
    "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--clearenv", "true",
]  # fmt: skip


async def raw_bwrap(n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(*BWRAP_TRUE)
        await process.wait()
        times.append((time.perf_counter() - started) * 1000)
    return times


POOL_PROFILE = "profile.steps-pool"
POOL_SIZE = 4


async def measure(creates: int, pool: bool) -> dict[str, Any]:
    install(CLIENT_HOOKS)
    from _pools import pool_profile, wait_pool_full

    from sandboxer.bus.nats_server import NatsServerProcess
    from sandboxer.client import SandboxerClient

    @contextlib.asynccontextmanager
    async def nats(tmp: Path) -> AsyncIterator[NatsServerProcess]:
        server = NatsServerProcess(tmp / "nats")
        await server.start()
        try:
            yield server
        finally:
            await server.stop()

    with tempfile.TemporaryDirectory(prefix="sandboxer-steps-") as raw_tmp:
        tmp = Path(raw_tmp)
        async with nats(tmp) as server:
            home = tmp / "home"
            (home / "profiles").mkdir(parents=True)
            profile = POOL_PROFILE if pool else "profile.local"
            if pool:
                (home / "profiles" / f"{POOL_PROFILE}.yaml").write_text(
                    pool_profile(POOL_PROFILE, POOL_SIZE)
                )
            spans_file = tmp / "service-spans.json"
            env = dict(os.environ, SANDBOXER_HOME=str(home), SANDBOXER_NATS_URL=server.url)
            env["SANDBOXER_HTTP_ADDR"] = "off"  # not on a create's path
            with (tmp / "service.log").open("ab") as log:
                service = subprocess.Popen(  # noqa: ASYNC220 - before anything is timed
                    [sys.executable, __file__, "--serve", str(spans_file)],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            client = await SandboxerClient.connect([server.url], actor={"type": "atm", "id": "b"})
            windows: list[tuple[int, int]] = []  # start, end
            try:
                for _ in range(400):
                    with contextlib.suppress(Exception):
                        await client.health()
                        break
                    if service.poll() is not None:
                        tail = (tmp / "service.log").read_text(errors="replace")[-3000:]
                        raise RuntimeError(f"the service exited:\n{tail}")
                    await asyncio.sleep(0.05)
                for _ in range(3):  # warm-up: consumers, imports, caches
                    if pool:
                        await wait_pool_full(client, POOL_PROFILE, POOL_SIZE, within=120)
                    ready = await client.create(profile)
                    await client.destroy(ready["sandbox_id"])
                await asyncio.sleep(0.2)
                baseline = await raw_bwrap(creates)
                SPANS.clear()

                def saw(event: dict[str, Any]) -> None:
                    now = time.monotonic_ns()
                    SPANS.append((f"client: sees {event.get('type')}", now, now))

                for _ in range(creates):
                    if pool:  # full again, and then as idle as a sequential create finds it
                        await wait_pool_full(client, POOL_PROFILE, POOL_SIZE, within=60)
                        await asyncio.sleep(PAUSE_BETWEEN)
                    start = time.monotonic_ns()
                    ready = await client.create(profile, on_event=saw)
                    windows.append((start, time.monotonic_ns()))
                    if pool and not ready.get("pool_member"):
                        raise RuntimeError(f"a create was not served by the pool: {ready}")
                    await asyncio.sleep(PAUSE_BETWEEN)
                    await client.destroy(ready["sandbox_id"])
                    await asyncio.sleep(PAUSE_BETWEEN)
            finally:
                await client.close()
                service.send_signal(signal.SIGTERM)
                await asyncio.to_thread(service.wait, 60)
            service_spans = json.loads(spans_file.read_text()) if spans_file.exists() else []
    return {
        "windows": windows,
        "spans": [*SPANS, *service_spans],
        "bwrap_ms": baseline,
        "package": str(Path(importlib.import_module("sandboxer").__file__ or "").parent),
    }


# -- the report ---------------------------------------------------------------------------------


def _pct(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def timeline(windows: list[list[Any]], spans: list[list[Any]]) -> list[str]:
    """Every step of the create of median length, in the order they started (ms after the
    client's call, to when each ended): where one create's time went, hop by hop."""
    ordered = sorted(windows, key=lambda w: w[1] - w[0])
    w_start, w_end, *_ = ordered[len(ordered) // 2]
    lines = [f"the create of median length, {(w_end - w_start) / 1e6:.2f} ms:"]
    for name, start, end in sorted(spans, key=lambda span: span[1]):
        if w_start <= start <= w_end:
            lines.append(f"{(start - w_start) / 1e6:8.3f} -> {(end - w_start) / 1e6:8.3f}  {name}")
    return lines


def steps_table(windows: list[list[Any]], spans: list[list[Any]]) -> list[str]:
    """Per step: when it starts (ms after the client's call), how long it takes, how often."""
    starts: dict[str, list[float]] = defaultdict(list)
    durations: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    for name, start, end in spans:
        for w_start, w_end, *_ in windows:
            if w_start <= start <= w_end:
                counts[name] += 1
                durations[name].append((end - start) / 1e6)
                starts[name].append((start - w_start) / 1e6)
                break
    per_create = len(windows) or 1
    rows = sorted(counts, key=lambda name: statistics.median(starts[name]))
    lines = [f"{'step':52} {'at ms':>7} {'takes ms':>9} {'p95':>7} {'x/create':>8}"]
    for name in rows:
        lines.append(
            f"{name:52} {statistics.median(starts[name]):7.2f} "
            f"{statistics.median(durations[name]):9.3f} {_pct(durations[name], 95):7.3f} "
            f"{counts[name] / per_create:8.1f}"
        )
    return lines


def totals(result: dict[str, Any]) -> list[float]:
    return [(end - start) / 1e6 for start, end in result["windows"]]


def extract(rev: str, into: Path) -> Path:
    """REV's tree (the package, its declarations and profiles) in a directory of its own."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True
    ).stdout
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_measure(package_root: Path, creates: int, out: Path, pool: bool) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(package_root))
    command = [sys.executable, __file__, "--measure", str(out), "--creates", str(creates)]
    subprocess.run([*command, *(["--pool"] if pool else [])], env=env, check=True)
    result: dict[str, Any] = json.loads(out.read_text())
    if Path(result["package"]).parent.resolve() != package_root.resolve():
        raise RuntimeError(f"measured {result['package']}, not the tree under {package_root}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--against", action="append", default=[], help="a git revision measured in the same run"
    )
    parser.add_argument(
        "--revisions-only",
        action="store_true",
        help="measure only the --against revisions, not the working tree (which others may be editing)",
    )
    parser.add_argument("--creates", type=int, default=30, help="creates per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--pool", action="store_true", help="creates served by a warm pool (docs/pools.md)"
    )
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="also print every step of the create of median length, in order",
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.revisions_only and not args.against:
        parser.error("--revisions-only measures the --against revisions: name at least one")
    if args.serve:
        serve(args.serve)
        return
    if args.measure:
        args.measure.write_text(json.dumps(asyncio.run(measure(args.creates, args.pool))))
        return

    with tempfile.TemporaryDirectory(prefix="sandboxer-steps-run-") as raw:
        work = Path(raw)
        trees = {} if args.revisions_only else {"this checkout": REPO}
        for number, rev in enumerate(args.against):
            trees[rev] = extract(rev, work / str(number))
        results: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
        for round_no in range(args.rounds):
            for label, root in trees.items():
                out = work / f"{round_no}-{len(results[label])}-{abs(hash(label))}.json"
                results[label].append(run_measure(root, args.creates, out, args.pool))

    for label, rounds in results.items():
        windows = [w for r in rounds for w in r["windows"]]
        spans = [s for r in rounds for s in r["spans"]]
        print(f"\n== {label}: steps of one create (median over {len(windows)} creates)")
        print("\n".join(steps_table(windows, spans)))
        if args.timeline:
            print("\n".join(timeline(windows, spans)))
    # One baseline for every tree: the raw spawns of all rounds (each tree's own would carry
    # the noise of its own rounds into its ratio).
    bwrap = [t for rounds in results.values() for r in rounds for t in r["bwrap_ms"]]
    print(f"\nraw bwrap spawn of `true` (all rounds): p50 {statistics.median(bwrap):5.2f} ms")
    for label, rounds in results.items():
        ready = [t for r in rounds for t in totals(r)]
        ratio = statistics.median(ready) / statistics.median(bwrap)
        print(
            f"{label:24} create -> ready p50 {statistics.median(ready):6.2f} ms "
            f"p95 {_pct(ready, 95):6.2f} ms | {ratio:4.1f}x the raw spawn"
        )


if __name__ == "__main__":
    main()
