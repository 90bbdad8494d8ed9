"""WAL frames -> segment records, the copy loop's per-frame work, in one call per read.

A read of committed WAL frames becomes, at once: the segment body records (segment.py's
format) of every whole transaction in it, the database checksum after each (dbhash.py), and
the page numbers written. Done frame by frame in Python this was most of the replicator's CPU
(~15 us per frame); `_walscan.c` does the same in C and `scan_py` is the reference and the
fallback where the extension was not built. Both must produce identical bytes.
"""

from __future__ import annotations

import dataclasses
from array import array
from typing import Iterator

from .dbhash import PAGE_HASH, DbChecksum
from .segment import REC, PAGE_NO
from .wal import FRAME_HEADER, FRAME_HEADER_SIZE

try:
    from . import _walscan
except ImportError:  # built by `pip install` where a C compiler is present
    _walscan = None

class BadSalts(Exception):
    """Frame `index` of the read belongs to another WAL."""

    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


@dataclasses.dataclass(frozen=True, slots=True)
class Scanned:
    """The whole transactions of one read, as segment records."""

    first_txid: int  # txid of the first record
    time_ns: int  # every record of one read carries the same copy time
    body: bytes  # concatenated records
    ends: memoryview  # 'Q': end offset of each record in body
    sizes: memoryview  # 'I': database size in pages after each
    checksums: memoryview  # 'Q': database checksum after each
    changed: memoryview  # 'I': every page number written (duplicates across records)

    def __len__(self) -> int:
        return len(self.ends)

    @property
    def last_txid(self) -> int:
        return self.first_txid + len(self.ends) - 1

    def records(self) -> Iterator[tuple[int, int, dict[int, memoryview]]]:
        """(txid, db_size, {pgno: page}) per transaction, decoded back (tests and tools)."""
        mv, pos = memoryview(self.body), 0
        for end in self.ends:
            txid, _, db_size, _, n = REC.unpack_from(mv, pos)
            yield txid, db_size, _pages(mv, pos + REC.size, end, n)
            pos = end


def _pages(mv: memoryview, pos: int, end: int, n: int) -> dict[int, memoryview]:
    if not n:
        return {}
    ps = (end - pos) // n - 4
    out = {}
    for _ in range(n):
        (pgno,) = PAGE_NO.unpack_from(mv, pos)
        out[pgno] = mv[pos + 4:pos + 4 + ps]
        pos += 4 + ps
    return out


def scan(data: bytes, n: int, page_size: int, salts: tuple[int, int], txid: int,
         checksum: DbChecksum, time_ns: int) -> tuple[int, tuple[int, int], Scanned]:
    """Scan the first `n` frames of `data` (a read starting at a frame boundary).

    Returns (frames consumed, through the last commit frame; that frame's cumulative
    checksum; the records). Frames after the last commit are left for the next read.
    Raises BadSalts, before anything changed, if a frame belongs to another WAL.
    """
    impl = _walscan.scan if _walscan is not None else scan_py
    r = impl(data, n, page_size, salts[0], salts[1], txid, checksum, PAGE_HASH, time_ns)
    if r[0] >= 0:
        raise BadSalts(r[0])
    _, frames, c1, c2, body, ends, sizes, cks, changed = r
    return frames, (c1, c2), Scanned(txid + 1, time_ns, body, memoryview(ends).cast("Q"),
                                     memoryview(sizes).cast("I"), memoryview(cks).cast("Q"),
                                     memoryview(changed).cast("I"))


def scan_py(data: bytes, n: int, page_size: int, salt1: int, salt2: int, txid: int,
            checksum: DbChecksum, hashfn, time_ns: int) -> tuple:
    """The reference implementation of `_walscan.scan` (same arguments, same result)."""
    fsz = FRAME_HEADER_SIZE + page_size
    unpack = FRAME_HEADER.unpack_from
    last = -1
    for i in range(n):
        _, commit, s1, s2, _, _ = unpack(data, i * fsz)
        if (s1, s2) != (salt1, salt2):
            return (i, 0, 0, 0)
        if commit:
            last = i
    mv = memoryview(data)
    parts: list[bytes | memoryview] = []
    ends, sizes, cks, changed = array("Q"), array("I"), array("Q"), array("I")
    pos, pages = 0, {}
    for i in range(last + 1):
        pgno, commit, _, _, _, _ = unpack(data, i * fsz)
        pages[pgno] = mv[i * fsz + FRAME_HEADER_SIZE:(i + 1) * fsz]
        if not commit:
            continue
        if commit > checksum.n_pages:
            checksum.resize(commit)
        kept = []
        for p, page in sorted(pages.items(), key=lambda kv: kv[0]):
            changed.append(p)
            if 0 < p <= commit:
                checksum.update(p, page)
                kept.append((p, page))
        if commit < checksum.n_pages:
            checksum.resize(commit)
        txid += 1
        parts.append(REC.pack(txid, time_ns, commit, checksum.value, len(kept)))
        for p, page in kept:
            parts.append(PAGE_NO.pack(p))
            parts.append(page)
        pos += REC.size + len(kept) * (4 + page_size)
        ends.append(pos)
        sizes.append(commit)
        cks.append(checksum.value)
        pages = {}
    c1 = c2 = 0
    if last >= 0:
        _, _, _, _, c1, c2 = unpack(data, last * fsz)
    return (-1, last + 1, c1, c2, b"".join(parts), ends.tobytes(), sizes.tobytes(), cks.tobytes(),
            changed.tobytes())

