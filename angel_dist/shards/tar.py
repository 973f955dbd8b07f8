"""Plain ustar archives: the container of our WebDataset shards.

Python's `tarfile` (what `webdataset.TarWriter` and its readers go through) costs about
25 µs per member; with eight members a sample that caps one process near 5k samples/s in
either direction, below what corpus writing and the training reader must sustain. Our
shards only ever hold small regular files with short names, so a ustar header is a fixed
512-byte block we can write and parse directly. The files stay standard tars: `tar`,
`webdataset.WebDataset` and `ray.data.read_webdataset` read them (tested).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

BLOCK = 512
_END = b"\0" * (2 * BLOCK)
_NAME_MAX = 100
_REGULAR = (b"0", b"\0")


class TarFormatError(ValueError):
    """A tar that is truncated, corrupt or holds a member we do not accept."""

    def __init__(self, path: str, member: str | None, problem: str):
        self.path, self.member, self.problem = str(path), member, problem
        where = f"{path} (member {member!r})" if member else str(path)
        super().__init__(f"{where}: {problem}")


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def member_header(name: str, size: int, mtime: int = 0, mode: int = 0o444) -> bytes:
    """The ustar header block of a regular file; fixed owner and time make output reproducible."""
    raw = name.encode("utf-8")
    if len(raw) > _NAME_MAX or not raw:
        raise ValueError(f"tar member name must be 1..{_NAME_MAX} bytes, got {name!r}")
    check_member_name(name, "<writer>")
    header = bytearray(BLOCK)
    header[0:len(raw)] = raw
    header[100:108] = _octal(mode, 8)
    header[108:116] = _octal(0, 8)
    header[116:124] = _octal(0, 8)
    header[124:136] = _octal(size, 12)
    header[136:148] = _octal(mtime, 12)
    header[148:156] = b" " * 8
    header[156:157] = b"0"
    header[257:265] = b"ustar\x0000"
    header[265:265 + 7] = b"angel\0\0"
    header[297:297 + 7] = b"angel\0\0"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def check_member_name(name: str, path: str) -> None:
    """Reject names that could escape the directory a tar is unpacked into."""
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or "\\" in name:
        raise TarFormatError(path, name, "member path is absolute or contains '..'; refusing it")


class TarStreamWriter:
    """Append regular-file members to an open binary stream; `close()` writes the end blocks."""

    def __init__(self, stream: BinaryIO, mtime: int = 0):
        self.stream, self.mtime = stream, mtime

    def add(self, name: str, data: bytes) -> None:
        self.stream.write(member_header(name, len(data), self.mtime))
        self.stream.write(data)
        pad = -len(data) % BLOCK
        if pad:
            self.stream.write(b"\0" * pad)

    def close(self) -> None:
        self.stream.write(_END)


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # of the data, in the archive
    size: int


def _parse_octal(field: bytes) -> int:
    field = field.rstrip(b"\0 ").lstrip(b" ")
    if not field:
        return 0
    if not field.isdigit():  # int(x, 8) alone would take signs and underscores ("-1": a negative size)
        raise ValueError(f"not an octal field: {field!r}")
    return int(field, 8)


# The numeric fields besides size and checksum (mode, uid, gid, mtime, devmajor, devminor):
# `tarfile`, and so WebDataset, ends an archive early at a header where one does not parse.
_NUMBERS = ((100, 108), (108, 116), (116, 124), (136, 148), (329, 337), (337, 345))


def iter_members(buf, path: str, start: int = 0, strict: bool = True) -> Iterator[Member]:
    """Walk the members of a ustar archive held in `buf` (bytes or an mmap) from byte `start`.

    Raises TarFormatError naming the member on a truncated archive, a member type other than a
    regular file (directories, links, devices...: our shards hold none), a name that is not
    UTF-8 or not safe, and, when `strict`, a bad checksum or numeric field: then whatever passes
    reads the same with `tarfile` (WebDataset). The strict checks are half the cost of a walk;
    reads of a shard whose sha256 and strict walk have vouched for every header skip them.
    """
    pos, end, previous = start, len(buf), None
    while True:
        if pos + BLOCK > end:
            raise TarFormatError(path, previous, "archive is truncated (no end-of-archive blocks)")
        header = buf[pos:pos + BLOCK]
        if header.count(0) == BLOCK:
            return
        raw = header[:_NAME_MAX].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0]  # ustar's name prefix, which tarfile always applies
        try:
            name = (prefix + b"/" + raw if prefix else raw).decode("utf-8")
        except UnicodeDecodeError:
            raise TarFormatError(path, previous, f"member name {raw!r} is not UTF-8") from None
        try:
            size = _parse_octal(header[124:136])
            if strict:
                stored = _parse_octal(header[148:156])
                for lo, hi in _NUMBERS:
                    _parse_octal(header[lo:hi])
        except ValueError:
            raise TarFormatError(path, name or previous, "corrupt header (bad octal field)") from None
        if strict and stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise TarFormatError(path, name or previous, "corrupt header (checksum mismatch)")
        kind = header[156:157]
        check_member_name(name, path)
        data = pos + BLOCK
        if data + size > end:
            raise TarFormatError(path, name, f"archive is truncated inside this member ({size} bytes expected)")
        if kind not in _REGULAR or name.endswith("/"):  # tarfile takes "name/" for a directory
            raise TarFormatError(path, name, f"unsupported member type {kind!r} (expected regular files)")
        yield Member(name, data, size)
        previous = name
        pos = data + size + (-size % BLOCK)


def open_archive(path: str | Path) -> tuple[bytes | mmap.mmap, os.stat_result]:
    """Map a tar file read-only (an empty file maps to empty bytes), with the stat of the file
    mapped: a stat of the path, before or after, might be another file's."""
    with open(path, "rb") as f:
        stat = os.fstat(f.fileno())
        if stat.st_size == 0:
            return b"", stat
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), stat


def split_key(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the path up to the first dot of the base name."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]
