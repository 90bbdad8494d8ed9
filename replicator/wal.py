"""SQLite's WAL and wal-index (-shm) formats: headers, frames, salts, checksums.

Pure parsing; no I/O. References: https://www.sqlite.org/fileformat2.html#walformat and
https://www.sqlite.org/walformat.html. The wal-index header is in native byte order.
"""

from __future__ import annotations

import dataclasses
import struct
import sys

WAL_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
WAL_MAGIC_LE = 0x377F0682  # checksums computed little-endian
WAL_MAGIC_BE = 0x377F0683  # checksums computed big-endian
SHM_HEADER_SIZE = 136  # two 48-byte index headers + the 40-byte checkpoint info
_NATIVE = "<" if sys.byteorder == "little" else ">"
_INDEX_HDR = struct.Struct(_NATIVE + "IIIBBHII2I2I2I")  # 48 bytes
_CKPT_INFO = struct.Struct(_NATIVE + "I5I")
_WAL_HDR = struct.Struct(">8I")
FRAME_HEADER = struct.Struct(">6I")


@dataclasses.dataclass(frozen=True)
class WalHeader:
    magic: int
    version: int
    page_size: int
    checkpoint_seq: int
    salt1: int
    salt2: int
    cksum1: int
    cksum2: int

    @property
    def big_endian_checksums(self) -> bool:
        return self.magic == WAL_MAGIC_BE


def parse_wal_header(data: bytes) -> WalHeader | None:
    """The WAL file header, or None if the file is empty or not (yet) a valid WAL."""
    if len(data) < WAL_HEADER_SIZE:
        return None
    fields = _WAL_HDR.unpack_from(data)
    if fields[0] not in (WAL_MAGIC_LE, WAL_MAGIC_BE):
        return None
    hdr = WalHeader(*fields)
    if wal_checksum(data[:24], hdr.big_endian_checksums) != (hdr.cksum1, hdr.cksum2):
        return None
    return hdr


@dataclasses.dataclass(frozen=True)
class FrameHeader:
    pgno: int
    commit_size: int  # database size in pages after commit; 0 for non-commit frames
    salt1: int
    salt2: int
    cksum1: int
    cksum2: int


def parse_frame_header(data: bytes, offset: int = 0) -> FrameHeader:
    return FrameHeader(*FRAME_HEADER.unpack_from(data, offset))


def frame_offset(frame_no: int, page_size: int) -> int:
    """Byte offset of 1-based frame `frame_no` in the WAL file."""
    return WAL_HEADER_SIZE + (frame_no - 1) * (FRAME_HEADER_SIZE + page_size)


@dataclasses.dataclass(frozen=True)
class IndexHeader:
    """The wal-index header: where the last committed frame is (mxFrame) and the salts."""

    version: int
    change: int
    is_init: int
    big_endian_cksum: int
    page_size: int
    mx_frame: int
    n_page: int  # database size in pages as of mx_frame
    frame_cksum: tuple[int, int]
    salt1: int
    salt2: int
    nbackfill: int
    read_marks: tuple[int, ...]


class TornRead(Exception):
    """The two header copies disagree or the checksum fails: a writer was mid-update."""


def parse_shm_header(data: bytes) -> IndexHeader:
    """Accept the header only when both copies agree, isInit is set and the checksum holds."""
    if len(data) < SHM_HEADER_SIZE:
        raise TornRead("short wal-index")
    if data[0:48] != data[48:96]:
        raise TornRead("wal-index header copies differ")
    (version, _unused, change, is_init, big_end, sz_page, mx_frame, n_page,
     fck1, fck2, salt_a, salt_b, ck1, ck2) = _INDEX_HDR.unpack_from(data, 0)
    if not is_init:
        raise TornRead("wal-index not initialised")
    if wal_checksum(data[0:40], sys.byteorder == "big", native=True) != (ck1, ck2):
        raise TornRead("wal-index header checksum mismatch")
    page_size = (sz_page & 0xFE00) | ((sz_page & 0x0001) << 16)
    nbackfill, *marks = _CKPT_INFO.unpack_from(data, 96)
    # The salts are stored as the raw WAL-header bytes: read them back big-endian.
    salt_bytes = data[32:40]
    salt1, salt2 = struct.unpack(">II", salt_bytes)
    return IndexHeader(version, change, is_init, big_end, page_size, mx_frame, n_page,
                       (fck1, fck2), salt1, salt2, nbackfill, tuple(marks))


def wal_checksum(data: bytes | memoryview, big_endian: bool, seed: tuple[int, int] = (0, 0),
                 native: bool = False) -> tuple[int, int]:
    """SQLite's WAL checksum (a Fletcher-like sum over 32-bit words, pairs at a time).

    Pure Python (~60 MB/s): used on resume and for headers, not in the steady-state copy loop.
    """
    if len(data) % 8:
        raise ValueError("WAL checksum input must be a multiple of 8 bytes")
    order = _NATIVE if native else (">" if big_endian else "<")
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    s1, s2 = seed
    mask = 0xFFFFFFFF
    for i in range(0, len(words), 2):
        s1 = (s1 + words[i] + s2) & mask
        s2 = (s2 + words[i + 1] + s1) & mask
    return s1, s2


def frame_checksum(frame: bytes | memoryview, big_endian: bool, seed: tuple[int, int]) -> tuple[int, int]:
    """Checksum chained through one frame: its first 8 header bytes, then the page."""
    mv = memoryview(frame)
    return wal_checksum(mv[FRAME_HEADER_SIZE:], big_endian, wal_checksum(mv[:8], big_endian, seed))
