"""Shared set-up for benchmarks: a private nats-server, the service in its own process,
tools checked with their install command, RSS, and the entry point every module shares
(``python bench/bench_x.py`` prints its rows as a table; ``--json`` prints them for
``bench/run.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from _table import Row, Target, render, rows_to_json
from nats.aio.client import Client
from nats.js import JetStreamContext

from sandboxer.bus.direct_get import LAST
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.replay_reader import replay_events
from sandboxer.client import SandboxerClient


@contextlib.asynccontextmanager
async def nats(tmp: Path) -> AsyncIterator[NatsServerProcess]:
    server = NatsServerProcess(tmp / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def bulk_read(nc: Client, js: JetStreamContext, filter_subject: str) -> float:
    """Seconds the replay's bulk reader takes to read every event on ``filter_subject``,
    counting them only: the raw floor of a long history's load."""
    started = time.perf_counter()
    async for _ in replay_events(nc, js, start_seq=1, stop_seq=LAST, filter_subject=filter_subject):
        pass
    return time.perf_counter() - started


class Unmeasurable(Exception):
    """A figure cannot be measured here; the message says what to install or fix."""


def require_tool(name: str, apt_package: str) -> str:
    """Path of the command ``name``, or Unmeasurable with the command that installs it."""
    path = shutil.which(name)
    if path is None:
        raise Unmeasurable(
            f"{name!r} is missing: apt-get install -y {apt_package} (or make system-deps)"
        )
    return path


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries the rows)."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def rss_mb(pid: int) -> float:
    """Resident set size of one process, in MB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise Unmeasurable(f"/proc/{pid}/status has no VmRSS (a kernel thread or a zombie?)")


def start_sandboxer(
    home: Path, url: str, args: Sequence[str], log_name: str = "service.log"
) -> subprocess.Popen[bytes]:
    """``python -m sandboxer.cli.app ARGS`` (``up``, ``worker control`` ...) against ``url``."""
    env = dict(os.environ, SANDBOXER_HOME=str(home), SANDBOXER_NATS_URL=url)
    with (home / log_name).open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "sandboxer.cli.app", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )


async def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(process.wait, 60)
    except subprocess.TimeoutExpired:
        process.kill()
        await asyncio.to_thread(process.wait)


@dataclass(frozen=True)
class CpuUse:
    """CPU used over a stretch of time, in seconds: by every process of the machine, and by
    one process (its own threads, not its children's), and of that the kernel's part (its
    system calls: files, cgroups, forks, sockets)."""

    machine: float
    process: float
    process_kernel: float

    @property
    def over_cores(self) -> float:
        """The machine's CPU spread over its cores: the shortest the stretch could have been
        with that work, however well it was shared out."""
        return self.machine / (os.cpu_count() or 1)


def _machine_busy() -> float:
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:8]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def _process_cpu(pid: int) -> tuple[float, float]:
    """A process's CPU so far, in seconds: in user mode and in the kernel."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


@contextlib.contextmanager
def cpu_use(pid: int) -> Iterator[list[CpuUse]]:
    """The CPU used while the block runs, as the one item of the yielded list once it ends."""
    machine, (user, kernel) = _machine_busy(), _process_cpu(pid)
    measured: list[CpuUse] = []
    yield measured
    user_now, kernel_now = _process_cpu(pid)
    measured.append(
        CpuUse(
            _machine_busy() - machine,
            user_now - user + kernel_now - kernel,
            kernel_now - kernel,
        )
    )


def cpu_ns(pid: int) -> int:
    """A process's CPU so far, in ns, summed over its threads (``/proc/<pid>/task/*/schedstat``:
    the scheduler's own count, not clock ticks, so a window of a few ms is measured)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        # A thread that ended meanwhile counts for nothing.
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
            total += int(stat.read().split()[0])
    return total


@dataclass
class WindowCpu:
    """The CPU each of ``pids`` used within timed windows, summed over them."""

    pids: tuple[int, ...]
    used_ns: list[int] = dataclasses.field(init=False)
    windows: int = 0

    def __post_init__(self) -> None:
        self.used_ns = [0] * len(self.pids)

    @contextlib.contextmanager
    def window(self) -> Iterator[None]:
        """Count the CPU the processes use while the block runs (read just outside it)."""
        before = [cpu_ns(pid) for pid in self.pids]
        yield
        after = [cpu_ns(pid) for pid in self.pids]
        for index, (start, end) in enumerate(zip(before, after, strict=True)):
            self.used_ns[index] += end - start
        self.windows += 1

    def mean_ms(self, index: int | None = None) -> float:
        """Mean CPU a window, in ms: of process ``index``, or of all of them."""
        used = sum(self.used_ns) if index is None else self.used_ns[index]
        return used / max(self.windows, 1) / 1e6


async def until_healthy(
    client: SandboxerClient, processes: Sequence[subprocess.Popen[bytes]], log: Path
) -> None:
    for _ in range(600):
        with contextlib.suppress(Exception):
            await client.health()
            return
        if any(p.poll() is not None for p in processes):
            raise RuntimeError(f"the service exited; see {log}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the service did not answer within 30 s; see {log}")


@dataclass
class Running:
    client: SandboxerClient
    process: subprocess.Popen[bytes]
    home: Path


@contextlib.asynccontextmanager
async def running_service(tmp: Path, url: str) -> AsyncIterator[Running]:
    """``sandboxer up`` in its own process against ``url``, and a client in this one.

    Separate processes, as in real use: the service's event loop and the
    client's do not compete for one core. Whatever sandboxes are left when it
    stops are torn down.
    """
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    process = start_sandboxer(home, url, ["up"])
    client: SandboxerClient | None = None
    try:  # a client that cannot connect must not leave the service running
        client = await SandboxerClient.connect([url], actor={"type": "atm", "id": "bench"})
        await until_healthy(client, [process], home / "service.log")
        yield Running(client, process, home)
    finally:
        if client is not None:
            await client.close()
        await stop_process(process)
        await teardown_local(home)


async def teardown_local(home: Path) -> None:
    from sandboxer.extensions.local.backend import LocalExtension

    await LocalExtension(home / "local").tear_down_everything()


@contextlib.asynccontextmanager
async def service(tmp: Path, url: str) -> AsyncIterator[SandboxerClient]:
    """:func:`running_service`'s client alone."""
    async with running_service(tmp, url) as running:
        yield running.client


def tempdir() -> contextlib.AbstractContextManager[str]:
    return tempfile.TemporaryDirectory(prefix="sandboxer-bench-")


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def percentile_rows(
    figure: str, unit: str, values: list[float], base: list[float], name: str, target: Target | None
) -> list[Row]:
    """p50 and p95 rows of ``values`` against the same percentiles of ``base``; the target
    is the p50's (the targets name typical figures; p95 shows the spread)."""
    return [
        Row(
            f"{figure} p{pct}",
            unit,
            percentile(values, pct),
            percentile(base, pct),
            f"{name} p{pct}",
            target if pct == 50 else None,
        )
        for pct in (50, 95)
    ]


def summary(values_ms: list[float]) -> str:
    return (
        f"p50 {percentile(values_ms, 50):7.2f} ms  p95 {percentile(values_ms, 95):7.2f} ms  "
        f"mean {statistics.fmean(values_ms):7.2f} ms  (n={len(values_ms)})"
    )


def main(rows: Callable[[], Awaitable[list[Row]]], targeted: Sequence[Row] = ()) -> None:
    """Run one module's rows: a table on stdout, or JSON with ``--json`` (for bench/run.py).

    When a figure cannot be measured (:class:`Unmeasurable`), each of ``targeted`` (the
    module's rows that carry a target, without values) becomes a FAILED row with the
    reason, so a missing tool shows against the targets it leaves unjudged.
    """
    as_json = "--json" in sys.argv[1:]
    try:
        result = asyncio.run(rows())
    except Unmeasurable as exc:
        result = [dataclasses.replace(row, failure=str(exc)) for row in targeted] or [
            Row(Path(sys.argv[0]).stem, "", failure=str(exc))
        ]
    if as_json:
        print(rows_to_json(result))
    else:
        print(render(result))
