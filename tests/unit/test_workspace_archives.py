"""Packing is deterministic and bounded; unpacking refuses every hostile archive."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

import sandboxer
from sandboxer.errors import InvalidInput, WorkspaceRefused
from sandboxer.transfer import place_copy
from sandboxer.workspaces.extract import extract_archive, extract_host_tree, link_stays_inside
from sandboxer.workspaces.limits import ArchiveLimits
from sandboxer.workspaces.pack import pack_directory
from sandboxer.workspaces.refs import object_ref, parse_object_ref


def make_tree(root: Path) -> Path:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "main.py").write_text("print('hi')\n")
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    (root / "latest").symlink_to("src/pkg/main.py")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    os.mkfifo(root / "fifo")
    return root


def test_the_same_tree_packs_to_the_same_bytes_whatever_its_times(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    first = pack_directory(tree, tmp_path / "a.tar")
    for path in tree.rglob("*"):
        if not path.is_symlink() and not path.is_fifo():
            os.utime(path, (1, 1))
    second = pack_directory(tree, tmp_path / "b.tar")
    assert first.sha256 == second.sha256
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    (tree / "run.sh").write_text("#!/bin/sh\necho changed\n")
    assert pack_directory(tree, tmp_path / "c.tar").sha256 != first.sha256


def test_excluded_names_and_special_files_are_left_out(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    packed = pack_directory(tree, tmp_path / "a.tar", exclude=[".git"])
    with tarfile.open(packed.path) as tar:
        names = tar.getnames()
        assert names == ["latest", "run.sh", "src", "src/pkg", "src/pkg/main.py"]
        assert all(m.uid == 0 and m.mtime == tar.getmember("src").mtime for m in tar)
    out = tmp_path / "out"
    out.mkdir()
    assert extract_archive(packed.path, out, ArchiveLimits()) == 5
    assert os.readlink(out / "latest") == "src/pkg/main.py"
    assert (out / "run.sh").stat().st_mode & 0o111
    assert (out / "src" / "pkg" / "main.py").read_text() == "print('hi')\n"


def test_packing_refuses_links_out_and_trees_over_the_limits(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(b"x" * (2 * 1024 * 1024))
    with pytest.raises(WorkspaceRefused, match="SANDBOXER_UPLOAD_MAX_MB"):
        pack_directory(tree, tmp_path / "a.tar", limits=ArchiveLimits(max_bytes=1024 * 1024))
    with pytest.raises(WorkspaceRefused, match="entries"):
        pack_directory(tree, tmp_path / "a.tar", limits=ArchiveLimits(max_entries=0))
    (tree / "out").symlink_to("../../etc/passwd")
    with pytest.raises(WorkspaceRefused, match="outside the directory"):
        pack_directory(tree, tmp_path / "a.tar")
    (tree / "out").unlink()
    (tree / "sub").mkdir()
    (tree / "back").symlink_to("sub/../big")  # inside as text, but a worker refuses it
    with pytest.raises(WorkspaceRefused, match=r"not sub/\.\./x"):
        pack_directory(tree, tmp_path / "a.tar")


@pytest.mark.parametrize(
    ("name", "target", "inside"),
    [
        ("l", "x", True),
        ("l", "./x/", True),
        ("l", ".", True),
        ("a/l", "../b", True),
        ("a/b/l", "../../c/d", True),
        ("./a/l", "../b", True),
        ("l", "..", False),
        ("l", "/etc", False),
        ("l", "", False),
        ("a/up", "../../outside", False),
        ("l", "sub/../x", False),  # true as text only while sub is a real directory
        ("a", "z/z/q/../../..", False),
        ("q", "p/p/../..", False),
        ("a/l", "../x/..", False),
    ],
)
def test_a_link_stays_inside_only_climbing_first_and_no_higher_than_it_stands(
    name: str, target: str, inside: bool
) -> None:
    assert link_stays_inside(name, target) is inside


SYM, DIR = {"type": tarfile.SYMTYPE}, {"type": tarfile.DIRTYPE, "mode": 0o755}

HOSTILE: dict[str, list[tuple[str, dict[str, object]]]] = {
    "dotdot": [("../evil", {})],
    "absolute": [("/tmp/sandboxer-absolute-evil", {})],
    "link-then-write": [("link", {**SYM, "linkname": "/etc"}), ("link/evil", {})],
    "chained-links-then-write": [
        ("p", {**SYM, "linkname": "."}),
        ("q", {**SYM, "linkname": "p/p/../.."}),
        ("q/evil", {}),
    ],
    # Checked as text while z is missing, "a" is inside (normpath: "evil"); once z -> . is
    # unpacked, z/z/q is q and the three '..' climb out of deep/out.
    "forward-link": [
        ("a", {**SYM, "linkname": "z/z/q/../../../evil"}),
        ("q", DIR),
        ("z", {**SYM, "linkname": "."}),
    ],
    "name-twice": [("f", {}), ("f", {"data": b"evil2"})],
    "written-below-then-link": [("x/evil", {}), ("x", {**SYM, "linkname": "."})],
    "relative-link-out": [("a", DIR), ("a/up", {**SYM, "linkname": "../../outside"})],
    "device": [("null", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3})],
    "fifo": [("pipe", {"type": tarfile.FIFOTYPE})],
    "hardlink": [("passwd", {"type": tarfile.LNKTYPE, "linkname": "/etc/passwd"})],
    "many": [(f"f{index}", {}) for index in range(20)],
    "bomb": [("big", {"data": b"y" * 4096})],
    "too-deep": [("d/" * 1500 + "f", {})],
    "path-too-long": [(("p" * 200 + "/") * 16 + "f", {})],
    "name-too-long": [("n" * 256, {})],
    "link-target-too-long": [("l", {**SYM, "linkname": "t/" * 2000})],
}


def hostile(kind: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, given in HOSTILE[kind]:
            fields = dict(given)
            data = fields.pop("data", b"evil")
            assert isinstance(data, bytes)
            info = tarfile.TarInfo(name)
            info.size = len(data) if fields.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0
            for key, value in fields.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_archives_are_refused_before_anything_is_written(kind: str, tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    archive.write_bytes(hostile(kind))
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    with pytest.raises(WorkspaceRefused):
        extract_archive(archive, out, ArchiveLimits(max_bytes=1024, max_entries=10))
    assert list(out.iterdir()) == []
    assert not (tmp_path / "deep" / "evil").exists()
    assert not Path("/tmp/sandboxer-absolute-evil").exists()


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("too-deep", "nests 1501 names deep, more than the 256 a workspace path may"),
        ("path-too-long", "is 3217 bytes long, more than the 3072 a workspace path may be"),
        ("name-too-long", "holds a name of 256 bytes, more than the 255 a file system takes"),
        ("link-target-too-long", "target is 4000 bytes long, more than the 3072"),
    ],
)
def test_paths_deeper_or_longer_than_a_workspace_may_have_are_refused_saying_so(
    kind: str, why: str, tmp_path: Path
) -> None:
    """Unpacked, these failed half-way with an OSError naming the worker's staging path
    (ENAMETOOLONG), or unpacked and then failed a backend's copy with RecursionError."""
    archive = tmp_path / "evil.tar"
    archive.write_bytes(hostile(kind))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(WorkspaceRefused, match=why):
        extract_archive(archive, out, ArchiveLimits())
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("unpack", [extract_archive, extract_host_tree])
def test_directories_an_archives_names_imply_count_as_entries(
    unpack: Callable[[Path, Path, ArchiveLimits], object], tmp_path: Path
) -> None:
    """50 entries under a limit of 1000, each ``xN/d/.../f`` 30 deep: they made 1550
    directories, and at the default limit an archive of 400 MiB made fifty million."""
    archive = tmp_path / "implied.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for index in range(50):
            tar.addfile(tarfile.TarInfo(f"x{index}/" + "d/" * 30 + "f"))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(WorkspaceRefused, match="makes more than 1000 entries"):
        unpack(archive, out, ArchiveLimits(max_entries=1000))
    assert list(out.iterdir()) == []
    unpack(archive, out, ArchiveLimits(max_entries=1600))  # 50 files, 1550 directories
    assert sum(1 for _ in out.rglob("*")) == 1600


