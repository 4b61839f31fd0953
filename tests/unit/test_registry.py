"""The capability registry is true: its index and its pages agree with each other and with
the profiles and extensions packaged with sandboxer (registry/README.md)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandboxer.config.catalog import load_yaml_model, packaged_dir
from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.profile import Profile

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "registry"
INDEX = REGISTRY / "indexes" / "capabilities.yaml"
PAGES = REGISTRY / "capabilities"

ROW_FIELDS = {"id", "summary", "status", "inputs", "outputs", "profiles", "extensions", "doc"}
STATUSES = {"available", "preview", "planned"}
CAPABILITY_ID = re.compile(r"^[a-z0-9][a-z0-9-]*\.[a-z0-9][a-z0-9-]*$")


def rows() -> list[dict[str, Any]]:
    index = yaml.safe_load(INDEX.read_text())
    assert index["version"] == 1
    found: list[dict[str, Any]] = index["capabilities"]
    return found


def packaged_profiles() -> dict[str, Profile]:
    loaded = (load_yaml_model(p, Profile) for p in packaged_dir("profiles").glob("*.yaml"))
    return {profile.id: profile for profile in loaded}


def packaged_extensions() -> dict[str, ExtensionDecl]:
    loaded = (load_yaml_model(p, ExtensionDecl) for p in packaged_dir("extensions").glob("*.yaml"))
    return {decl.id: decl for decl in loaded}


class Page:
    """A capability page, read as registry/README.md describes it."""

    def __init__(self, path: Path) -> None:
        self.text = path.read_text()
        title = re.match(r"# (\S+)\n\nStatus: \*\*(\w+)\*\*\n\n(.+?)\n\n", self.text, re.S)
        assert title, f"{path} must open with '# <id>', 'Status: **<status>**' and the summary"
        self.id, self.status, summary = title.groups()
        self.summary = " ".join(summary.split())

    def table(self, heading: str) -> list[list[str]]:
        """The cells of each body row of the first table under ``## heading``."""
        section = re.search(rf"^## {heading}\n(.*?)(?=^## |\Z)", self.text, re.M | re.S)
        assert section, f"no section '## {heading}'"
        lines = [line for line in section.group(1).splitlines() if line.startswith("|")]
        assert len(lines) > 2, f"no table under '## {heading}'"
        return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]

    def names(self, heading: str) -> list[str]:
        """The first column's backticked names, in order."""
        return [backticked(row[0])[0] for row in self.table(heading)]


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def page_of(row: dict[str, Any]) -> Page:
    return Page(ROOT / row["doc"])


@pytest.mark.parametrize("row", rows(), ids=lambda row: str(row.get("id")))
def test_a_row_is_complete_and_points_at_its_page(row: dict[str, Any]) -> None:
    assert set(row) == ROW_FIELDS
    assert CAPABILITY_ID.match(row["id"])
    assert row["status"] in STATUSES
    assert row["doc"] == f"registry/capabilities/{row['id']}.md"
    assert (ROOT / row["doc"]).is_file()
    for field in ("inputs", "outputs", "profiles", "extensions"):
        assert len(set(row[field])) == len(row[field]), f"{field} lists a name twice"


def test_every_page_has_a_row() -> None:
    documented = {f"registry/capabilities/{path.name}" for path in PAGES.glob("*.md")}
    assert documented == {row["doc"] for row in rows()}


@pytest.mark.parametrize("row", rows(), ids=lambda row: str(row.get("id")))
def test_the_row_and_its_page_agree(row: dict[str, Any]) -> None:
    page = page_of(row)
    assert page.id == row["id"]
    assert page.status == row["status"]
    assert page.summary == row["summary"]
    assert page.names("Inputs") == row["inputs"]
    assert page.names("Outputs") == row["outputs"]
    assert page.names("Profiles") == row["profiles"]
    assert page.names("Extensions") == row["extensions"]


def test_every_packaged_profile_and_extension_is_listed_and_nothing_else() -> None:
    listed_profiles = {p for row in rows() for p in row["profiles"]}
    listed_extensions = {e for row in rows() for e in row["extensions"]}
    profiles, extensions = set(packaged_profiles()), set(packaged_extensions())
    assert not profiles - listed_profiles, (
        f"packaged but not in the registry: {sorted(profiles - listed_profiles)}; add each to "
        "its capability's row in registry/indexes/capabilities.yaml and to its page's table"
    )
    assert not listed_profiles - profiles, f"not packaged: {sorted(listed_profiles - profiles)}"
    assert not extensions - listed_extensions, (
        f"packaged but not in the registry: {sorted(extensions - listed_extensions)}; add each "
        "to its capability's row in registry/indexes/capabilities.yaml and to its page's table"
    )
    assert not listed_extensions - extensions, (
        f"not packaged: {sorted(listed_extensions - extensions)}"
    )


@pytest.mark.parametrize("row", rows(), ids=lambda row: str(row.get("id")))
def test_the_page_says_what_each_profile_and_extension_is(row: dict[str, Any]) -> None:
    """Each profile's backends are its fixed extension or its route's candidates, in order;
    each extension's kind and isolation levels are its declaration's."""
    profiles, extensions = packaged_profiles(), packaged_extensions()
    page = page_of(row)
    for cells in page.table("Profiles"):
        [profile_id] = backticked(cells[0])
        assert backticked(cells[1]) == profiles[profile_id].candidates(), profile_id
    for cells in page.table("Extensions"):
        [extension_id] = backticked(cells[0])
        decl = extensions[extension_id]
        assert cells[1] == decl.kind, extension_id
        assert [level.strip() for level in cells[2].split(",")] == list(
            decl.capabilities.isolation
        ), extension_id


def test_the_registry_links_resolve() -> None:
    for page in [REGISTRY / "README.md", *PAGES.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
