"""Opening a tar that came from outside this process: the one way the service reads a tar.

Python's own pax parsing (3.11 before 3.11.10, 3.12 before 3.12.6: CVE-2024-6232)
reads a pax extended header with regular expressions that backtrack: a run of digits
in the header (``\\d+ hdrcharset=`` is searched for at every position of it) or in a
GNU sparse 0.0 header costs time quadratic in its length. 128 KiB of ``1`` took 26 s
here, 1 MiB would take half an hour, and as the regex engine never lets go of the GIL,
every other task of the worker (other copies, other sandboxes' commands, the bus)
stands still meanwhile; a thread (``asyncio.to_thread``) does not help. An archive
any API key may send into a sandbox must not be able to do that.

So :func:`open_untrusted` opens a tar with :class:`_GuardedTarInfo` parsing its headers.
tarfile reads every header through the ``tarinfo`` class it is given, whose
``_proc_member`` dispatches on the header's type to ``_proc_pax`` or ``_proc_gnulong``
(tarfile's source names these ``_proc_*`` methods as what a subclass overrides). Here:

- a pax extended header, or a GNU long name or link name, larger than
  :data:`MAX_HEADER_BYTES` is refused before it is read: a real one holds a name, a
  link target and a few numbers, well under a KiB, and the bound also keeps what one
  header makes the worker hold in memory small;
- a pax header within the bound is parsed record by record in linear time, as
  CPython's fix does (records are ``LENGTH KEYWORD=VALUE\\n`` of exactly LENGTH bytes;
  anything else is refused rather than, as Python did, silently ignored from there on).
  A bound alone would not do: each header would still cost its length squared, and an
  archive may hold 200,000 of them.

What follows a pax header is done as tarfile does it (the next header is read, GNU sparse
maps are applied, the header's fields patched onto the entry), through tarfile's own
private helpers, unchanged from 3.11 to 3.13. The archive's rules (what an entry may be,
where it may go) stay in :mod:`sandboxer.workspaces.extract`.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import cast

from sandboxer.errors import WorkspaceRefused

__all__ = ["MAX_HEADER_BYTES", "open_untrusted"]

MAX_HEADER_BYTES = 64 * 1024
"""The largest pax extended header or GNU long name accepted, in bytes."""
_LENGTH_DIGITS = 20
"""The most digits a pax record's length may have (as CPython's fix: 10**20 bytes)."""
_SPARSE_NUMBERS = frozenset({"GNU.sparse.size", "GNU.sparse.realsize"})
"""Pax keywords tarfile reads with a bare ``int()`` (a bad one raised ValueError, not a
TarError): checked here so that a global header cannot carry one to a later entry."""


def open_untrusted(archive: Path) -> tarfile.TarFile:
    """Open the plain (uncompressed) tar ``archive`` for reading with the guarded header parser.

    Raises :class:`WorkspaceRefused` for an oversized or malformed pax or GNU long-name
    header, as soon as it is met (while opening, for the first entry, or while iterating),
    and tarfile's own :class:`tarfile.TarError` for what tarfile refuses.
    """
    return tarfile.open(archive, "r:", tarinfo=_GuardedTarInfo)


def _padded(size: int) -> int:
    """``size`` rounded up to whole tar blocks."""
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _bounded(header: tarfile.TarInfo, what: str) -> None:
    """Refuse ``header`` before its payload is read when it is over :data:`MAX_HEADER_BYTES`."""
    if header.size > MAX_HEADER_BYTES:
        raise WorkspaceRefused(
            f"the workspace archive holds a {what} of {header.size} bytes (at byte "
            f"{header.offset}), more than the {MAX_HEADER_BYTES // 1024} KiB accepted: a real "
            "one holds a name and a few numbers; refused before it was parsed"
        )


def _malformed(header: tarfile.TarInfo, why: str) -> WorkspaceRefused:
    return WorkspaceRefused(
        f"the workspace archive holds a malformed pax extended header (at byte "
        f"{header.offset}): {why}"
    )


def _records(header: tarfile.TarInfo, payload: bytes) -> list[tuple[bytes, bytes]]:
    """The ``(keyword, value)`` records of a pax header's ``payload``, in order, read in
    time linear in its length (every search below is bounded by the record it is in)."""
    records: list[tuple[bytes, bytes]] = []
    pos = 0
    # Trailing NULs are padding some writers leave inside the stated size.
    while pos < len(payload) and payload[pos] != 0:
        space = payload.find(b" ", pos, pos + _LENGTH_DIGITS + 1)
        digits = payload[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise _malformed(header, "a record does not start with its length and a space")
        length = int(digits)
        end = pos + length
        # The shortest record is '5 x=\n'; a value may be empty.
        if length < 5 or end > len(payload) or payload[end - 1] != 0x0A:
            raise _malformed(header, "a record's length does not end it at a newline")
        keyword, equals, value = payload[space + 1 : end - 1].partition(b"=")
        if not keyword or not equals:
            raise _malformed(header, "a record is not 'LENGTH KEYWORD=VALUE'")
        records.append((keyword, value))
        pos = end
    return records


def _decoded(raw: bytes, encoding: str, fallback: str, errors: str) -> str:
    """tarfile's decoding of a pax field: strict first, then the archive's own encoding."""
    try:
        return raw.decode(encoding, "strict")
    except UnicodeDecodeError:
        return raw.decode(fallback, errors)


def _decode_into(
    pax_headers: dict[str, str],
    header: tarfile.TarInfo,
    records: list[tuple[bytes, bytes]],
    archive: tarfile.TarFile,
) -> None:
    """Set ``records``' fields into ``pax_headers``, decoded as tarfile decodes them."""
    # The first hdrcharset of the header (or one inherited from a global header) says
    # how names are encoded; only BINARY (the archive's own encoding) changes it.
    for raw_keyword, raw_value in records:
        if raw_keyword == b"hdrcharset":
            pax_headers["hdrcharset"] = _decoded(raw_value, "utf-8", "utf-8", archive.errors)
            break
    binary = pax_headers.get("hdrcharset") == "BINARY"
    encoding = archive.encoding if binary else "utf-8"
    for raw_keyword, raw_value in records:
        keyword = _decoded(raw_keyword, "utf-8", "utf-8", archive.errors)
        if keyword in tarfile.PAX_NAME_FIELDS:
            value = _decoded(raw_value, encoding, archive.encoding, archive.errors)
        else:
            value = _decoded(raw_value, "utf-8", "utf-8", archive.errors)
        if keyword in _SPARSE_NUMBERS and not (
            value.isascii() and value.isdigit() and len(value) <= _LENGTH_DIGITS
        ):
            raise _malformed(header, f"{keyword} is not a number")
        pax_headers[keyword] = value


