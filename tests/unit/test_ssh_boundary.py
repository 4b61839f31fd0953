"""The SSH boundary holds: only ``sandboxer/ssh`` imports asyncssh, and deadlines are well formed."""

from __future__ import annotations

import ast
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandboxer.errors import InvalidInput
from sandboxer.ssh import deadline

PACKAGE = Path(__file__).resolve().parents[2] / "sandboxer"
BOUNDARY = PACKAGE / "ssh"


def _imports_asyncssh(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(name == "asyncssh" or name.startswith("asyncssh.") for name in names):
            lines.append(node.lineno)
    return lines


def test_only_the_ssh_package_imports_asyncssh() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if BOUNDARY not in path.parents
        for line in _imports_asyncssh(path)
    ]
    assert offenders == [], (
        "asyncssh may be imported only inside sandboxer/ssh/ (map its errors there and "
        f"offer a function instead): {offenders}"
    )


def test_the_boundary_does_import_it() -> None:
    # Guards the test above against passing because it parses nothing.
    assert _imports_asyncssh(BOUNDARY / "connection.py")


def test_the_first_ssh_use_of_a_process_warns_of_nothing() -> None:
    """asyncssh imported through the boundary, as a connection imports it, with every
    warning an error: cryptography's DSA deprecation (51 and later) stays quiet."""
    script = "import sandboxer.ssh, asyncssh; asyncssh.SSHClientConnection"
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_seconds_are_written_as_plain_decimals() -> None:
    assert deadline.seconds_text(600) == "600"
    assert deadline.seconds_text(0.5) == "0.5"
    assert deadline.seconds_text(1e6) == "1000000"
    with pytest.raises(InvalidInput):
        deadline.seconds_text(0)


def test_only_a_full_run_counts_as_timed_out() -> None:
    assert deadline.timed_out(124, 10.0, 10.0)
    assert deadline.timed_out(137, 15.0, 10.0)
    assert not deadline.timed_out(124, 0.1, 10.0)  # the command's own 124
    assert not deadline.timed_out(1, 20.0, 10.0)


def _sh(line: str, stdin: str = "") -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    done = subprocess.run(
        ["sh", "-c", line], input=stdin, capture_output=True, text=True, check=False, timeout=30
    )
    return done, time.monotonic() - began


def test_the_wrapped_line_passes_stdin_output_and_status() -> None:
    done, _ = _sh(deadline.with_deadline("cat; echo err >&2; exit 3", 10), stdin="in\n")
    assert (done.returncode, done.stdout, done.stderr) == (3, "in\n", "err\n")


def test_the_wrapped_line_stops_everything_it_started(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # A child that ignores SIGTERM and outlives its parent: only the group kill stops it.
    line = f"sh -c 'trap \"\" TERM; sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; sleep 61'"
    done, elapsed = _sh(deadline.with_deadline(line, 0.5))
    assert done.returncode in deadline.TIMED_OUT_STATUSES
    assert elapsed < 0.5 + deadline.KILL_GRACE + 2
    for pid in pids.read_text().split():
        assert not _running(int(pid)), f"process {pid} outlived its deadline"


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a killed child waits to be reaped)."""
    deadline_at = time.monotonic() + 2
    while time.monotonic() < deadline_at:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if state in {"Z", "X"}:
            return False
        time.sleep(0.05)
    return True


def test_a_watched_line_reads_nothing_and_ends_as_usual_while_its_input_stays_open() -> None:
    with subprocess.Popen(
        ["sh", "-c", deadline.with_deadline("cat; echo out; exit 3", 10, watch=True)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.wait(timeout=10) == 3  # cat read /dev/null, not the open input
        assert process.stdout is not None
        assert process.stdout.read() == "out\n"


def test_a_watched_line_is_stopped_with_all_it_started_when_its_input_ends(
    tmp_path: Path,
) -> None:
    """Closing an SSH channel stops nothing on the host: a killed worker's command ran on to
    its deadline. The end of the channel's input now stops it and what it started."""
    pids = tmp_path / "pids"
    line = f"sh -c 'trap \"\" TERM; sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; sleep 61'"
    with subprocess.Popen(
        ["sh", "-c", deadline.with_deadline(line, 120, watch=True)], stdin=subprocess.PIPE
    ) as process:
        began = time.monotonic()
        while not (pids.exists() and len(pids.read_text().split()) == 2):
            assert time.monotonic() - began < 10
            time.sleep(0.02)
        assert process.stdin is not None
        process.stdin.close()  # the channel closed: the worker gave up or was killed
        assert process.wait(timeout=10) in deadline.TIMED_OUT_STATUSES
    for pid in pids.read_text().split():
        assert not _running(int(pid)), f"process {pid} outlived its channel"


