"""The database checksum: XOR over all pages of a 64-bit hash of (pgno, page).

XOR makes it incremental (replace one page's hash, keep the rest), so every transaction can
carry the checksum of the whole database after it, and a restore can prove its output is
byte-for-byte the source at that transaction without the source being there.
"""

from __future__ import annotations

import functools
import operator
from array import array
from typing import BinaryIO

import xxhash

_hash = xxhash.xxh3_64_intdigest
PAGE_HASH = _hash  # (page, seed=pgno) -> int; walscan's C code calls it too
READ_CHUNK = 8 << 20  # 8 MiB sequential reads when hashing a whole file


def page_hash(pgno: int, page: bytes | memoryview) -> int:
    return _hash(page, seed=pgno)


class DbChecksum:
    """Per-page hashes for pages 1..n plus their XOR; pages never written count as zeros."""

    def __init__(self, page_size: int):
        self.page_size = page_size
        self._zero = bytes(page_size)
        self.hashes = array("Q")
        self.value = 0

    @property
    def n_pages(self) -> int:
        return len(self.hashes)

    def _extend_to(self, n: int) -> None:
        zero = self._zero
        for pgno in range(len(self.hashes) + 1, n + 1):
            h = _hash(zero, seed=pgno)
            self.hashes.append(h)
            self.value ^= h

    def update(self, pgno: int, page: bytes | memoryview) -> None:
        if pgno > len(self.hashes):
            self._extend_to(pgno)
        h = _hash(page, seed=pgno)
        self.value ^= self.hashes[pgno - 1] ^ h
        self.hashes[pgno - 1] = h

    def append_pages(self, data: bytes | memoryview) -> None:
        """Hash whole pages that continue the database in order (a snapshot being read):
        no zero-page hashes first, no per-page method call."""
        ps, first = self.page_size, len(self.hashes) + 1
        mv = memoryview(data)
        new = [_hash(mv[off:off + ps], seed=first + i) for i, off in enumerate(range(0, len(mv), ps))]
        self.hashes.extend(new)
        self.value = functools.reduce(operator.xor, new, self.value)

    def resize(self, n_pages: int) -> None:
        """Apply a commit's database size: drop pages past it, zero-fill up to it."""
        if n_pages < len(self.hashes):
            for h in self.hashes[n_pages:]:
                self.value ^= h
            del self.hashes[n_pages:]
        else:
            self._extend_to(n_pages)

    def copy(self) -> "DbChecksum":
        other = DbChecksum(self.page_size)
        other.hashes = array("Q", self.hashes)
        other.value = self.value
        return other


def file_checksum(f: BinaryIO, page_size: int, n_pages: int) -> int:
    """Checksum of the first n_pages of an open database file (short files read as zeros)."""
    value, pgno = 0, 1
    f.seek(0)
    zero = bytes(page_size)
    while pgno <= n_pages:
        want = min(READ_CHUNK // page_size, n_pages - pgno + 1) * page_size
        buf = f.read(want)
        mv = memoryview(buf)
        for off in range(0, len(buf) - page_size + 1, page_size):
            value ^= _hash(mv[off:off + page_size], seed=pgno)
            pgno += 1
        if len(buf) < want:
            break
    while pgno <= n_pages:
        value ^= _hash(zero, seed=pgno)
        pgno += 1
    return value
