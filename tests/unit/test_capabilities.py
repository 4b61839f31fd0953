"""Optional capabilities: a declaration may only claim what its class implements."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxer.config.catalog import Catalog
from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.profile import Network
from sandboxer.config.settings import Settings
from sandboxer.errors import ConfigError, ExtensionError, InvalidInput
from sandboxer.extensions.base import Extension, ProvisionRequest
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


@pytest.mark.parametrize(
    "network",
    [{"default": "deny"}, {"default": "deny", "egress": ["pypi.org:443", "10.0.0.0/8"]}],
)
async def test_vm_packer_refuses_a_policy_it_cannot_enforce(
    tmp_path: Path, network: dict[str, object]
) -> None:
    """Routing trusts capabilities.network: a declaration edited to claim more than none
    must not give a deny profile the VM's whole network."""
    catalog = Catalog.load(tmp_path)
    vm = build_extension("ext.vm-packer", catalog, settings(tmp_path))
    profile = catalog.profile("profile.vm-haskell-build")
    request = ProvisionRequest(
        sandbox_id="vmdeny0001",
        profile=profile.model_copy(update={"network": Network.model_validate(network)}),
        inputs={},
        host="nowhere",  # never reached: the refusal comes before any connection
    )
    with pytest.raises(InvalidInput, match="cannot enforce the network policy"):
        await vm.provision(request)
    allowed = profile.model_copy(update={"network": Network(default="allow")})
    # An allow profile gets past the check, as far as the hosts file (which has no VMs).
    with pytest.raises(ExtensionError, match="'nowhere' is not in the hosts file"):
        await vm.provision(
            ProvisionRequest(sandbox_id="vmdeny0001", profile=allowed, inputs={}, host="nowhere")
        )