def test_a_watched_line_without_a_deadline_goes_when_its_input_ends(tmp_path: Path) -> None:
    """An exec has no deadline: a killed worker's ran on for ever. The channel's end stops
    it, while an exec that exits leaves what it started on purpose (its own 137 included)."""
    pids = tmp_path / "pids"
    kept = f"sleep 60 & echo $! >> {pids}; exit 137"
    with subprocess.Popen(
        ["sh", "-c", deadline.with_deadline(kept, None, watch=True)], stdin=subprocess.PIPE
    ) as process:
        assert process.wait(timeout=10) == 137
    [server] = pids.read_text().split()
    assert _running(int(server)), "an exec's background job went with its exit"
    subprocess.run(["kill", "-KILL", server], check=True)
    pids.unlink()

    line = f"sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; sleep 61"
    with subprocess.Popen(
        ["sh", "-c", deadline.with_deadline(line, None, watch=True)], stdin=subprocess.PIPE
    ) as process:
        began = time.monotonic()
        while not (pids.exists() and len(pids.read_text().split()) == 2):
            assert time.monotonic() - began < 10
            time.sleep(0.02)
        time.sleep(0.5)  # no deadline: nothing stops it while the channel is open
        assert process.poll() is None
        assert process.stdin is not None
        process.stdin.close()
        assert process.wait(timeout=10) == 137
    for pid in pids.read_text().split():
        assert not _running(int(pid)), f"process {pid} outlived its channel"