def test_packing_refuses_a_tree_deeper_than_a_worker_unpacks(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "/".join(["d"] * 256)).mkdir(parents=True)  # as deep as a workspace path may be
    packed = pack_directory(tree, tmp_path / "ok.tar")
    out = tmp_path / "out"
    out.mkdir()
    assert extract_archive(packed.path, out, ArchiveLimits()) == 256
    (tree / "/".join(["d"] * 257)).mkdir()
    with pytest.raises(WorkspaceRefused, match=r"nests 257 names deep.*--exclude"):
        pack_directory(tree, tmp_path / "deep.tar")


HOST_TOLERATES = {"device", "fifo"}
"""What a host's tree may hold and a snapshot leaves out; a hard link out stays refused."""


@pytest.mark.parametrize("kind", sorted(set(HOSTILE) - HOST_TOLERATES))
def test_a_hosts_tree_is_refused_as_any_hostile_archive(kind: str, tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    archive.write_bytes(hostile(kind))
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    with pytest.raises(WorkspaceRefused):
        extract_host_tree(archive, out, ArchiveLimits(max_bytes=1024, max_entries=10))
    assert list(out.iterdir()) == []
    assert not (tmp_path / "deep" / "evil").exists()


def test_a_hosts_tar_unpacks_hard_links_as_copies_and_leaves_fifos_out(tmp_path: Path) -> None:
    """What a sandbox can make in its directory, archived by the host's own tar (GNU tar stores
    the second name of a file as a hard link, and a FIFO as a FIFO), as a snapshot reads it."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "data").write_text("shared\n")
    (tree / "data").chmod(0o640)
    os.link(tree / "data", tree / "sub" / "again")
    os.mkfifo(tree / "pipe")
    archive = tmp_path / "host.tar"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(archive), "."], check=True)
    with tarfile.open(archive) as tar:
        assert {m.type for m in tar} >= {tarfile.LNKTYPE, tarfile.FIFOTYPE}
    with pytest.raises(WorkspaceRefused, match="of a kind a workspace may not hold"):
        extract_archive(archive, tmp_path / "strict", ArchiveLimits())  # an upload: refused
    out = tmp_path / "out"
    out.mkdir()
    unpacked = extract_host_tree(archive, out, ArchiveLimits())
    assert unpacked.copied == ("sub/again",)
    assert unpacked.left_out.warnings() == ("left out 1 FIFO: pipe",)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "data",
        "sub",
        "sub/again",
    ]
    for name in ("data", "sub/again"):
        assert (out / name).read_text() == "shared\n"
        assert (out / name).stat().st_mode & 0o777 == 0o640
    assert (out / "data").stat().st_ino != (out / "sub" / "again").stat().st_ino
    assert (out / "data").stat().st_nlink == 1  # a copy: writing one leaves the other
    # A copy counts towards the size limit as the file it copies.
    with pytest.raises(WorkspaceRefused, match="SANDBOXER_UPLOAD_MAX_MB"):
        extract_host_tree(archive, tmp_path, ArchiveLimits(max_bytes=len("shared\n") + 1))


@pytest.mark.parametrize(
    ("entries", "linkname"),
    [
        ([("l", "link:f"), ("f", "file:x")], "l"),  # a symlink, not a file
        ([("d", "dir")], "d"),
        ([], "later"),  # not earlier in the archive
        ([("f", "file:x")], "../f"),
    ],
)
def test_a_hard_link_copies_only_an_earlier_regular_file(
    entries: list[tuple[str, str]], linkname: str, tmp_path: Path
) -> None:
    archive = tmp_path / "links.tar"
    archive.write_bytes(tar_of([*entries, ("h", f"hard:{linkname}"), ("later", "file:")]))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(WorkspaceRefused, match="hard link 'h'"):
        extract_host_tree(archive, out, ArchiveLimits())
    assert list(out.iterdir()) == []


def tar_of(entries: list[tuple[str, str]]) -> bytes:
    """A tar of ``(name, what)``: ``dir``, ``file:<content>``, ``link:<target>`` or
    ``hard:<target>`` (a hard link)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, what in entries:
            info = tarfile.TarInfo(name)
            kind, _, value = what.partition(":")
            data = None
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, value
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, value
            else:
                info.size, info.mode, data = len(value), 0o644, io.BytesIO(value.encode())
            tar.addfile(info, data)
    return buffer.getvalue()


def fetched(scratch: Path, entries: list[tuple[str, str]]) -> Path:
    """A copy out as the client has fetched it, in its own scratch directory."""
    scratch.mkdir()
    (scratch / "fetched").write_bytes(tar_of(entries))
    return scratch / "fetched"


# Each copy out as the worker answers it (a tar of the directory's contents), made by a
# hostile sandbox to plant a link in the first copies that a later copy writes through.
PLANTED = {
    # The reviewer's case: "a" is checked while "z" is missing, so it looks inside.
    "forward-link": [
        [("a", "link:z/z/q/../../../victim"), ("q", "dir"), ("z", "link:.")],
        [("a", "dir"), ("a/authorized_keys", "file:ATTACKER")],
    ],
    # Every link is inside where its archive puts it, but the merge would place the second
    # copy's link through the first's: a/a/a is the target itself, so l stands in b and
    # its three '..' reach the victim.
    "link-placed-through-a-link": [
        [("a", "link:.")],
        [
            ("a", "dir"),
            ("a/a", "dir"),
            ("a/a/a", "dir"),
            ("a/a/a/b", "dir"),
            ("a/a/a/b/l", "link:../../../victim"),
        ],
        [("b", "dir"), ("b/l", "dir"), ("b/l/authorized_keys", "file:ATTACKER")],
    ],
}


@pytest.mark.parametrize("case", sorted(PLANTED))
def test_copies_out_into_the_same_directory_never_write_outside_it(
    case: str, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"  # as if ~/.ssh
    victim.mkdir()
    target = tmp_path / "user" / "results"  # sandboxer cp sb:out ./results, again and again
    target.parent.mkdir()
    for index, entries in enumerate(PLANTED[case]):
        archive = fetched(tmp_path / "user" / f".sandboxer-cp-{index}", entries)
        # Refusing a copy is one way to stay inside; the checks below are the test.
        with contextlib.suppress(WorkspaceRefused, InvalidInput):
            place_copy(archive, "dir", target, ArchiveLimits())
    assert list(victim.iterdir()) == []
    for path in target.rglob("*"):
        assert Path(os.path.realpath(path)).is_relative_to(target), path


def test_a_copy_out_replaces_a_link_in_the_target_and_refuses_a_directory_there(
    tmp_path: Path,
) -> None:
    target = tmp_path / "results"
    (target / "real").mkdir(parents=True)
    (target / "real" / "keep").write_text("kept\n")
    (target / "file").symlink_to("real/keep")
    (target / "dir").symlink_to("real")
    first = fetched(
        tmp_path / "cp-1", [("file", "file:new"), ("real", "dir"), ("real/add", "file:x")]
    )
    place_copy(first, "dir", target, ArchiveLimits())
    assert not (target / "file").is_symlink()  # replaced, not written through
    assert (target / "file").read_text() == "new"
    assert (target / "real" / "keep").read_text() == "kept\n"
    assert (target / "real" / "add").read_text() == "x"
    second = fetched(tmp_path / "cp-2", [("new", "file:n"), ("dir", "dir"), ("dir/evil", "file:e")])
    with pytest.raises(InvalidInput, match="dir is a symlink, and the copy brings a directory"):
        place_copy(second, "dir", target, ArchiveLimits())
    assert not (target / "new").exists()  # refused before anything moved
    assert not (target / "real" / "evil").exists()


def test_not_a_tar_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "junk.tar"
    archive.write_bytes(b"\x00junk" * 200)
    with pytest.raises(WorkspaceRefused, match="not a readable tar"):
        extract_archive(archive, tmp_path, ArchiveLimits())


def test_references_name_a_sha256_exactly() -> None:
    digest = "ab" * 32
    assert parse_object_ref(object_ref(digest)) == digest
    for bad in ("object:sha256:" + "AB" * 32, "object:sha256:abc", "object:md5:" + digest):
        with pytest.raises(WorkspaceRefused, match="object:sha256"):
            parse_object_ref(bad)


PARSE_PATIENCE = 10.0
"""Seconds a child gets to unpack an archive whose headers made Python's own pax parsing
(CVE-2024-6232) take from 20 s to minutes; the fix answers in milliseconds."""
CHILD_ADDRESS_SPACE = 1 << 30
"""Bytes of address space the child may map: an archive that makes the unpacking hold
more fails it with MemoryError rather than filling the machine."""
UNPACK_IN_A_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[3]), int(sys.argv[3])))
from pathlib import Path
from sandboxer.errors import WorkspaceRefused
from sandboxer.workspaces.extract import extract_archive
from sandboxer.workspaces.limits import ArchiveLimits
try:
    print(json.dumps({"entries": extract_archive(Path(sys.argv[1]), Path(sys.argv[2]), ArchiveLimits())}))
