"""The examples in the docs are true: they are parsed or run against the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.hosts import HostsFile
from sandboxer.config.profile import Profile
from sandboxer.ids import derive_sandbox_id

DOCS = Path(__file__).resolve().parents[2] / "docs"


def yaml_blocks(page: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", (DOCS / page).read_text(), re.S)


def test_id_derivation_snippet_in_protocol_md_matches_the_service() -> None:
    snippet = re.search(
        r'`(python -c "import base64,hashlib;.*?")`', (DOCS / "protocol.md").read_text()
    ).group(1)  # type: ignore[union-attr]
    code = snippet.removeprefix("python -c ").strip('"')
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == derive_sandbox_id("c-0001")


def test_profile_examples_are_valid_profiles() -> None:
    [example, *_] = yaml_blocks("profiles.md")
    Profile.model_validate(yaml.safe_load(example))


def test_extension_declaration_example_is_valid() -> None:
    [example] = yaml_blocks("extensions.md")
    ExtensionDecl.model_validate(yaml.safe_load(example))


def test_hosts_file_examples_are_valid() -> None:
    for page in ("hosts.md", "ext-vm-packer.md"):
        for block in yaml_blocks(page):
            data = yaml.safe_load(block)
            if "hosts" in data:
                HostsFile.model_validate(data)


def test_every_setting_the_code_reads_is_in_the_readme_table() -> None:
    """Settings are documented in one place: the table in README.md."""
    from sandboxer import subjects
    from sandboxer.extensions.ssh_exec_stop import MARKER_NAME

    package = Path(__file__).resolve().parents[2] / "sandboxer"
    mentioned = {
        name
        for path in package.rglob("*.py")
        for name in re.findall(r"\bSANDBOXER_[A-Z_]+\b", path.read_text())
    }
    streams = {
        subjects.COMMANDS_STREAM,
        subjects.EVENTS_STREAM,
        subjects.JOBS_STREAM,
        subjects.WORKSPACES_BUCKET,
        subjects.CHECKPOINTS_BUCKET,
        MARKER_NAME,  # put in each exec's environment by sandboxer, not read from the user's
    }
    readme = (DOCS.parent / "README.md").read_text()
    table = set(re.findall(r"^\| `(SANDBOXER_[A-Z_]+)` \|", readme, re.M))
    assert mentioned - streams <= table, sorted(mentioned - streams - table)
    assert table <= mentioned, sorted(table - mentioned)  # nothing documented that is gone
