"""Which provisioning made an SSH backend's sandbox, as its marker on the host records it
(docs/ext-compose-ssh.md, docs/ext-vm-packer.md): what a probe and the compose listing read
of it (pure), and the rule they share with ext.local (sandboxer.domain.attempt_order)."""

from __future__ import annotations

from typing import Any

from sandboxer.config.hosts import HostConfig
from sandboxer.domain import attempt_order
from sandboxer.extensions.compose_ssh.listing import found_on_host
from sandboxer.extensions.local import attempt_record
from sandboxer.extensions.ssh_targets import Target
from sandboxer.extensions.ssh_workspace import Probe, Scan

HOST = Target(
    "host1",
    HostConfig(
        address="127.0.0.1",
        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA",
        workspace_root="/srv/sbx",
    ),
)
COMPOSE = "ext.compose-ssh"


def _probe(marker: dict[str, Any] | None) -> Probe:
    return Probe(
        marker=marker,
        marker_exists=marker is not None,
        path_exists=True,
        directory=True,
        secrets_file=False,
    )


def test_a_probe_reads_the_provisioning_its_marker_records() -> None:
    assert _probe({"extension": COMPOSE, "made_by": [2, 3]}).made_by == (2, 3)
    # Written before the record, or not ours to read: counted as earlier than every one.
    for marker in (None, {"extension": COMPOSE}, {"made_by": "2.3"}, {"made_by": [True, 1]}):
        assert _probe(marker).made_by is None


def test_the_compose_listing_reports_the_marker_s_provisioning() -> None:
    scan = Scan(
        directories=frozenset({"sbxa", "sbxb"}),
        markers={
            "sbxa": {"extension": COMPOSE, "made_by": [1, 2]},
            "sbxb": {"extension": COMPOSE},  # an older marker
        },
    )
    found = {f.sandbox_id: f.made_by for f in found_on_host(HOST, scan, [], COMPOSE)}
    assert found == {"sbxa": (1, 2), "sbxb": None}


def test_one_rule_for_ext_local_and_the_ssh_backends() -> None:
    assert attempt_record.removable is attempt_order.removable
    assert attempt_record.made_later is attempt_order.made_later
    assert attempt_order.made_later([2, 1], (1, 9)) == (2, 1)
    assert attempt_order.removable(None, (1, 1))