except WorkspaceRefused as exc:
    print(json.dumps({"refused": str(exc)}))
"""


def unpacked_in_a_child(archive: Path, out: Path) -> dict[str, object]:
    """extract_archive run in a child process, killed after PARSE_PATIENCE and held to
    CHILD_ADDRESS_SPACE: the backtracking regex holds the GIL, so a thread's join(timeout)
    would wait it out (26 s for 128 KiB) rather than fail the test, and an unbounded sparse
    map would take the test's own memory."""
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                UNPACK_IN_A_CHILD,
                str(archive),
                str(out),
                str(CHILD_ADDRESS_SPACE),
            ],
            capture_output=True,
            text=True,
            timeout=PARSE_PATIENCE,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"extract_archive was still parsing {archive.name} after {PARSE_PATIENCE} s")
    assert done.returncode == 0, done.stderr[-1000:]
    outcome = json.loads(done.stdout)
    assert isinstance(outcome, dict)
    return outcome


def header_then_file(tar: tarfile.TarFile, kind: bytes, payload: bytes, name: str) -> None:
    """A raw pax (or GNU long-name) header carrying ``payload``, then a small file ``name``."""
    header = tarfile.TarInfo("././@PaxHeader" if kind == tarfile.XHDTYPE else "././@LongLink")
    header.type, header.size = kind, len(payload)
    tar.addfile(header, io.BytesIO(payload))
    entry = tarfile.TarInfo(name)
    entry.size = 3
    tar.addfile(entry, io.BytesIO(b"hi\n"))


