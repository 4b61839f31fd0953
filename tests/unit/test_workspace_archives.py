"""Packing is deterministic and bounded; unpacking refuses every hostile archive."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from sandboxer.errors import WorkspaceRefused
from sandboxer.workspaces.extract import extract_archive
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


def hostile(kind: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(name: str, data: bytes = b"evil", **fields: object) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data) if fields.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0
            for key, value in fields.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if info.size else None)

        if kind == "dotdot":
            add("../evil")
        elif kind == "absolute":
            add("/tmp/sandboxer-absolute-evil")
        elif kind == "link-then-write":
            add("link", type=tarfile.SYMTYPE, linkname="/etc")
            add("link/evil")
        elif kind == "chained-links-then-write":
            add("p", type=tarfile.SYMTYPE, linkname=".")
            add("q", type=tarfile.SYMTYPE, linkname="p/p/../..")
            add("q/evil")
        elif kind == "relative-link-out":
            add("a", type=tarfile.DIRTYPE, mode=0o755)
            add("a/up", type=tarfile.SYMTYPE, linkname="../../outside")
        elif kind == "device":
            add("null", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        elif kind == "fifo":
            add("pipe", type=tarfile.FIFOTYPE)
        elif kind == "hardlink":
            add("passwd", type=tarfile.LNKTYPE, linkname="/etc/passwd")
        elif kind == "many":
            for index in range(20):
                add(f"f{index}")
        elif kind == "bomb":
            add("big", b"y" * 4096)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "kind",
    [
        "dotdot",
        "absolute",
        "link-then-write",
        "chained-links-then-write",
        "relative-link-out",
        "device",
        "fifo",
        "hardlink",
        "many",
        "bomb",
    ],
)
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
