"""The WAL tail: where the copy stands in the WAL, and reading what was committed after it.

Pure of SQLite: it reads through a `WalFile` (the wal-index header and frame bytes), so it
runs against a real WAL (handles.DbHandles) and against the fake WALs of tests/test_tail.py
alike. What keeps the frames it has not read yet in the WAL is the read transaction held by
handles.py; the tail only checks what it can see: salts, mxFrame, commit frames, and, on
resume, the saved frame's salts and cumulative checksum.

A frame is copied only if its commit frame is at or below mxFrame: frames past mxFrame may
be uncommitted or rolled back and still look valid.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable, Iterator, Protocol

from . import wal
from .dbhash import DbChecksum
from .walscan import BadSalts, Scanned, scan

MAX_READ_BYTES = 16 << 20  # one pread of WAL frames at most (unless one transaction is larger)


class ContinuityLost(Exception):
    """The WAL no longer proves that nothing was missed: a new generation must start."""


@dataclasses.dataclass(frozen=True)
class Position:
    """The last copied commit frame of the WAL, and the txid of that commit."""

    salts: tuple[int, int]
    frame: int  # last copied frame (a commit frame), 0 = none in this WAL
    frame_cksum: tuple[int, int]  # cumulative checksum stored in that frame
    txid: int


class WalFile(Protocol):
    """What the tail reads: the wal-index header and WAL bytes."""

    page_size: int

    def index_header(self) -> wal.IndexHeader: ...

    def pread_wal(self, size: int, offset: int) -> memoryview: ...


class Copied(list):
    """What one read returned: the Scanned pieces (walscan) in order, each of whole transactions."""

    @property
    def n_tx(self) -> int:
        return sum(len(s) for s in self)

    def txids(self) -> list[int]:
        return [t for s in self for t in range(s.first_txid, s.last_txid + 1)]

    def records(self) -> Iterator[tuple[int, int, dict[int, memoryview]]]:
        for s in self:
            yield from s.records()


class Tail:
    """Position + database checksum, and the copy that advances both.

    `reader_held` tells whether our read transaction is held right now: a WAL restart seen
    while it is held can only have happened over frames already copied (design 4), any
    other restart is a continuity loss.
    """

    def __init__(self, wal_file: WalFile, reader_held: Callable[[], bool],
                 clock_ns: Callable[[], int] = time.time_ns):
        self.wal = wal_file
        self.reader_held = reader_held
        self.clock_ns = clock_ns
        self.pos: Position | None = None
        self.checksum: DbChecksum | None = None  # of the database after pos.txid
        self.caught_up = True  # after read(): nothing committed was left unread
        self.commit_ns = 0  # when the transaction at pos was seen committed (0: unknown)
        self._last_time_ns = 0
        self._clock_lock = threading.Lock()

    @property
    def page_size(self) -> int:
        return self.wal.page_size

    def now(self) -> int:
        """Wall-clock ns, never going backwards (commit times must be monotonic for restore).
        Locked: the worker and the checkpoint thread both ask, and a lost update could let a
        later commit carry an earlier time."""
        with self._clock_lock:
            self._last_time_ns = max(self._last_time_ns + 1, self.clock_ns())
            return self._last_time_ns

    def start(self, hdr: wal.IndexHeader, txid: int, checksum: DbChecksum) -> None:
        """A new generation whose snapshot is the database as of `hdr`'s mxFrame."""
        frame_ck = hdr.frame_cksum if hdr.mx_frame else (0, 0)
        self.pos = Position((hdr.salt1, hdr.salt2), hdr.mx_frame, frame_ck, txid)
        self.checksum = checksum

    def set(self, pos: Position, checksum: DbChecksum) -> None:
        """Carry on from a saved (resumed, or rolled back to) position."""
        self.pos, self.checksum = pos, checksum

    def proves(self, saved: Position, hdr: wal.IndexHeader) -> bool:
        """Does the WAL still hold the saved frame, as a commit frame with the saved salts
        and cumulative checksum? (Then every frame after it is what followed it.)"""
        if (hdr.salt1, hdr.salt2) != saved.salts or hdr.mx_frame < saved.frame or hdr.page_size != self.page_size:
            return False
        if not saved.frame:
            return True
        raw = bytes(self.wal.pread_wal(wal.FRAME_HEADER_SIZE, wal.frame_offset(saved.frame, self.page_size)))
        if len(raw) < wal.FRAME_HEADER_SIZE:
            return False
        fh = wal.parse_frame_header(raw)
        return ((fh.salt1, fh.salt2) == saved.salts and (fh.cksum1, fh.cksum2) == saved.frame_cksum
                and fh.commit_size != 0)

    def read(self, max_bytes: int | None = None) -> Copied:
        """Every transaction committed since the last call (or about `max_bytes` of them:
        then `caught_up` says whether more were already committed), as segment records
        stamped with the copy time; advances the position and the checksum.

        Raises ContinuityLost if the WAL restarted in a way the invariant cannot explain.
        """
        assert self.pos is not None and self.checksum is not None
        out = Copied()
        frame_bytes = wal.FRAME_HEADER_SIZE + self.page_size
        budget = max_bytes // frame_bytes if max_bytes else None
        self.caught_up = False
        while True:
            hdr = self.wal.index_header()
            if (hdr.salt1, hdr.salt2) != self.pos.salts:
                if self.pos.frame and not self.reader_held():
                    raise ContinuityLost("the WAL restarted while no read transaction of ours held it")
                # Legal only over frames already copied (design 4): carry on from frame 1.
                self.pos = Position((hdr.salt1, hdr.salt2), 0, (0, 0), self.pos.txid)
            if hdr.mx_frame < self.pos.frame:
                raise ContinuityLost(f"mxFrame went back from {self.pos.frame} to {hdr.mx_frame}")
            if hdr.mx_frame == self.pos.frame:
                self.caught_up = True
                return out
            if budget is not None and budget <= 0:
                return out
            if hdr.page_size != self.page_size:
                raise ContinuityLost(f"page size changed from {self.page_size} to {hdr.page_size}")
            before = self.pos.frame
            batch = self._read_frames(hdr)
            if batch is None:
                continue  # the WAL restarted under us: read the header again
            out.append(batch)
            if budget is not None:
                budget -= self.pos.frame - before
            if self.pos.frame >= hdr.mx_frame:
                self.caught_up = True
                return out

    def _read_frames(self, hdr: wal.IndexHeader) -> Scanned | None:
        """Whole transactions from pos+1, at most MAX_READ_BYTES unless one is larger."""
        assert self.pos is not None
        ps = self.page_size
        fsz = wal.FRAME_HEADER_SIZE + ps
        available = hdr.mx_frame - self.pos.frame
        n = min(available, max(1, MAX_READ_BYTES // fsz))
        while True:
            start = self.pos.frame + 1
            data = self.wal.pread_wal(n * fsz, wal.frame_offset(start, ps))
            again = self.wal.index_header()
            if (again.salt1, again.salt2) != self.pos.salts:
                return None  # seqlock: the frames may belong to the new WAL
            if len(data) != n * fsz:
                raise ContinuityLost(f"WAL shorter than mxFrame ({len(data)} < {n * fsz} bytes)")
            txs = self._scan(data, n, start)
            if txs or n == available:
                break
            n = min(available, n * 2)  # one transaction larger than a read: widen and retry
        if not txs:
            raise ContinuityLost(f"frame {hdr.mx_frame} (mxFrame) is not a commit frame")
        return txs

    def _scan(self, data: memoryview, n: int, start: int) -> Scanned:
        assert self.pos is not None and self.checksum is not None
        try:
            frames, frame_ck, txs = scan(data, n, self.page_size, self.pos.salts, self.pos.txid,
                                         self.checksum, self.now())
        except BadSalts as err:
            raise ContinuityLost(f"frame {start + err.index} has salts of another WAL") from None
        if frames:
            self.pos = Position(self.pos.salts, self.pos.frame + frames, frame_ck, txs.last_txid)
            self.commit_ns = txs.time_ns
        return txs