HOSTILE_HEADERS: dict[str, tuple[bytes, bytes, int, str]] = {
    # kind of header, payload, how many entries carry one, what the refusal says
    "pax-over-the-bound": (
        tarfile.XHDTYPE,
        b"1" * (256 * 1024),
        1,
        "holds a pax extended header of 262144 bytes (at byte 0), more than the 64 KiB",
    ),
    "pax-not-records": (
        tarfile.XHDTYPE,
        b"1" * 60_000,
        6,
        "malformed pax extended header (at byte 0): a record does not start with its length",
    ),
    "gnu-long-name-over-the-bound": (
        tarfile.GNUTYPE_LONGNAME,
        b"a" * (256 * 1024),
        1,
        "holds a GNU long name of 262144 bytes (at byte 0), more than the 64 KiB",
    ),
}


@pytest.mark.parametrize("kind", list(HOSTILE_HEADERS))
def test_a_pax_header_that_would_backtrack_is_refused_at_once(kind: str, tmp_path: Path) -> None:
    """A digit run in a pax header cost Python 3.11.7's tarfile time quadratic in its length
    with the GIL held (256 KiB: minutes; six of 60,000: about 25 s), freezing the worker that
    unpacks an API key's copy. An oversized or malformed header is now refused before it is
    parsed. (The GNU long name was read, then failed the unpack with a bare OSError.)"""
    header_kind, payload, times, reason = HOSTILE_HEADERS[kind]
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w", format=tarfile.USTAR_FORMAT) as tar:
        for index in range(times):
            header_then_file(tar, header_kind, payload, f"f{index}.txt")
    out = tmp_path / "out"
    out.mkdir()
    outcome = unpacked_in_a_child(archive, out)
    assert reason in str(outcome.get("refused")), outcome
    assert list(out.iterdir()) == []


