"""Optional capabilities: a declaration may only claim what its class implements."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxer.config.catalog import Catalog
from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.settings import Settings
from sandboxer.errors import ConfigError
from sandboxer.extensions.base import Extension
from sandboxer.extensions.capabilities import HostInspector, Snapshotter, check_claims
from sandboxer.extensions.loading import build_extension
from sandboxer.extensions.local.backend import LocalExtension


def settings(home: Path) -> Settings:
    return Settings(home=home, nats_urls=(), nats_server=None, ack_wait=5)


def test_every_packaged_backend_keeps_its_declaration_s_promises(tmp_path: Path) -> None:
    catalog = Catalog.load(tmp_path)
    for ext_id in catalog.extensions_enabled():
        built = build_extension(ext_id, catalog, settings(tmp_path))
        assert isinstance(built, Extension)
        if catalog.extensions_enabled()[ext_id].kind == "self-hosted":  # hosted: no host to read
            assert isinstance(built, HostInspector), ext_id


def test_a_claim_the_class_does_not_keep_is_refused_with_the_fix() -> None:
    decl = ExtensionDecl(
        id="ext.local",
        kind="self-hosted",
        entry_point="x:Y",
        capabilities={"isolation": ["namespace"], "snapshot": True, "pause": True},
    )
    assert isinstance(LocalExtension(Path("/nonexistent")), Snapshotter)  # it declares snapshot
    extension = object()  # keeps none of the optional capabilities
    assert not isinstance(extension, Snapshotter)
    with pytest.raises(ConfigError) as caught:
        check_claims(decl, extension)
    message = caught.value.message
    assert "capabilities.snapshot: true needs Snapshotter (snapshot_workspace)" in message
    assert "capabilities.pause: true needs Pausable" in message
    assert "set the capability to false" in message


def test_an_unknown_extension_names_the_enabled_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"enabled: .*ext\.local"):
        build_extension("ext.nope", Catalog.load(tmp_path), settings(tmp_path))