def test_a_watched_line_ended_by_a_signal_says_so_by_its_status_alone() -> None:
    """An exec's output is the command's: the shell's "Terminated" is not added to it."""
    with subprocess.Popen(
        ["sh", "-c", deadline.with_deadline("echo e >&2; kill -TERM $$", None, watch=True)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.wait(timeout=10) == 128 + 15
        assert process.stderr is not None
        assert process.stderr.read() == "e\n"


def _feed(process: subprocess.Popen[bytes], chunks: list[bytes], *, end: bool) -> None:
    """Write ``chunks`` as frames (and the end of input with ``end``), leaving the input open."""
    assert process.stdin is not None
    for chunk in chunks:
        process.stdin.write(deadline.frame(chunk))
    if end:
        process.stdin.write(deadline.END_OF_INPUT)
    process.stdin.flush()


def test_a_framed_line_reads_its_input_byte_for_byte_and_ends_while_the_channel_stays_open(
    tmp_path: Path,
) -> None:
    """An exec with stdin was not watched (the channel's input was its input). Its input now
    travels in frames: what the command reads is exactly what was sent, lines that look like
    frames included, and its end of input comes while the channel stays open."""
    rng = random.Random(7)
    sent = [b"0\n", b"12\nab", b"\n", bytes(range(256)) * 300, b"no newline at the end"]
    sent += [rng.randbytes(rng.randrange(1, 70_000)) for _ in range(20)]
    received = tmp_path / "received"
    line = deadline.with_deadline(f"cat > {received}; echo read; exit 3", None, framed=True)
    with subprocess.Popen(["sh", "-c", line], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as p:
        _feed(p, sent, end=True)
        assert p.wait(timeout=10) == 3  # the input still open: only the last frame ended cat
        assert p.stdout is not None
        assert p.stdout.read() == b"read\n"
    assert received.read_bytes() == b"".join(sent)


def test_a_framed_line_that_stops_reading_ends_as_usual() -> None:
    """A command that reads part of its input: the rest is dropped, not left blocking it."""
    line = deadline.with_deadline("head -c 5; exit 0", 10, framed=True)
    with subprocess.Popen(["sh", "-c", line], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as p:
        _feed(p, [b"x" * 40_000], end=False)
        assert p.wait(timeout=10) == 0
        assert p.stdout is not None
        assert p.stdout.read() == b"xxxxx"


@pytest.mark.parametrize("input_ended", [False, True], ids=["mid_input", "after_input"])
def test_a_framed_line_is_stopped_with_all_it_started_when_the_channel_ends(
    tmp_path: Path, input_ended: bool
) -> None:
    """A killed worker's exec with stdin ran on for ever: the end of its channel was only the
    end of its input. The channel's end now stops it and what it started, whether the input
    was still coming or had ended."""
    pids = tmp_path / "pids"
    line = f"sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; cat >/dev/null; sleep 61"
    with subprocess.Popen(
        ["sh", "-c", deadline.with_deadline(line, None, framed=True)], stdin=subprocess.PIPE
    ) as process:
        _feed(process, [b"some input\n"], end=input_ended)
        began = time.monotonic()
        while not (pids.exists() and len(pids.read_text().split()) == 2):
            assert time.monotonic() - began < 10
            time.sleep(0.02)
        time.sleep(0.3)
        assert process.poll() is None
        assert process.stdin is not None
        process.stdin.close()  # the channel closed: the worker was killed
        assert process.wait(timeout=10) == 137
    for pid in pids.read_text().split():
        assert not _running(int(pid)), f"process {pid} outlived its channel"


def _group_left(pgid: int) -> list[int]:
    """The live (not zombie) processes still in process group ``pgid``."""
    left = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] not in {"Z", "X"}:
                left.append(int(stat.parent.name))
    return left


def test_a_framed_line_that_does_not_read_is_stopped_when_the_channel_ends(
    tmp_path: Path,
) -> None:
    """A command that never reads its input held the watcher's copy back once the FIFO was
    full (64 KiB): nothing read the channel any more, so its end, behind the data, was never
    seen, and a killed worker's exec ran on for ever. The channel's output going away (sshd
    gone with the connection) now stops it too, and nothing of the wrapper is left."""
    pids = tmp_path / "pids"
    line = f"sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; sleep 61"
    with subprocess.Popen(
        ["sh", "-c", deadline.with_deadline(line, None, framed=True)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,  # the wrapper's own jobs stay in this group: see below
    ) as process:
        try:
            assert process.stdin is not None
            assert process.stdout is not None
            os.set_blocking(process.stdin.fileno(), False)
            sent, chunk = 0, deadline.frame(b"x" * 1_000_000)
            began = time.monotonic()
            while sent < len(chunk):  # until the host stops taking it: the copy is held back
                assert time.monotonic() - began < 10
                try:
                    sent += os.write(process.stdin.fileno(), chunk[sent:])
                except BlockingIOError:
                    if pids.exists() and len(pids.read_text().split()) == 2:
                        break
                    time.sleep(0.02)
            time.sleep(0.3)
            assert process.poll() is None
            process.stdin.close()  # the channel closed: the worker was killed, sshd went
            process.stdout.close()
            assert process.wait(timeout=10) == 137
        except BaseException:  # on the old code: the wrapper's jobs and the command's group
            for pid in [process.pid, *map(int, pids.read_text().split() if pids.exists() else [])]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
            raise
    for pid in pids.read_text().split():
        assert not _running(int(pid)), f"process {pid} outlived its channel"
    began = time.monotonic()
    while left := _group_left(process.pid):  # the copy, the watchers: gone with the channel
        assert time.monotonic() - began < 3, f"the wrapper left {left}"
        time.sleep(0.05)


def test_an_empty_chunk_is_no_frame() -> None:
    assert deadline.frame(b"ab\n") == b"3\nab\n"
    with pytest.raises(InvalidInput, match="ends the input"):
        deadline.frame(b"")


def test_a_framed_line_cut_mid_input_is_killed_before_its_input_ends(tmp_path: Path) -> None:
    """A worker killed mid-input closed the FIFO before the kill: the command read an end of
    input after the part it had, took it for the whole and acted on it (here: wrote its
    marker) in the moment before the kill came (18 times in 20 on the old code). The group
    is now killed first: the command never sees an end its input did not have."""
    for attempt in range(5):
        got, marker = tmp_path / f"got{attempt}", tmp_path / f"whole{attempt}"
        line = f"cat > {got} && echo whole > {marker}; sleep 30"
        with subprocess.Popen(
            ["sh", "-c", deadline.with_deadline(line, None, framed=True)], stdin=subprocess.PIPE
        ) as process:
            _feed(process, [b"a" * 10], end=False)
            assert process.stdin is not None
            process.stdin.write(b"100\n" + b"b" * 10)  # a frame the channel's end cuts short
            process.stdin.flush()
            began = time.monotonic()
            while not (got.exists() and got.stat().st_size >= 10):  # the first frame is read
                assert time.monotonic() - began < 10
                time.sleep(0.02)
            process.stdin.close()
            assert process.wait(timeout=10) == 137
        time.sleep(0.2)
        assert not marker.exists(), "the command took a cut input for the whole"


def test_a_host_whose_head_reads_ahead_refuses_framed_input(tmp_path: Path) -> None:
    """Busybox's head -c reads ahead through stdio and drops what it read past its count:
    on such a host (Alpine's sh, or any busybox sh, which runs its own head whatever PATH
    says) the framed input reached the command cut and mixed up, and it exited as if all
    was well (3, having read 2 of 725180 bytes on the old code). Such a host now refuses
    the command before it runs, saying why."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("no busybox on this machine")
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("sh", "head", "cat", "mktemp", "mkfifo", "timeout", "rm", "kill", "sleep"):
        (tools / tool).symlink_to(busybox)
    received = tmp_path / "received"
    line = deadline.with_deadline(f"cat > {received}; exit 3", None, framed=True)
    with subprocess.Popen(
        [str(tools / "sh"), "-c", line],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": str(tools)},
    ) as process:
        assert process.stdin is not None
        # The host refuses before it reads: what the pipe did not take stays in our buffer,
        # and its close (here, not in Popen's exit) may meet the broken pipe as well.
        with contextlib.suppress(BrokenPipeError):
            _feed(process, [b"0\n", bytes(range(256)) * 300, b"tail"], end=True)
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
        assert process.wait(timeout=10) == 125
        assert process.stderr is not None
        assert "head -c reads past" in process.stderr.read().decode()
    assert not received.exists()