LONG_DIRECTORY = "répertoire-" + "d" * 90
LONG_FILE = "ünïcödé-名前-" + "f" * 100 + ".txt"
LONG_LINK = "lien-" + "l" * 100


@pytest.mark.parametrize("writer", ["python-pax", "python-gnu", "gnu-tar-posix", "gnu-tar-gnu"])
def test_long_and_non_ascii_names_unpack_and_long_pax_records_parse_in_linear_time(
    writer: str, tmp_path: Path
) -> None:
    """Names past ustar's 100 bytes, non-ASCII, as Python's tarfile and GNU tar write them (pax
    records or GNU long names), then six files each with a real, well-formed pax header holding
    a 60,000-digit comment: all unpack, quickly. The comment alone made 3.11.7's tarfile
    search its header quadratically (about 25 s here): a bound on a header's size alone would
    not have been enough."""
    tree = tmp_path / "tree"
    (tree / LONG_DIRECTORY).mkdir(parents=True)
    (tree / LONG_DIRECTORY / LONG_FILE).write_text("contenu\n")
    (tree / LONG_LINK).symlink_to(f"{LONG_DIRECTORY}/{LONG_FILE}")
    archive = tmp_path / "real.tar"
    if writer.startswith("python"):
        form = tarfile.PAX_FORMAT if writer == "python-pax" else tarfile.GNU_FORMAT
        with tarfile.open(archive, "w", format=form) as tar:
            for name in (LONG_DIRECTORY, f"{LONG_DIRECTORY}/{LONG_FILE}", LONG_LINK):
                tar.add(tree / name, arcname=name, recursive=False)
    else:
        form = "posix" if writer == "gnu-tar-posix" else "gnu"
        subprocess.run(
            ["tar", f"--format={form}", "-C", str(tree), "-cf", str(archive), "."], check=True
        )
    with tarfile.open(archive, "a", format=tarfile.PAX_FORMAT) as tar:
        for index in range(6):
            note = tarfile.TarInfo(f"notes/n{index}.txt")
            note.pax_headers = {"comment": "7" * 60_000}
            note.size = len(b"note\n")
            tar.addfile(note, io.BytesIO(b"note\n"))
    out = tmp_path / "out"
    out.mkdir()
    outcome = unpacked_in_a_child(archive, out)
    assert "refused" not in outcome, outcome
    assert (out / LONG_DIRECTORY / LONG_FILE).read_text() == "contenu\n"
    assert os.readlink(out / LONG_LINK) == f"{LONG_DIRECTORY}/{LONG_FILE}"
    assert outcome == {"entries": 9 + (1 if writer.startswith("gnu-tar") else 0)}  # GNU tar: "."
    assert [(out / "notes" / f"n{index}.txt").read_text() for index in range(6)] == ["note\n"] * 6


