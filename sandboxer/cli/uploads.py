"""``create``'s directory inputs: upload the local directory, send its reference instead.

Which inputs are directories comes from the profile as this machine's
catalog knows it (packaged profiles and ``$SANDBOXER_HOME/profiles``). A
value that is an existing local directory is packed and uploaded; any other
value (an ``object:sha256:`` reference, or with ``--no-upload`` a path on the
worker's machine under its ``SANDBOXER_INPUT_ROOTS``) is sent as it is.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from sandboxer.cli.output import say
from sandboxer.config.settings import Settings
from sandboxer.errors import ConfigError
from sandboxer.workspaces.refs import is_object_ref

if TYPE_CHECKING:
    from sandboxer.client import SandboxerClient, UploadProgress

__all__ = ["directory_inputs", "plan_uploads", "upload_directory_inputs"]

MIB = 1024 * 1024
SHOW_FROM_BYTES = 8 * MIB
"""Uploads smaller than this finish too fast for a progress line to help."""


def directory_inputs(home: Path, profile_id: str) -> set[str]:
    """The inputs ``profile_id`` declares ``type: directory`` here (none if it is unknown here)."""
    from sandboxer.config.catalog import Catalog  # (with yaml and pydantic: create's alone)

    try:
        profile = Catalog.load(home).profile(profile_id)
    except ConfigError:
        return set()  # the service may know profiles this machine does not: send values as given
    return {name for name, spec in profile.inputs.items() if spec.type == "directory"}


def _meter(name: str, enabled: bool) -> UploadProgress:
    """Progress on stderr: rewritten in place on a terminal, every quarter otherwise."""
    state = {"shown": -1.0, "at": 0.0}
    tty = sys.stderr.isatty()

    def show(phase: str, done: int, total: int) -> None:
        if not enabled or (phase == "uploading" and total < SHOW_FROM_BYTES):
            return
        if phase == "uploading":
            fraction = done / total if total else 1.0
            now = time.monotonic()
            if tty and (now - state["at"] > 0.1 or done == total):
                state["at"] = now
                sys.stderr.write(f"\r  uploading {name}: {done / MIB:.1f}/{total / MIB:.1f} MiB")
                sys.stderr.flush()
            elif not tty and fraction - state["shown"] >= 0.25:
                state["shown"] = fraction
                say(f"  uploading {name}: {done / MIB:.1f}/{total / MIB:.1f} MiB")
        elif phase in {"uploaded", "present"}:
            if tty and total >= SHOW_FROM_BYTES and phase == "uploaded":
                sys.stderr.write("\n")
            what = "uploaded" if phase == "uploaded" else "already stored, not sent again"
            say(f"  {name}: {total / MIB:.1f} MiB {what}")

    return show


def plan_uploads(settings: Settings, profile_id: str, inputs: Mapping[str, str]) -> dict[str, Path]:
    """The directory inputs whose values are directories of this machine: those are uploaded."""
    planned = {}
    for name in sorted(directory_inputs(settings.home, profile_id) & set(inputs)):
        value = inputs[name]
        local = Path(value).expanduser()
        if not is_object_ref(value) and local.is_dir():
            planned[name] = local
    return planned


async def upload_directory_inputs(
    client: SandboxerClient,
    settings: Settings,
    planned: Mapping[str, Path],
    *,
    exclude: Collection[str],
    show_progress: bool,
) -> dict[str, str]:
    """Each planned input's reference (``object:sha256:<hex>``), uploading what is not stored."""
    refs = {}
    for name, local in planned.items():
        uploaded = await client.upload_directory(
            local,
            exclude=(*settings.upload_exclude, *exclude),
            max_mb=settings.upload_max_mb,
            progress=_meter(name, show_progress),
        )
        refs[name] = uploaded.ref
    return refs
