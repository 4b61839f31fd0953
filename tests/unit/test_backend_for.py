"""workers/backend_for.py without I/O beyond a tmp dir: which references a project may name for
its own provider key, and which backend a sandbox's calls go through."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandboxer.bus.memory_store import MemoryEventStore
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.errors import ConfigError
from sandboxer.events.account_events import ByokSet
from sandboxer.events.actor import Actor
from sandboxer.hosted.keyed import KeyedCopies
from sandboxer.workers.backend_for import backend_for, byok_ref_problem


@pytest.mark.parametrize(
    ("project", "ref"),
    [
        ("acme", "env:SANDBOXER_BYOK_acme_E2B"),
        ("acme", "env:SANDBOXER_BYOK_acme_KEY_2"),
        ("a_b", "env:SANDBOXER_BYOK_a_b_KEY"),
        ("a_", "env:SANDBOXER_BYOK_a__KEY"),
    ],
)
def test_a_project_may_name_its_own_variables(project: str, ref: str, tmp_path: Path) -> None:
    assert byok_ref_problem(project, ref, tmp_path) is None


@pytest.mark.parametrize(
    ("project", "ref"),
    [
        ("acme", "env:E2B_API_KEY"),  # the operator's own key
        ("acme", "env:SANDBOXER_BYOK_other_KEY"),  # another project's
        ("a", "env:SANDBOXER_BYOK_a_b_KEY"),  # project a_b's, not a's
        ("a", "env:SANDBOXER_BYOK_a__KEY"),  # project a_'s
        ("acme", "env:SANDBOXER_BYOK_acme_"),  # no name
        ("acme", "env:SANDBOXER_BYOK_acme_key"),  # a name starts with an uppercase letter
        ("team-a", "env:SANDBOXER_BYOK_team_a_KEY"),  # team_a's; team-a uses a file
        ("acme", "file:/etc/passwd"),
        ("acme", "vault:acme"),
    ],
)
def test_anything_else_is_refused(project: str, ref: str, tmp_path: Path) -> None:
    assert byok_ref_problem(project, ref, tmp_path) is not None


def test_a_key_file_lies_in_the_projects_own_directory(tmp_path: Path) -> None:
    mine = tmp_path / "byok" / "acme"
    mine.mkdir(parents=True)
    (mine / "e2b").write_text("k")
    (tmp_path / "byok" / "other").mkdir()
    (tmp_path / "byok" / "other" / "e2b").write_text("k")
    (mine / "sneaky").symlink_to(tmp_path / "byok" / "other" / "e2b")
    assert byok_ref_problem("acme", f"file:{mine / 'e2b'}", tmp_path) is None
    assert byok_ref_problem("acme", f"file:{mine / '..' / 'other' / 'e2b'}", tmp_path)
    assert byok_ref_problem("acme", f"file:{mine / 'sneaky'}", tmp_path)  # links out: refused
    assert byok_ref_problem("acme", f"file:{mine}", tmp_path)  # the directory itself
    assert byok_ref_problem("acme", f"file:{tmp_path / 'byok' / 'other' / 'e2b'}", tmp_path)


class Keyed:
    """A backend that records the copies it hands out (as the hosted adapters do)."""

    id = "ext.keyed"
    host_local = False

    def __init__(self, key: str | None = None, source: str | None = None) -> None:
        self.key, self.source = key, source
        self.copies: KeyedCopies[Keyed] = KeyedCopies(Keyed)

    def with_key(self, key: str, source: str) -> Keyed:
        return self.copies.get(key, source)


async def byok_store(project: str, ref: str | None) -> MemoryEventStore:
    store = MemoryEventStore()
    loaded = await store.load_account(project)
    event = ByokSet(
        project=project,
        command_id="c1",
        actor=Actor(type="agt", id="x", project=project),
        at="2025-01-01T00:00:00Z",
        extension="ext.keyed",
        key_ref=ref,
    )
    await store.append_account(loaded, [event])
    return store


def sandbox(project: str | None) -> SandboxState:
    actor = Actor(type="agt", id="x", project=project)
    return SandboxState(sandbox_id="sb1", extension="ext.keyed", actor=actor)


async def test_the_projects_key_gives_its_copy_once_per_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOXER_BYOK_acme_KEY", "secret-1")
    store = await byok_store("acme", "env:SANDBOXER_BYOK_acme_KEY")
    operator = Keyed()
    first: Any = await backend_for(store, operator, sandbox("acme"), home=tmp_path)
    second = await backend_for(store, operator, sandbox("acme"), home=tmp_path)
    assert first is second
    assert first is not operator
    assert (first.key, first.source) == (
        "secret-1",
        "project acme's own key (env:SANDBOXER_BYOK_acme_KEY)",
    )
    monkeypatch.setenv("SANDBOXER_BYOK_acme_KEY", "secret-2")  # rotated: a fresh copy
    rotated: Any = await backend_for(store, operator, sandbox("acme"), home=tmp_path)
    assert rotated is not first
    assert rotated.key == "secret-2"
    # Another project, and a sandbox of no project, use the operator's key.
    assert await backend_for(store, operator, sandbox("other"), home=tmp_path) is operator
    assert await backend_for(store, operator, sandbox(None), home=tmp_path) is operator


async def test_a_reference_the_project_may_not_use_names_it_and_never_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("E2B_API_KEY", "operator-secret")
    store = await byok_store("acme", "env:E2B_API_KEY")
    with pytest.raises(ConfigError) as refused:
        await backend_for(store, Keyed(), sandbox("acme"), home=tmp_path)
    assert "env:E2B_API_KEY" in refused.value.message
    assert "operator-secret" not in refused.value.message


async def test_an_unset_variable_names_the_reference(tmp_path: Path) -> None:
    store = await byok_store("acme", "env:SANDBOXER_BYOK_acme_MISSING")
    with pytest.raises(ConfigError, match="SANDBOXER_BYOK_acme_MISSING"):
        await backend_for(store, Keyed(), sandbox("acme"), home=tmp_path)


async def test_a_backend_without_keys_is_itself(tmp_path: Path) -> None:
    class Plain:
        id = "ext.keyed"

    store = await byok_store("acme", "env:SANDBOXER_BYOK_acme_KEY")
    plain = Plain()
    assert await backend_for(store, plain, sandbox("acme"), home=tmp_path) is plain
