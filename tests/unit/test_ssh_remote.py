"""The pure parts of the SSH boundary: remote command quoting and the remove_tree path check."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sandboxer.config.hosts import HostConfig
from sandboxer.errors import InvalidInput
from sandboxer.ssh.connection import host_key_line
from sandboxer.ssh.remote import command_line, inside_root
from sandboxer.ssh.sync import rsync_argv

HOSTILE = [
    "$(rm -rf /)",
    "; reboot",
    "`id`",
    "it's",
    '"double" \\ back',
    "line one\nline two",
    "*",
    "~root",
    "a b\tc",
    "$HOME ${PATH}",
    "-n",
    "",
    "| cat /etc/shadow &",
    "é ünïcode",
]


def sh(line: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", line],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )


def test_plain_words_stay_readable() -> None:
    assert command_line(["docker", "compose", "up", "-d"]) == "docker compose up -d"


def test_hostile_arguments_are_quoted() -> None:
    line = command_line(["printf", "%s\\n", "$(rm -rf /)", "; reboot", "`id`", "it's"])
    assert line == ("printf '%s\\n' '$(rm -rf /)' '; reboot' '`id`' 'it'\"'\"'s'")


def test_hostile_arguments_reach_the_program_verbatim() -> None:
    result = sh(command_line(["printf", "%s\\n", *HOSTILE]))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(f"{arg}\n" for arg in HOSTILE)


def test_hostile_program_name_is_not_interpreted() -> None:
    result = sh(command_line(["$(echo printf)", "x"]))
    assert result.returncode == 127  # looked up literally, not expanded


def test_env_and_cwd_prefix() -> None:
    line = command_line(["pwd"], env={"A": "1", "B_2": "x y"}, cwd="/tmp/a dir")
    assert line == "cd -- '/tmp/a dir' && env A=1 'B_2=x y' pwd"


def test_env_values_are_passed_verbatim() -> None:
    env = {"HOSTILE": "$(id); `id` 'q' \"d\"\nnext", "EMPTY": ""}
    result = sh(command_line(["sh", "-c", 'printf "%s|%s\\n" "$HOSTILE" "$EMPTY"'], env=env))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{env['HOSTILE']}|\n"


def test_cwd_is_entered_literally(tmp_path: Path) -> None:
    odd = tmp_path / "a dir; $(x) 'q'"
    odd.mkdir()
    result = sh(command_line(["pwd"], cwd=str(odd)))
    assert result.stdout.strip() == str(odd)
    marker = tmp_path / "pwned"
    missing = sh(command_line(["pwd"], cwd=f"/nonexistent/$(touch {marker})"))
    assert missing.returncode != 0
    assert missing.stdout == ""
    assert not marker.exists()


@pytest.mark.parametrize("name", ["1A", "A-B", "A B", "A=B", "", "$(id)", "A;B", "é"])
def test_env_names_are_validated(name: str) -> None:
    with pytest.raises(InvalidInput, match="environment name"):
        command_line(["true"], env={name: "x"})


def test_empty_argv_is_refused() -> None:
    with pytest.raises(InvalidInput):
        command_line([])


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/var/tmp/sandboxer/sbx1", "/var/tmp/sandboxer/sbx1"),
        ("/var/tmp/sandboxer/sbx1/", "/var/tmp/sandboxer/sbx1"),
        ("/var/tmp/sandboxer//sbx1/./repo", "/var/tmp/sandboxer/sbx1/repo"),
    ],
)
def test_paths_inside_the_root_are_accepted(path: str, expected: str) -> None:
    assert inside_root(path, "/var/tmp/sandboxer") == expected
    assert inside_root(path, "/var/tmp/sandboxer/") == expected


@pytest.mark.parametrize(
    "path",
    [
        "/var/tmp/sandboxer",
        "/var/tmp/sandboxer/",
        "/var/tmp/sandboxer/.",
        "/var/tmp/sandboxer/../etc",
        "/var/tmp/sandboxer/sbx1/../..",
        "/var/tmp/sandboxer/sbx1/..",
        "/var/tmp/sandboxerX",
        "/var/tmp/sandboxer-other/x",
        "/var/tmp",
        "/",
        "//",
        "/etc/passwd",
        "sbx1",
        "var/tmp/sandboxer/sbx1",
        "",
    ],
)
def test_paths_outside_or_equal_to_the_root_are_refused(path: str) -> None:
    with pytest.raises(InvalidInput):
        inside_root(path, "/var/tmp/sandboxer")


@pytest.mark.parametrize("root", ["/", "//", "relative", ""])
def test_unsafe_roots_are_refused(root: str) -> None:
    with pytest.raises(InvalidInput):
        inside_root("/var/tmp/x", root)


def test_known_hosts_line_uses_brackets_off_port_22() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdummy comment"
    assert host_key_line(HostConfig(address="10.0.0.5", host_key=key)) == f"10.0.0.5 {key}"
    assert (
        host_key_line(HostConfig(address="10.0.0.5", port=2222, host_key=key))
        == f"[10.0.0.5]:2222 {key}"
    )


def test_rsync_command_checks_host_keys_and_ignores_local_ssh_setup() -> None:
    host = HostConfig(
        address="10.0.0.5", port=2222, user="deploy", key_file="/keys/id", known_hosts="/kh"
    )
    argv = rsync_argv(host, Path("/src/repo"), "/var/tmp/sandboxer/s1", "/kh")
    assert argv[:4] == ["rsync", "-a", "--delete", "--protect-args"]
    assert argv[-2:] == ["/src/repo/", "10.0.0.5:/var/tmp/sandboxer/s1/"]
    ssh = argv[argv.index("-e") + 1]
    for option in (
        "-F /dev/null",
        "-p 2222",
        "-l deploy",
        "-i /keys/id",
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        "StrictHostKeyChecking=yes",
        "UserKnownHostsFile=/kh",
    ):
        assert option in ssh
    insecure = rsync_argv(
        host.model_copy(update={"insecure_accept_any_host_key": True}), Path("/src"), "/r", None
    )
    ssh = insecure[insecure.index("-e") + 1]
    assert "StrictHostKeyChecking=no" in ssh
    assert "UserKnownHostsFile=/dev/null" in ssh
