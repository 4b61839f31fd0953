"""Packing is deterministic and bounded; unpacking refuses every hostile archive."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

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
