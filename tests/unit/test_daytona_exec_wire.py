"""ext.daytona's exec wrapper (sandboxer/extensions/daytona/exec_wire.py): the command strings
it builds and how it reads the toolbox's text answer back into bytes. Pure: no toolbox."""

from __future__ import annotations

import base64
import shlex

import pytest

from sandboxer.extensions.daytona.exec_wire import (
    INPUT_CHUNK,
    append_command,
    parse_output,
    wrapped_command,
)

EVERY_BYTE = bytes(range(256))


def answer(stdout: bytes, stderr: bytes, *, wrap: int = 76) -> str:
    """What the wrapper prints: markers, then each stream in base64 with line breaks."""

    def encoded(data: bytes) -> str:
        text = base64.b64encode(data).decode()
        return "".join(text[i : i + wrap] + "\n" for i in range(0, len(text), wrap))

    return f"sandboxer-stdout\n{encoded(stdout)}sandboxer-stderr\n{encoded(stderr)}"


def test_every_byte_value_comes_back_and_the_streams_stay_apart() -> None:
    assert parse_output(answer(EVERY_BYTE * 40, b"warn\n")) == (EVERY_BYTE * 40, b"warn\n")


def test_empty_streams() -> None:
    assert parse_output(answer(b"", b"")) == (b"", b"")
    assert parse_output(answer(b"", b"only err")) == (b"", b"only err")
    assert parse_output(answer(b"only out", b"")) == (b"only out", b"")


def test_an_answer_without_the_markers_is_text_on_stdout() -> None:
    """A sandbox without base64 runs the command plain: its output is what the toolbox gave."""
    assert parse_output("plain text\n") == (b"plain text\n", b"")
    assert parse_output("") == (b"", b"")
    # A marker that is not base64 after all is not decoded either.
    broken = "sandboxer-stdout\n%%%\nsandboxer-stderr\n\n"
    assert parse_output(broken) == (broken.encode(), b"")


def test_the_command_string_keeps_every_argument_whole() -> None:
    argv = ["sh", "-c", "echo $HOME; rm -rf /", "it's", "two words", "$(id)"]
    words = shlex.split(wrapped_command(argv, ("SANDBOXER_EXEC_ID", "abc"), "/tmp/in"))
    assert words[:3] == ["env", "SANDBOXER_EXEC_ID=abc", "sh"]
    assert words[3:6] == ["-c", words[4], "sh"]
    assert words[6:] == ["/tmp/in", *argv]
    assert shlex.split(wrapped_command(["true"], ("N", "v")))[6:] == ["", "true"]


@pytest.mark.parametrize("size", [1, INPUT_CHUNK])
def test_an_input_chunk_travels_as_one_base64_argument(size: int) -> None:
    chunk = (EVERY_BYTE * (size // 256 + 1))[:size]
    words = shlex.split(append_command("/tmp/in put", chunk))
    assert words[:2] == ["sh", "-c"]
    assert words[3:5] == ["sh", "/tmp/in put"]
    assert base64.b64decode(words[5]) == chunk
    assert len(words[5]) < 128 * 1024  # the kernel's limit on one argument