TAR_OPENERS = {"tarfile.open", "tarfile.TarFile", "tarfile.TarFile.open", "tarfile.is_tarfile"}


def test_every_tar_the_service_reads_goes_through_the_guarded_opener() -> None:
    """One way to read a tar (untrusted_tar.open_untrusted), so that no new reader parses a
    client's or a host's headers with Python's own backtracking pax parser again."""
    package = Path(sandboxer.__file__).parent
    opener = package / "workspaces" / "untrusted_tar.py"
    readers = []
    for path in sorted(package.rglob("*.py")):
        if path == opener:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            called = ast.unparse(node.func)
            if called not in TAR_OPENERS:
                continue
            given = [*node.args[1:2], *(k.value for k in node.keywords if k.arg == "mode")]
            mode = given[0] if given else None
            writes = isinstance(mode, ast.Constant) and str(mode.value)[:1] in {"w", "x"}
            if not writes:
                readers.append(f"{path.relative_to(package.parent)}:{node.lineno}")
    assert readers == []


def pax_record(keyword: str, value: str) -> bytes:
    """One ``LENGTH KEYWORD=VALUE\\n`` record of a pax header, LENGTH counting itself."""
    body = f" {keyword}={value}\n".encode()
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def raw_pax_then_file(tar: tarfile.TarFile, payload: bytes, name: str, data: bytes) -> None:
    """A raw pax header of ``payload`` (repeated keywords and all), then a file of ``data``."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, len(payload)
    tar.addfile(header, io.BytesIO(payload))
    entry = tarfile.TarInfo(name)
    entry.size = len(data)
    tar.addfile(entry, io.BytesIO(data))


def old_gnu_sparse(name: str, extension_blocks: int) -> bytes:
    """An old GNU ``S`` entry (no data) with ``extension_blocks`` blocks of 21 regions each."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[482] = 1  # isextended
    header[483:495] = b"%011o\0" % (1 << 20)  # realsize
    header[148:156] = b"%06o\0 " % (256 + sum(header[:148]) + sum(header[156:512]))
    blocks = bytearray()
    for index in range(extension_blocks):
        block = bytearray(tarfile.BLOCKSIZE)
        for pair in range(21):
            block[pair * 24 : pair * 24 + 24] = b"%011o\0%011o\0" % (1 + pair * 2, 1)
        block[504] = 1 if index < extension_blocks - 1 else 0
        blocks += block
    return bytes(header) + bytes(blocks)


