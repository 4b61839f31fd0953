"""What ``sandboxer up`` loads before it has work: no SDK or client it does not use yet.

asyncssh (with cryptography), the modal SDK and httpx (with click, rich and pygments)
together cost about 35 MB of memory (docs/performance.md#memory), and aiohttp 10 MB more
(nats-py loads it for its WebSocket transport alone: sandboxer/bus/nats_websockets.py).
``up`` runs the SSH and hosted backends whether or not they have hosts or keys, so each
is imported only where it is first used. Checked in a fresh Python: the modules, the roles' and every packaged
backend built and asked for its sandboxes, as at start, with no hosts and no keys.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

UNUSED_AT_IDLE = ("asyncssh", "modal", "httpx", "aiohttp")

SCRIPT = """
    import asyncio, sys
    import sandboxer.cli.app, sandboxer.service, sandboxer.gateway.serve, sandboxer.gateway.app
    from sandboxer.config.catalog import Catalog
    from sandboxer.config.settings import Settings
    from sandboxer.errors import SandboxerError
    from sandboxer.extensions.loading import build_extension

    settings = Settings.from_env()
    catalog = Catalog.load(settings.home)
    for ext_id, decl in sorted(catalog.extensions_enabled().items()):
        extension = build_extension(ext_id, catalog, settings)
        if ext_id != "ext.local":  # (ext.local lists the machine's own sandboxes)
            try:
                asyncio.run(extension.list_sandboxes())
            except SandboxerError:
                pass  # no key, no hosts: what `up` logs at start
    print(" ".join(sorted(name for name in {UNUSED} if name in sys.modules)) or "none")
"""


def test_up_loads_no_ssh_provider_sdk_or_http_client_until_one_is_used(tmp_path: Path) -> None:
    keys = ("MODAL_", "E2B_", "DAYTONA_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(keys)}
    env |= {"HOME": str(tmp_path), "SANDBOXER_HOME": str(tmp_path / "sandboxer")}
    script = textwrap.dedent(SCRIPT).replace("{UNUSED}", repr(set(UNUSED_AT_IDLE)))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "none"