def _sparse_00(
    header: tarfile.TarInfo, records: list[tuple[bytes, bytes]]
) -> list[tuple[int, int]]:
    """A GNU sparse 0.0 map from the header's records (tarfile searched its payload with a
    backtracking regex for these)."""
    offsets: list[int] = []
    sizes: list[int] = []
    for keyword, value in records:
        if keyword in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
            if not value.isdigit() or len(value) > _LENGTH_DIGITS:
                raise _malformed(header, f"{keyword.decode()} is not a number")
            (offsets if keyword == b"GNU.sparse.offset" else sizes).append(int(value))
    return list(zip(offsets, sizes, strict=False))


class _GuardedTarInfo(tarfile.TarInfo):
    """A :class:`tarfile.TarInfo` whose pax and GNU long-name headers are bounded, and whose
    pax headers are parsed in linear time (see the module's docstring)."""

    def _proc_gnulong(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        # tarfile's own reading of a long name is linear (nts: one find); only its size
        # is bounded, as it is read into memory whole.
        _bounded(self, "GNU long name")
        return cast(tarfile.TarInfo, super()._proc_gnulong(archive))  # type: ignore[misc]

    def _proc_pax(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        """tarfile's ``_proc_pax`` (3.11), with the payload bounded and parsed by
        :func:`_records` instead of searched with backtracking regexes."""
        _bounded(self, "pax extended header")
        payload = archive.fileobj.read(_padded(self.size))[: self.size]
        records = _records(self, payload)
        # An extended header holds fields of the next entry only; a global one, of every
        # entry from here on (tarfile keeps those in its own pax_headers).
        shared = cast(dict[str, str], archive.pax_headers)
        pax_headers = shared if self.type == tarfile.XGLTYPE else dict(shared)
        _decode_into(pax_headers, self, records, archive)

        try:
            following = self.fromtarfile(archive)
        except tarfile.HeaderError as exc:
            # tarfile raises SubsequentHeaderError (not in the stubs), which it turns into
            # this ReadError: a broken header after a pax header is never the archive's end.
            raise tarfile.ReadError(str(exc)) from None
        try:
            if "GNU.sparse.map" in pax_headers:
                super()._proc_gnusparse_01(following, pax_headers)  # type: ignore[misc]
            elif "GNU.sparse.size" in pax_headers:
                following.sparse = _sparse_00(self, records)  # type: ignore[assignment]
            elif (
                pax_headers.get("GNU.sparse.major") == "1"
                and pax_headers.get("GNU.sparse.minor") == "0"
            ):
                super()._proc_gnusparse_10(following, pax_headers, archive)  # type: ignore[misc]
        except ValueError:
            # tarfile's own sparse readers call int() on what the archive says.
            raise _malformed(self, "its GNU sparse map is not numbers") from None
        if self.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
            following._apply_pax_info(pax_headers, archive.encoding, archive.errors)  # type: ignore[attr-defined]
            following.offset = self.offset
            if "size" in pax_headers:
                # The header replaced the entry's size: its data ends elsewhere.
                offset = following.offset_data
                if following.isreg() or following.type not in tarfile.SUPPORTED_TYPES:
                    offset += _padded(following.size)
                archive.offset = offset
        return following
