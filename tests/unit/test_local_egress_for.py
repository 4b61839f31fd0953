"""ext.local's egress is the policy in force, compiled: the profile's, or the one the worker
passes in its place (a create's narrowing, as ``requested`` recorded it)."""

from __future__ import annotations

import ipaddress

from sandboxer.config.network_policy import parse_policy
from sandboxer.config.profile import Profile
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.local.egress_policy import DENY, AddressRule, DomainRule, LocalEgress
from sandboxer.extensions.local.steps import local_egress_for, profile_warnings


def request(network: dict[str, object]) -> ProvisionRequest:
    profile = Profile.model_validate(
        {"id": "profile.t", "extension": "ext.local", "network": network}
    )
    return ProvisionRequest(sandbox_id="sbxtest00001", profile=profile, inputs={})


def test_the_profile_policy_is_what_the_sandbox_gets() -> None:
    egress = local_egress_for(
        request({"default": "deny", "egress": ["pypi.org:443", "10.1.0.0/16:5432/tcp"]})
    )
    assert egress == LocalEgress(
        addresses=(AddressRule(ipaddress.ip_network("10.1.0.0/16"), ((5432, 5432),), "tcp"),),
        domains=(DomainRule("pypi.org", ((443, 443),)),),
        warnings=(
            "egress pypi.org:443: UDP not provided, TCP only: ext.local reaches names only "
            "through its HTTP/TLS proxy (no DNS inside); write such an entry with /tcp "
            "(pypi.org:443/tcp) to ask for what is enforced",
        ),
    )
    # Said only of entries that ask for UDP too: a /tcp name entry is enforced as written.
    assert not local_egress_for(request({"egress": ["pypi.org:443/tcp"]})).warnings


def test_deny_and_allow() -> None:
    assert local_egress_for(request({"default": "deny"})) == DENY
    assert local_egress_for(request({"default": "allow"})) == LocalEgress(allow_all=True)


def test_the_policy_in_force_replaces_the_profiles() -> None:
    wide = request({"default": "deny", "egress": ["*.pypi.org:443"]})
    narrowed = ProvisionRequest(
        sandbox_id=wide.sandbox_id,
        profile=wide.profile.with_network(parse_policy({"egress": ["files.pypi.org:443"]})),
        inputs={},
    )
    assert local_egress_for(narrowed).domains == (DomainRule("files.pypi.org", ((443, 443),)),)


def test_what_cannot_be_enforced_is_left_out_and_said_not_widened() -> None:
    egress = local_egress_for(
        request({"default": "deny", "egress": ["dns.test:53/udp", "169.254.169.254"]})
    )
    assert egress.denies_all
    assert [w.split(" not provided")[0] for w in egress.warnings] == [
        "egress dns.test:53/udp",
        "egress 169.254.169.254",
    ]
    # The network is the compiled policy's to report; profile warnings are the rest.
    assert profile_warnings(request({"default": "allow"}).profile) == []
