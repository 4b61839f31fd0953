"""A private dockerd holding a minimal busybox image, for the ``docker run`` baseline.

The engine is the one the integration tests start (tests/integration/remote_fixtures.py,
recipe in /work/shared/TESTBEDS.md): no bridge, no iptables, its own data and socket
under /tmp, the image built locally since no registry is reachable. Its tools are
checked here first so that a missing one is an :class:`Unmeasurable` with the
install command instead of a pytest failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from _harness import Unmeasurable, require_tool

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/ is not installed

if TYPE_CHECKING:
    from tests.integration.remote_fixtures import DockerEngine

__all__ = ["docker_engine_or_reason", "docker_run_true", "start_docker_engine"]


async def start_docker_engine() -> DockerEngine:
    """A started :class:`tests.integration.remote_fixtures.DockerEngine` (stop it after)."""
    for tool, package in (
        ("dockerd", "docker.io"),
        ("docker", "docker.io"),
        ("docker-compose", "docker-compose"),
        ("busybox", "busybox-static"),
    ):
        require_tool(tool, package)
    from tests.integration.remote_fixtures import DockerEngine

    try:
        return await asyncio.to_thread(DockerEngine.start)
    except RuntimeError as exc:  # dockerd would not start: say why, briefly
        raise Unmeasurable(f"a private dockerd did not start: {str(exc)[-300:]}") from exc


@contextlib.asynccontextmanager
async def docker_engine_or_reason() -> AsyncIterator[DockerEngine | str]:
    """The engine, or why there is none: the docker baseline is a row of its own, so the
    other rows of a module still run without it."""
    try:
        engine = await start_docker_engine()
    except Unmeasurable as exc:
        yield str(exc)
        return
    try:
        yield engine
    finally:
        await asyncio.to_thread(engine.stop)


async def docker_run_true(engine: DockerEngine) -> float:
    """One ``docker run --rm --network none`` of the busybox image running ``true``, in ms."""
    from tests.integration.remote_fixtures import MINI_IMAGE

    args = ["docker", "-H", engine.docker_host, "run", "--rm", "--network", "none"]
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *args,
        MINI_IMAGE,
        "true",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    elapsed = (time.perf_counter() - started) * 1000
    if process.returncode != 0:
        raise Unmeasurable(f"docker run failed: {err.decode(errors='replace')[-300:]}")
    return elapsed
