"""ext.modal loads the modal SDK (about 15 MB) only when it has something to do with it.

Each check runs in a fresh Python, since this one may have imported the SDK already.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _python(script: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def _without_modal_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    return env | {"HOME": str(home), "SANDBOXER_HOME": str(home / "sandboxer")}


@pytest.mark.parametrize("config_path", [None, "elsewhere/modal.toml"])
def test_where_we_look_for_the_sdk_config_is_where_the_sdk_reads_it(
    tmp_path: Path, config_path: str | None
) -> None:
    env = _without_modal_env(tmp_path)
    if config_path is not None:
        env["MODAL_CONFIG_PATH"] = str(tmp_path / config_path)
    script = """
        import modal.config
        from sandboxer.extensions.modal.boundary import sdk_config_file
        print(sdk_config_file() == __import__("pathlib").Path(modal.config.user_config_path))
    """
    assert _python(script, env) == "True"


def test_with_no_token_anywhere_the_sdk_is_not_loaded(tmp_path: Path) -> None:
    """As at ``sandboxer up``'s start: built, then asked for its sandboxes, it says what is
    missing, as it did when it read the (absent) config file through the SDK."""
    script = """
        import asyncio, sys
        from sandboxer.config.catalog import Catalog
        from sandboxer.config.settings import Settings
        from sandboxer.errors import ConfigError
        from sandboxer.extensions.loading import build_extension

        ext = build_extension("ext.modal", Catalog.load(), Settings.from_env())
        try:
            asyncio.run(ext.list_sandboxes())
        except ConfigError as exc:
            print(exc.message)
        print("modal loaded:", "modal" in sys.modules)
    """
    out = _python(script, _without_modal_env(tmp_path))
    assert "no Modal token; set MODAL_TOKEN_ID" in out
    assert out.endswith("modal loaded: False")


def test_a_token_in_the_sdk_config_file_is_read_through_the_sdk(tmp_path: Path) -> None:
    (tmp_path / ".modal.toml").write_text(
        '[default]\ntoken_id = "ak-fromfile"\ntoken_secret = "as-fromfile"\nactive = true\n'
    )
    script = """
        from sandboxer.config.catalog import Catalog
        from sandboxer.config.settings import Settings
        from sandboxer.extensions.loading import build_extension

        ext = build_extension("ext.modal", Catalog.load(), Settings.from_env())
        found = ext._value("token_id", "MODAL_TOKEN_ID", secret=True)
        print(found.value, "|", found.source)
    """
    out = _python(script, _without_modal_env(tmp_path))
    assert out == "ak-fromfile | the modal config file (~/.modal.toml)"
