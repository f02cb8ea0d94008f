"""A write-only ZIP archive that streams: bytes come out as entries are written, never seeked.

XLSX is a ZIP of XML parts. Python's zipfile can stream too, but it must decide before an
entry is written whether the entry needs ZIP64 (over 4 GiB), and Excel rejects ZIP64 fields in
local headers. Like Apache POI's streaming writer, we put sizes in a data descriptor after the
data (64-bit only when they overflow) and ZIP64 only in the central directory, where needed.
Entries carry a fixed timestamp, so the same content gives the same bytes (APPNOTE 6.3.10).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

DEFLATE_LEVEL = 6
_U32 = 0xFFFFFFFF
_DOS_DATE_1980_01_01 = (0 << 9) | (1 << 5) | 1
_FLAG_DATA_DESCRIPTOR = 0x08
_FLAG_UTF8 = 0x800


@dataclass
class _Entry:
    name: bytes
    header_at: int  # where its local header starts
    crc: int = 0
    compressed: int = 0
    size: int = 0


class ZipStream:
    """`start(name)`, `write(data)` (returns bytes ready), `end()`, ... `close()` (the directory)."""

    def __init__(self, level: int = DEFLATE_LEVEL) -> None:
        self.level = level
        self._entries: list[_Entry] = []
        self._current: _Entry | None = None
        self._deflate: zlib._Compress | None = None
        self._written = 0

    def _out(self, data: bytes) -> bytes:
        self._written += len(data)
        return data

    def start(self, name: str) -> bytes:
        assert self._current is None, "end() the previous entry first"
        entry = _Entry(name.encode(), header_at=self._written)
        self._current = entry
        self._deflate = zlib.compressobj(self.level, zlib.DEFLATED, -15)  # raw deflate
        header = struct.pack(
            "<IHHHHHIIIHH",
            0x04034B50,
            20,  # version needed: deflate
            _FLAG_DATA_DESCRIPTOR | _FLAG_UTF8,
            8,  # deflate
            0,
            _DOS_DATE_1980_01_01,
            0,  # crc and sizes follow the data, in the data descriptor
            0,
            0,
            len(entry.name),
            0,
        )
        return self._out(header + entry.name)

    def write(self, data: bytes) -> bytes:
        entry, deflate = self._current, self._deflate
        assert entry is not None and deflate is not None
        entry.crc = zlib.crc32(data, entry.crc)
        entry.size += len(data)
        out = deflate.compress(data)
        entry.compressed += len(out)
        return self._out(out)

    def end(self) -> bytes:
        entry, deflate = self._current, self._deflate
        assert entry is not None and deflate is not None
        tail = deflate.flush()
        entry.compressed += len(tail)
        if entry.compressed > _U32 or entry.size > _U32:
            descriptor = struct.pack("<IIQQ", 0x08074B50, entry.crc, entry.compressed, entry.size)
        else:
            descriptor = struct.pack("<IIII", 0x08074B50, entry.crc, entry.compressed, entry.size)
        self._entries.append(entry)
        self._current, self._deflate = None, None
        return self._out(tail + descriptor)

    def add(self, name: str, data: bytes) -> bytes:
        return self.start(name) + self.write(data) + self.end()

    def close(self) -> bytes:
        assert self._current is None, "end() the open entry first"
        directory_at = self._written
        records = []
        for e in self._entries:
            # ZIP64 extra field: only the values that do not fit, in this order (APPNOTE 4.5.3).
            extra_values = [v for v in (e.size, e.compressed, e.header_at) if v >= _U32]
            extra = struct.pack(f"<HH{len(extra_values)}Q", 0x0001, 8 * len(extra_values), *extra_values)
            if not extra_values:
                extra = b""
            version = 45 if extra else 20
            records.append(
                struct.pack(
                    "<IHHHHHHIIIHHHHHII",
                    0x02014B50,
                    version,  # made by (MS-DOS attributes)
                    version,  # needed
                    _FLAG_DATA_DESCRIPTOR | _FLAG_UTF8,
                    8,
                    0,
                    _DOS_DATE_1980_01_01,
                    e.crc,
                    min(e.compressed, _U32),
                    min(e.size, _U32),
                    len(e.name),
                    len(extra),
                    0,
                    0,
                    0,
                    0,
                    min(e.header_at, _U32),
                )
                + e.name
                + extra
            )
        directory = b"".join(records)
        count = len(self._entries)
        out = bytearray(directory)
        directory_end = directory_at + len(directory)
        if count >= 0xFFFF or directory_at >= _U32 or len(directory) >= _U32:
            out += struct.pack(
                "<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, len(directory), directory_at
            )
            out += struct.pack("<IIQI", 0x07064B50, 0, directory_end, 1)
        out += struct.pack(
            "<IHHHHIIH",
            0x06054B50,
            0,
            0,
            min(count, 0xFFFF),
            min(count, 0xFFFF),
            min(len(directory), _U32),
            min(directory_at, _U32),
            0,
        )
        return self._out(bytes(out))
