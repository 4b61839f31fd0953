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

- GNU sparse maps, in all their forms (old GNU ``S`` entries with their extension blocks,
  pax 0.0 and 0.1 records, 1.0 maps at the start of the entry's data), are bounded:
  tarfile collects them with no bound, before any check of the entry's size or of the
  archive's entry count (a 1.0 map of ``99999999999`` then ``0`` lines made it build
  100 million ints from a 200 MiB archive, and the worker was killed for its memory). A
  map of more than :data:`MAX_SPARSE_PAIRS` regions, or maps adding up to more than
  :data:`MAX_ARCHIVE_SPARSE_PAIRS` in one archive, are refused as soon as the count is
  known (for 1.0, before the map is read);
- a header is followed by at most :data:`MAX_EXTENDED_CHAIN` extended headers (pax, pax
  global, GNU long name or link) before a real entry: tarfile reads each with one more
  level of recursion, so ~330 of them raised RecursionError, which is no TarError.

What follows a pax header is otherwise done as tarfile does it (the next header is read,
GNU sparse 0.1 maps are applied, the header's fields patched onto the entry), through
tarfile's own private helpers, unchanged from 3.11 to 3.13. The archive's rules (what an
entry may be, where it may go) stay in :mod:`sandboxer.workspaces.extract`.
"""

from __future__ import annotations

import tarfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from sandboxer.errors import WorkspaceRefused

__all__ = [
    "MAX_ARCHIVE_SPARSE_PAIRS",
    "MAX_EXTENDED_CHAIN",
    "MAX_HEADER_BYTES",
    "MAX_SPARSE_PAIRS",
    "open_untrusted",
]

MAX_HEADER_BYTES = 64 * 1024
"""The largest pax extended header or GNU long name accepted, in bytes."""
MAX_SPARSE_PAIRS = 4096
"""The most (offset, size) regions one GNU sparse map may list. A region is a stretch of
data between holes: GNU tar's map of a real sparse file (a disk image, a database file)
lists tens to hundreds; tarfile holds each as a tuple of two ints (about 100 bytes)."""
MAX_ARCHIVE_SPARSE_PAIRS = 64 * 1024
"""The most sparse regions all maps of one archive may list together (about 6 MiB held):
tarfile keeps every entry with its map until the archive is closed, so a bound per map
alone would still let thousands of entries each bring :data:`MAX_SPARSE_PAIRS`."""
MAX_EXTENDED_CHAIN = 8
"""The most extended headers (pax, pax global, GNU long name or link) in a row before a
real entry. A writer puts at most three there (a global header, then a pax header, or a
long name and a long link); tarfile reads each one more level down its stack."""
_LENGTH_DIGITS = 20
"""The most digits a pax record's length may have (as CPython's fix: 10**20 bytes)."""
_SPARSE_NUMBERS = frozenset({"GNU.sparse.size", "GNU.sparse.realsize"})
"""Pax keywords tarfile reads with a bare ``int()`` (a bad one raised ValueError, not a
TarError): checked here so that a global header cannot carry one to a later entry."""


@dataclass
class _Reading:
    """What the guarded parser counts of one archive while reading it."""

    chain: int = 0
    """Extended headers read since the last real entry (the depth of tarfile's recursion)."""
    sparse_pairs: int = 0
    """Sparse regions of all maps read so far."""


_READING: weakref.WeakKeyDictionary[tarfile.TarFile, _Reading] = weakref.WeakKeyDictionary()
"""Each open archive's counts, gone with the archive (tarfile's headers see the archive,
not one another)."""


def open_untrusted(archive: Path) -> tarfile.TarFile:
    """Open the plain (uncompressed) tar ``archive`` for reading with the guarded header parser.

    Raises :class:`WorkspaceRefused` for an oversized or malformed pax or GNU long-name
    header, a sparse map over its bound or too long a chain of extended headers, as soon as
    it is met (while opening, for the first entry, or while iterating), and tarfile's own
    :class:`tarfile.TarError` for what tarfile refuses.
    """
    return tarfile.open(archive, "r:", tarinfo=_GuardedTarInfo)


def _reading(archive: tarfile.TarFile) -> _Reading:
    return _READING.setdefault(archive, _Reading())


def _sparse_allowance(header: tarfile.TarInfo, archive: tarfile.TarFile, pairs: int) -> None:
    """Refuse a sparse map of ``pairs`` regions past either bound, else count it."""
    reading = _reading(archive)
    if pairs > MAX_SPARSE_PAIRS:
        raise WorkspaceRefused(
            f"the workspace archive holds a GNU sparse map of {pairs} regions (at byte "
            f"{header.offset}), more than the {MAX_SPARSE_PAIRS} accepted for one file; "
            "refused before it was read"
        )
    if reading.sparse_pairs + pairs > MAX_ARCHIVE_SPARSE_PAIRS:
        raise WorkspaceRefused(
            f"the workspace archive's GNU sparse maps list more than "
            f"{MAX_ARCHIVE_SPARSE_PAIRS} regions together (past byte {header.offset}); "
            "refused before the rest was read"
        )
    reading.sparse_pairs += pairs


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


def _sparse_10(
    header: tarfile.TarInfo, following: tarfile.TarInfo, archive: tarfile.TarFile
) -> None:
    """tarfile's ``_proc_gnusparse_10``: the map at the start of ``following``'s data (its
    count, then an offset and a size per region, a number a line, padded to whole blocks),
    with the count bounded before the numbers are read and every line bounded in length."""
    fileobj = archive.fileobj
    buf = fileobj.read(tarfile.BLOCKSIZE)
    pos = 0
    count: int | None = None
    numbers: list[int] = []
    while count is None or len(numbers) < 2 * count:
        end = buf.find(b"\n", pos, pos + _LENGTH_DIGITS + 1)
        if end < 0:
            more = fileobj.read(tarfile.BLOCKSIZE) if len(buf) - pos <= _LENGTH_DIGITS else b""
            if not more:
                raise _malformed(header, "its GNU sparse 1.0 map is not numbers a line")
            buf, pos = buf[pos:] + more, 0
            continue
        digits = buf[pos:end]
        if not digits.isdigit():
            raise _malformed(header, "its GNU sparse 1.0 map is not numbers a line")
        pos = end + 1
        if count is None:
            count = int(digits)
            _sparse_allowance(following, archive, count)
        else:
            numbers.append(int(digits))
    following.offset_data = fileobj.tell()
    following.sparse = list(zip(numbers[::2], numbers[1::2], strict=True))  # type: ignore[assignment]


class _GuardedTarInfo(tarfile.TarInfo):
    """A :class:`tarfile.TarInfo` whose pax and GNU long-name headers are bounded, and whose
    pax headers are parsed in linear time, whose sparse maps are bounded and which reads
    only a short chain of extended headers (see the module's docstring)."""

    def _following(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        """The header after this extended one, read as tarfile does (one level down),
        refused past :data:`MAX_EXTENDED_CHAIN` in a row."""
        reading = _reading(archive)
        if reading.chain >= MAX_EXTENDED_CHAIN:
            raise WorkspaceRefused(
                f"the workspace archive holds more than {MAX_EXTENDED_CHAIN} extended headers "
                f"in a row (pax or GNU long name, at byte {self.offset}) before an entry: a "
                "writer puts at most three there"
            )
        reading.chain += 1
        try:
            return cast(tarfile.TarInfo, self.fromtarfile(archive))
        finally:
            reading.chain -= 1

    def _proc_gnulong(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        """tarfile's ``_proc_gnulong`` (3.11), with the name bounded and the chain counted.
        Reading a long name is linear (nts: one find); it is bounded as it is held whole."""
        _bounded(self, "GNU long name")
        buf = archive.fileobj.read(self._block(self.size))  # type: ignore[attr-defined]
        try:
            following = self._following(archive)
        except tarfile.HeaderError as exc:
            # As in _proc_pax below: tarfile's SubsequentHeaderError, made its ReadError.
            raise tarfile.ReadError(str(exc)) from None
        following.offset = self.offset
        name = tarfile.nts(buf, archive.encoding, archive.errors)  # type: ignore[attr-defined]
        if self.type == tarfile.GNUTYPE_LONGNAME:
            following.name = name
        elif self.type == tarfile.GNUTYPE_LONGLINK:
            following.linkname = name
        if following.isdir():
            # As frombuf does for a name in the header itself.
            following.name = following.name.removesuffix("/")
        return following

    def _proc_sparse(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        """tarfile's ``_proc_sparse`` (3.11): an old GNU sparse entry, whose header holds
        four regions and each extension block after it 21 more, with the regions bounded
        as they are read and a block cut short refused (tarfile raised IndexError)."""
        structs, isextended, origsize = self._sparse_structs  # type: ignore[attr-defined]
        del self._sparse_structs  # type: ignore[attr-defined]
        reading = _reading(archive)
        allowed = min(MAX_SPARSE_PAIRS, MAX_ARCHIVE_SPARSE_PAIRS - reading.sparse_pairs)
        while isextended:
            if len(structs) > allowed:
                _sparse_allowance(self, archive, len(structs))
            buf = archive.fileobj.read(tarfile.BLOCKSIZE)
            if len(buf) < tarfile.BLOCKSIZE:
                raise tarfile.ReadError("unexpected end of data in a GNU sparse header")
            pos = 0
            for _ in range(21):
                try:
                    offset = tarfile.nti(buf[pos : pos + 12])  # type: ignore[attr-defined]
                    numbytes = tarfile.nti(buf[pos + 12 : pos + 24])  # type: ignore[attr-defined]
                except ValueError:
                    break
                if offset and numbytes:
                    structs.append((offset, numbytes))
                pos += 24
            isextended = bool(buf[504])
        _sparse_allowance(self, archive, len(structs))
        self.sparse = structs
        self.offset_data = archive.fileobj.tell()
        archive.offset = self.offset_data + self._block(self.size)  # type: ignore[attr-defined]
        self.size = origsize
        return self

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
            following = self._following(archive)
        except tarfile.HeaderError as exc:
            # tarfile raises SubsequentHeaderError (not in the stubs), which it turns into
            # this ReadError: a broken header after a pax header is never the archive's end.
            raise tarfile.ReadError(str(exc)) from None
        try:
            if "GNU.sparse.map" in pax_headers:
                # Numbers separated by commas, two a region: counted before int() makes them.
                numbers = pax_headers["GNU.sparse.map"].count(",") + 1
                _sparse_allowance(self, archive, (numbers + 1) // 2)
                super()._proc_gnusparse_01(following, pax_headers)  # type: ignore[misc]
            elif "GNU.sparse.size" in pax_headers:
                sparse = _sparse_00(self, records)
                _sparse_allowance(self, archive, len(sparse))
                following.sparse = sparse  # type: ignore[assignment]
            elif (
                pax_headers.get("GNU.sparse.major") == "1"
                and pax_headers.get("GNU.sparse.minor") == "0"
            ):
                _sparse_10(self, following, archive)
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