def hostile_sparse_archive(form: str, path: Path) -> None:
    """An archive whose GNU sparse maps, in ``form``, list far more regions than a file has."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        if form == "posix-1.0":
            # The count tarfile read first and believed: 99,999,999,999 regions, then "0"
            # lines until the archive ends (a 200 MiB one made 100 million ints).
            records = b"".join(
                pax_record(keyword, value)
                for keyword, value in (
                    ("GNU.sparse.major", "1"),
                    ("GNU.sparse.minor", "0"),
                    ("GNU.sparse.name", "sparse.bin"),
                    ("GNU.sparse.realsize", "1048576"),
                )
            )
            raw_pax_then_file(tar, records, "sparse.bin", b"99999999999\n" + b"0\n" * (16 << 20))
        elif form == "posix-0.1":
            numbers = ",".join(["1"] * 20_000)  # 10,000 regions in a 40 KB header
            records = pax_record("GNU.sparse.size", "1048576") + pax_record(
                "GNU.sparse.map", numbers
            )
            raw_pax_then_file(tar, records, "sparse.bin", b"")
        elif form == "posix-0.0":
            # A 0.0 map fits about 1,300 regions in a pax header's 64 KiB: each here is
            # within the bound for one file, but 60 of them list 72,000, all kept by tarfile
            # with their entries until the archive is closed.
            pairs = b"".join(
                pax_record("GNU.sparse.offset", str(1 + 2 * index))
                + pax_record("GNU.sparse.numbytes", "1")
                for index in range(1200)
            )
            records = pax_record("GNU.sparse.size", "4096") + pax_record(
                "GNU.sparse.numblocks", "1200"
            )
            for index in range(60):
                raw_pax_then_file(tar, records + pairs, f"s{index}.bin", b"")
    if form == "gnu":
        blocks = old_gnu_sparse("sparse.bin", extension_blocks=400)  # 8,400 regions
        path.write_bytes(blocks + bytes(2 * tarfile.BLOCKSIZE))


SPARSE_REGIONS = {0: b"start", 3 << 20: b"middle" * 1000, (8 << 20) - 3: b"end"}
SPARSE_FORMS = {
    # GNU tar's options, what the bound refuses of a hostile map in that form
    "posix-0.0": (
        ["--format=posix", "--sparse-version=0.0"],
        "sparse maps list more than 65536 regions together",
    ),
    "posix-0.1": (
        ["--format=posix", "--sparse-version=0.1"],
        "more than the 4096 accepted for one file",
    ),
    "posix-1.0": (
        ["--format=posix", "--sparse-version=1.0"],
        "more than the 4096 accepted for one file",
    ),
    "gnu": (["--format=gnu"], "more than the 4096 accepted for one file"),
}


@pytest.mark.parametrize("form", list(SPARSE_FORMS))
def test_sparse_maps_unpack_within_their_bounds_and_are_refused_past_them(
    form: str, tmp_path: Path
) -> None:
    """tarfile collected GNU sparse maps with no bound, before any check of sizes or entry
    counts: a 1.0 map's count was believed and numbers read until the archive ended (the
    worker was killed for its memory), and old GNU extension blocks and 0.x maps grew the
    same way. The child is held to 1 GiB and 10 s: on the old code the 1.0 map runs out of
    time, the others unpack or fail later on other grounds. GNU tar --sparse of a small
    sparse file, in the same form, unpacks whole as before (an old GNU sparse entry was and
    is refused for its kind, after its map is read)."""
    options, reason = SPARSE_FORMS[form]
    tree = tmp_path / "tree"
    tree.mkdir()
    sparse = tree / "disk.img"
    with sparse.open("wb") as file:
        file.truncate(8 << 20)
        for offset, data in SPARSE_REGIONS.items():
            file.seek(offset)
            file.write(data)
    real = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", "--sparse", *options, "-C", str(tree), "-cf", str(real), "disk.img"], check=True
    )
    out = tmp_path / "out"
    out.mkdir()
    outcome = unpacked_in_a_child(real, out)
    if form == "gnu":
        assert "holds 'disk.img' of a kind a workspace may not hold" in str(outcome["refused"])
    else:
        assert outcome == {"entries": 1}, outcome
        assert (out / "disk.img").read_bytes() == sparse.read_bytes()

    hostile = tmp_path / "evil.tar"
    hostile_sparse_archive(form, hostile)
    refused_out = tmp_path / "refused"
    refused_out.mkdir()
    outcome = unpacked_in_a_child(hostile, refused_out)
    assert reason in str(outcome.get("refused")), outcome
    assert list(refused_out.iterdir()) == []


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME])
def test_a_chain_of_extended_headers_is_refused_not_a_recursion_error(
    kind: bytes, tmp_path: Path
) -> None:
    """tarfile reads the header after an extended one a level deeper down its stack: 400 in a
    row raised RecursionError, no TarError, out of extract_archive (the child died with it)."""
    archive = tmp_path / "evil.tar"
    payload = pax_record("comment", "x") if kind != tarfile.GNUTYPE_LONGNAME else b"name\0"
    with tarfile.open(archive, "w", format=tarfile.USTAR_FORMAT) as tar:
        for _ in range(399):
            header = tarfile.TarInfo("././@PaxHeader")
            header.type, header.size = kind, len(payload)
            tar.addfile(header, io.BytesIO(payload))
        header_then_file(tar, kind, payload, "f.txt")
    out = tmp_path / "out"
    out.mkdir()
    outcome = unpacked_in_a_child(archive, out)
    assert "more than 8 extended headers in a row" in str(outcome.get("refused")), outcome
    assert list(out.iterdir()) == []


def test_a_recursion_error_reading_a_tar_is_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backstop behind the bound on chains: with the bound lifted, the RecursionError of
    a long chain is refused as an unreadable archive, not raised out of the worker's unpack."""
    monkeypatch.setattr("sandboxer.workspaces.untrusted_tar.MAX_EXTENDED_CHAIN", 10**6)
    archive = tmp_path / "deep.tar"
    payload = pax_record("comment", "x")
    with tarfile.open(archive, "w", format=tarfile.USTAR_FORMAT) as tar:
        for _ in range(sys.getrecursionlimit()):
            header = tarfile.TarInfo("././@PaxHeader")
            header.type, header.size = tarfile.XHDTYPE, len(payload)
            tar.addfile(header, io.BytesIO(payload))
        header_then_file(tar, tarfile.XHDTYPE, payload, "f.txt")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(WorkspaceRefused, match="nests its headers too deep"):
        extract_archive(archive, out, ArchiveLimits())
    assert list(out.iterdir()) == []
