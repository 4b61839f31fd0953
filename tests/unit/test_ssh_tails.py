"""A failed remote command's output: kept whole by the SSH boundary (which does not know the
secrets), redacted by ssh_checks, and only then cut to its last lines."""

from __future__ import annotations

from sandboxer.config.hosts import HostConfig
from sandboxer.errors import RemoteCommandFailed
from sandboxer.extensions import ssh_checks
from sandboxer.extensions.compose_ssh.engine import engine_failed
from sandboxer.extensions.ssh_targets import Target
from sandboxer.ssh.remote import WINDOW_CHARS, RemoteResult, output_window

# A private key as a command might print it: longer than a tail, its last body line too
# short to be looked for on its own, so only a match of the whole key hides it.
KEY_LINES = [
    "-----BEGIN OPENSSH PRIVATE KEY-----",
    *(f"b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ{i:02d}keybody{i:02d}" for i in range(26)),
    "Zm9v",
    "-----END OPENSSH PRIVATE KEY-----",
]
KEY = "\n".join(KEY_LINES)
# 60 lines in all: a 40-line cut made before redaction would begin inside the key.
OUTPUT = "\n".join(["writing the key", KEY, *(f"step {i}" for i in range(30))]) + "\n"
EXPECTED_TAIL = ["writing the key", "[redacted]", *(f"step {i}" for i in range(30))]


def _leaked(text: str) -> list[str]:
    return [line for line in KEY_LINES if line in text]


def test_the_window_keeps_whole_lines_of_the_newest_output() -> None:
    assert output_window("out 1\nout 2\n", "err\n") == "out 1\nout 2\nerr"
    assert output_window("", "") == ""
    # Past the bound, the first line kept is partial (perhaps a secret's end): left out.
    window = output_window("head " + "y" * WINDOW_CHARS + "\nnext\n", "last\n")
    assert window == "next\nlast"


def test_a_failed_step_quotes_its_output_with_no_line_of_a_long_secret() -> None:
    failed = RemoteCommandFailed("'sh' exited", exit_status=1, output_tail=output_window(OUTPUT))
    error = ssh_checks.with_output(
        failed, "'docker compose up -d'", [KEY], sandbox_id="s1", extension="ext.x", fix="fix it"
    )
    assert _leaked(error.message) == []
    assert error.output_tail.splitlines() == EXPECTED_TAIL


def test_a_scrubbed_error_keeps_the_last_lines_once_redacted() -> None:
    lines = [*(f"early {i}" for i in range(30)), *OUTPUT.splitlines()]
    failed = RemoteCommandFailed("x", exit_status=1, output_tail=output_window("\n".join(lines)))
    error = ssh_checks.scrubbed(failed, [KEY], sandbox_id="s1", extension="ext.x")
    assert isinstance(error, RemoteCommandFailed)
    assert _leaked(error.output_tail) == []
    tail = error.output_tail.splitlines()
    assert tail == [*(f"early {i}" for i in range(22, 30)), *EXPECTED_TAIL]
    assert len(tail) == ssh_checks.TAIL_LINES


def test_the_compose_engine_leaves_its_tail_whole_for_redaction() -> None:
    item = Target("h1", HostConfig(address="h1", insecure_accept_any_host_key=True))
    # The listing failed after `up -d`, whose output (on stderr) printed the key; a
    # 20-line cut made before redaction would begin inside it.
    up_output = "\n".join([KEY, *(f"step {i}" for i in range(10))])
    failed = engine_failed(item, "ps", RemoteResult(1, "listing failed\n", up_output))
    error = ssh_checks.with_output(
        failed, "'docker compose up -d'", [KEY], sandbox_id="s1", extension="ext.x", fix="fix it"
    )
    assert _leaked(error.message) == []
    assert error.output_tail.splitlines() == [
        "listing failed",
        "[redacted]",
        *(f"step {i}" for i in range(10)),
    ]
