"""One live database: the held read transaction, the copy loop, checkpoints, snapshots.

The invariant this module keeps (docs/design.md section 4): R holds a read transaction at
all times except inside a fence (W holds the write lock), and R re-opens only after every
frame up to mxFrame has been copied. A committed frame is destroyed only by a WAL restart
or a TRUNCATE checkpoint, and both are impossible while R holds its read mark, so no
committed frame is ever missed, whatever checkpoints the application runs.

Never close a descriptor on the database, -wal or -shm while R/W are open: POSIX advisory
locks belong to the process, and closing *any* descriptor of a file drops all of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import mmap
import os
import threading
import time
from typing import Callable, Iterator

import apsw

from . import wal
from .checkpoint_guard import CheckpointGuard
from .dbhash import DbChecksum
from .errors import SourceError
from .walscan import BadSalts, Scanned, scan

log = logging.getLogger(__name__)

MAX_READ_BYTES = 16 << 20  # one pread of WAL frames at most
SHM_RETRIES = 1000  # torn wal-index reads are retried (a writer updates it in ~µs)
IMAGE_CHUNK_PAGES = 2048  # 8 MiB at 4 KiB pages per read (and copy-loop poll) during a snapshot


class ContinuityLost(Exception):
    """The WAL no longer proves that nothing was missed: a new generation must start."""


@dataclasses.dataclass
class Position:
    """Where the copy loop stands in the WAL, and the txid of the last copied commit."""

    salts: tuple[int, int]
    frame: int  # last copied frame (a commit frame), 0 = none in this WAL
    frame_cksum: tuple[int, int]  # cumulative checksum stored in that frame
    txid: int


class Copied(list):
    """What copy() read: the Scanned pieces (walscan) in order, each of whole transactions."""

    @property
    def n_tx(self) -> int:
        return sum(len(s) for s in self)

    def txids(self) -> list[int]:
        return [t for s in self for t in range(s.first_txid, s.last_txid + 1)]

    def records(self) -> Iterator[tuple[int, int, dict[int, memoryview]]]:
        for s in self:
            yield from s.records()


class Source:
    def __init__(self, path: str, busy_timeout_s: float = 5.0,
                 clock_ns: Callable[[], int] = time.time_ns):
        self.path = path
        self.wal_path = path + "-wal"
        self.shm_path = path + "-shm"
        self.busy_timeout_ms = int(busy_timeout_s * 1000)
        self.clock_ns = clock_ns
        self.R: apsw.Connection | None = None
        self.R2: apsw.Connection | None = None  # the spare reader: see advance()
        self.W: apsw.Connection | None = None
        self._wal_fd = -1
        self._db_fd = -1
        self._shm: mmap.mmap | None = None
        self._shm_fd = -1
        self.guard: CheckpointGuard | None = None
        self.db_ident: tuple[int, int] | None = None
        self.page_size = 0
        self.pos: Position | None = None
        self.checksum: DbChecksum | None = None  # of the database after pos.txid: copy() updates it
        self._last_time_ns = 0
        self._clock_lock = threading.Lock()
        self._read_buf = bytearray()
        self._reading = False
        self.caught_up = True  # after copy(): nothing committed was left unread

    def now(self) -> int:
        """Wall-clock ns, never going backwards (commit times must be monotonic for restore).
        Locked: the worker and the checkpoint thread both ask, and a lost update could let a
        later commit carry an earlier time."""
        with self._clock_lock:
            self._last_time_ns = max(self._last_time_ns + 1, self.clock_ns())
            return self._last_time_ns

    # -- lifecycle -------------------------------------------------------------------

    def open(self) -> None:
        """Open R and W, put the database in WAL mode, then the raw descriptors."""
        if not os.path.exists(self.path):
            raise SourceError(f"database not found: {self.path}")
        with open(self.path, "rb") as f:
            head = f.read(16)
        if head and head != b"SQLite format 3\x00":
            raise SourceError(f"not a SQLite database: {self.path}")
        try:
            self.W = self._connect()
            mode = self.W.execute("PRAGMA journal_mode").fetchall()[0][0]
            if mode.lower() != "wal":
                mode = self.W.execute("PRAGMA journal_mode=wal").fetchall()[0][0]
                if mode.lower() != "wal":
                    raise SourceError(f"cannot switch {self.path} to WAL mode (journal_mode={mode})")
            self.R = self._connect()
            self.R2 = self._connect()
            self._begin_read()
        except apsw.Error as err:
            self.close()
            raise SourceError(f"cannot open {self.path}: {err}") from None
        # Descriptors only after SQLite holds its own: see the module docstring.
        self._db_fd = os.open(self.path, os.O_RDONLY)
        self._wal_fd = os.open(self.wal_path, os.O_RDONLY)
        self._shm_fd = os.open(self.shm_path, os.O_RDONLY)
        self._shm = mmap.mmap(self._shm_fd, wal.SHM_HEADER_SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        try:
            self.guard = CheckpointGuard(self.shm_path)
            self.guard.acquire()
        except OSError as err:  # e.g. a read-only -shm: the application keeps checkpointing
            log.warning("%s: not taking over checkpoints: %s", self.path, err)
        st = os.fstat(self._db_fd)
        self.db_ident = (st.st_dev, st.st_ino)
        self.page_size = self.W.execute("PRAGMA page_size").fetchall()[0][0]

    def _connect(self) -> apsw.Connection:
        conn = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READWRITE)
        conn.wal_autocheckpoint(0)  # only the two-phase sequence below checkpoints
        # Closing the last connection would checkpoint and delete the WAL, and with it the
        # proof of continuity a restart needs; the application's next open recovers as usual.
        conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        conn.set_busy_handler(_EagerBusyHandler(self.busy_timeout_ms / 1000))
        return conn

    def close(self) -> None:
        """Connections first, descriptors after: closing a descriptor drops SQLite's locks."""
        for conn in (self.R, self.R2, self.W):
            if conn is not None:
                with contextlib.suppress(apsw.Error):
                    conn.close()
        self.R = self.R2 = self.W = None
        self._reading = False
        if self._shm is not None:
            self._shm.close()
            self._shm = None
        if self.guard is not None:
            self.guard.close()
            self.guard = None
        for fd in (self._wal_fd, self._db_fd, self._shm_fd):
            if fd >= 0:
                os.close(fd)
        self._wal_fd = self._db_fd = self._shm_fd = -1

    def replaced(self) -> bool:
        """True when the path now names another file (restored over, moved away)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self.db_ident

    # -- locks -----------------------------------------------------------------------

    def _begin_read(self) -> None:
        assert self.R is not None
        _begin(self.R)
        self._reading = True

    def _end_read(self) -> None:
        assert self.R is not None
        self.R.execute("COMMIT")
        self._reading = False

    @contextlib.contextmanager
    def fence(self) -> Iterator[None]:
        """Hold the write lock: no commit can happen inside, so mxFrame stands still.

        The lock is first waited for outside SQLite and the GIL (checkpoint_guard), then W's
        BEGIN IMMEDIATE finds it held by this process and proceeds at once.
        """
        assert self.W is not None
        timeout_s = self.busy_timeout_ms / 1000
        took = self.guard.wait_write_lock(timeout_s) if self.guard is not None else None
        try:
            if took is False:
                raise apsw.BusyError("write lock")
            self.W.execute("BEGIN IMMEDIATE")
        except apsw.BusyError:
            if took:
                self.guard.release_write_lock()
            raise SourceError(f"{self.path}: could not take the write lock within "
                              f"{self.busy_timeout_ms} ms (a long write transaction?)") from None
        except BaseException:
            if took and not self.W.in_transaction:
                self.guard.release_write_lock()
            raise
        try:
            yield
        finally:
            self.W.execute("ROLLBACK")

    # -- reading the WAL -------------------------------------------------------------

    def index_header(self) -> wal.IndexHeader:
        assert self._shm is not None
        for _ in range(SHM_RETRIES):
            try:
                return wal.parse_shm_header(self._shm[: wal.SHM_HEADER_SIZE])
            except wal.TornRead:
                time.sleep(0)
        raise SourceError(f"{self.shm_path}: wal-index header never read consistently")

    def start_position(self, txid: int) -> wal.IndexHeader:
        """Call inside a fence with R freshly opened: the position is mxFrame itself."""
        hdr = self.index_header()
        frame_ck = hdr.frame_cksum if hdr.mx_frame else (0, 0)
        self.pos = Position((hdr.salt1, hdr.salt2), hdr.mx_frame, frame_ck, txid)
        return hdr

    def resume(self, saved: Position) -> bool:
        """Prove the WAL still holds the saved frame with the saved salts and checksum."""
        hdr = self.index_header()
        if (hdr.salt1, hdr.salt2) != saved.salts or hdr.mx_frame < saved.frame:
            return False
        if saved.frame:
            raw = os.pread(self._wal_fd, wal.FRAME_HEADER_SIZE, wal.frame_offset(saved.frame, self.page_size))
            if len(raw) < wal.FRAME_HEADER_SIZE:
                return False
            fh = wal.parse_frame_header(raw)
            if (fh.salt1, fh.salt2) != saved.salts or (fh.cksum1, fh.cksum2) != saved.frame_cksum:
                return False
            if not fh.commit_size:
                return False
        self.pos = dataclasses.replace(saved)
        return True

    def copy(self, max_bytes: int | None = None) -> Copied:
        """Read every transaction committed since the last call (or about `max_bytes` of
        them: then `caught_up` says whether more were already committed).

        Returns them as segment records stamped with the copy time, and advances the
        position and the checksum. Raises ContinuityLost if the WAL was restarted in a way
        the invariant cannot explain.
        """
        assert self.pos is not None and self.checksum is not None
        out = Copied()
        budget = max_bytes // (wal.FRAME_HEADER_SIZE + self.page_size) if max_bytes else None
        self.caught_up = False
        while True:
            hdr = self.index_header()
            if (hdr.salt1, hdr.salt2) != self.pos.salts:
                # A restart: legal only once everything was copied and backfilled, which the
                # invariant guarantees; carry on from frame 1 of the new WAL.
                if self.pos.frame and not self._fully_copied_before_restart():
                    raise ContinuityLost("WAL restarted before all frames were copied")
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
                continue  # the WAL restarted under us: re-read the header
            out.append(batch)
            if budget is not None:
                budget -= self.pos.frame - before
            if self.pos.frame >= hdr.mx_frame:
                self.caught_up = True
                return out

    def _fully_copied_before_restart(self) -> bool:
        # We cannot see the old WAL any more; the invariant (R held its mark) is the proof.
        return self._reading

    def _read_frames(self, hdr: wal.IndexHeader) -> Scanned | None:
        """Copy whole transactions from pos+1, at most MAX_READ_BYTES unless one is larger."""
        assert self.pos is not None
        ps = self.page_size
        fsz = wal.FRAME_HEADER_SIZE + ps
        available = hdr.mx_frame - self.pos.frame
        n = min(available, max(1, MAX_READ_BYTES // fsz))
        while True:
            start = self.pos.frame + 1
            data = self._pread_wal(n * fsz, wal.frame_offset(start, ps))
            again = self.index_header()
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

    def _pread_wal(self, size: int, offset: int) -> memoryview:
        """Read into one reused buffer: a fresh 16 MiB per read cost as much in page faults
        as the read itself (scan copies what it keeps into the records)."""
        buf = self._read_buf
        if len(buf) < size:
            buf = bytearray(size)
            if size <= MAX_READ_BYTES:  # one huge transaction's read is not kept for good
                self._read_buf = buf
        view = memoryview(buf)[:size]
        return view[:os.preadv(self._wal_fd, [view], offset)]

    def _scan(self, data: memoryview, n: int, start: int) -> Scanned:
        assert self.pos is not None and self.checksum is not None
        try:
            frames, frame_ck, txs = scan(data, n, self.page_size, self.pos.salts, self.pos.txid,
                                         self.checksum, self.now())
        except BadSalts as err:
            raise ContinuityLost(f"frame {start + err.index} has salts of another WAL") from None
        if frames:
            self.pos = Position(self.pos.salts, self.pos.frame + frames, frame_ck, txs.last_txid)
        return txs

    def image(self, hdr: wal.IndexHeader) -> tuple[int, Iterator[tuple[int, bytes]]]:
        """R's view of the database as (page count, chunks of pages in order).

        `hdr` must have been read inside the fence in which R began its read transaction.
        Each page is its newest WAL frame at or below mxFrame, else the database file's copy.
        That is R's view, byte for byte, and stable while R holds its transaction: a
        checkpoint writes into the file only pages that have frames at or below every
        reader's mark (so never a page we read from the file), and the WAL cannot restart
        under a reader on marks 1..4. When everything is backfilled (R may hold mark 0 and the
        WAL may restart), the file alone is R's view and no checkpoint can touch it.
        The chunks only read (they may be produced on another thread); the caller must not
        move R's mark before the last one.
        """
        ps = self.page_size
        latest: dict[int, int] = {}
        if hdr.mx_frame > hdr.nbackfill:
            for frame in range(1, hdr.mx_frame + 1):
                off = wal.frame_offset(frame, ps)
                latest[wal.parse_frame_header(os.pread(self._wal_fd, wal.FRAME_HEADER_SIZE, off)).pgno] = frame
        n_pages = hdr.n_page if hdr.mx_frame else os.fstat(self._db_fd).st_size // ps

        def chunks() -> Iterator[tuple[int, bytes]]:
            overlay = sorted(latest.items())
            k = 0
            for first in range(1, n_pages + 1, IMAGE_CHUNK_PAGES):
                count = min(IMAGE_CHUNK_PAGES, n_pages - first + 1)
                # Read straight into the chunk's buffer (pread's bytes plus a bytearray copy of
                # them cost a second pass over every page); past the file's end (pages that
                # live only in the WAL) it stays zeros until the overlay fills it.
                buf = bytearray(count * ps)
                view, off = memoryview(buf), (first - 1) * ps
                while view and (n := os.preadv(self._db_fd, [view], off)):
                    view, off = view[n:], off + n
                del view
                while k < len(overlay) and overlay[k][0] < first + count:
                    pgno, frame = overlay[k]
                    if pgno >= first:
                        off = wal.frame_offset(frame, ps) + wal.FRAME_HEADER_SIZE
                        buf[(pgno - first) * ps:(pgno - first + 1) * ps] = os.pread(self._wal_fd, ps, off)
                    k += 1
                yield first, buf  # a fresh buffer per chunk: safe to hand to another thread

        return n_pages, chunks()

    # -- checkpoints -----------------------------------------------------------------

    def advance_read(self) -> None:
        """Inside a fence, after copying to mxFrame: move R's read mark up to mxFrame."""
        self._end_read()
        self._begin_read()

    def advance(self) -> Copied:
        """Move the read mark up without a fence: the spare reader begins first, everything
        up to mxFrame is copied, and only then does the old reader end its transaction.

        At every instant one of the two holds a read transaction that began before the
        frames still to be copied were written, so the invariant holds without stopping the
        writer: while a reader holds a mark above 0 the WAL cannot restart, and a reader on
        mark 0 (everything was backfilled when it began) blocks every backfill, so the WAL
        cannot restart past a frame written after it began either (design 4, "generalised").
        Returns the transactions copied on the way, like copy().
        """
        assert self.R is not None and self.R2 is not None
        _begin(self.R2)
        try:
            copied = self.copy()
        except BaseException:
            self.R2.execute("COMMIT")
            raise
        self.R.execute("COMMIT")
        self.R, self.R2 = self.R2, self.R
        return copied

    def keep_checkpoints(self) -> bool:
        """Hold SQLite's checkpointer lock (checkpoint_guard.py); True while we hold it."""
        return self.guard is None or self.guard.acquire()

    def backfill_tail(self) -> int:
        """Frames in the WAL not yet written back to the database file."""
        hdr = self.index_header()
        return hdr.mx_frame - hdr.nbackfill

    def checkpoint(self, ship: Callable[[list], None]) -> None:
        """Two-phase PASSIVE checkpoint (design section 4 step 4): writers wait ~ms, not the backfill.

        `ship` receives each batch of copied transactions. The daemon runs the phases itself
        so that the copy loop keeps going during the backfill, and repeats (a)+(b) while the
        writer keeps the unbackfilled tail long, so that the fenced phase (c) stays short.
        """
        self.checkpoint_start(ship)
        if self.checkpoint_backfill():
            self.sync_wal()
            self.checkpoint_finish(ship)

    def checkpoint_start(self, ship: Callable[[list], None]) -> None:
        """(a) Copy to mxFrame and move the read mark up to it (no fence: see advance())."""
        ship(self.advance())

    def checkpoint_backfill(self) -> bool:
        """(b) The bulk of the backfill, unfenced (may run on another thread: only W is used).

        False if the application is checkpointing right now: leave it to finish.
        """
        assert self.W is not None
        try:
            return _passive_checkpoint(self.W)
        finally:
            self.keep_checkpoints()  # SQLite dropped the lock when our checkpoint ended

    def sync_wal(self) -> None:
        """The checkpoint in (c) fsyncs the WAL inside the fence; calling this first flushes
        most of that (the frames written during (b)) while the writer still runs."""
        os.fsync(self._wal_fd)

    def checkpoint_finish(self, ship: Callable[[list], None], max_tail: int | None = None) -> bool:
        """(c) Fence, copy the small tail, then R checkpoints outside its transaction and
        re-opens it: with everything backfilled, the next write restarts the WAL.

        With `max_tail`, gives up (False, nothing changed) if more frames than that wait to
        be backfilled once the fence is held: taking the fence can take a flat-out writer
        long enough to write thousands of frames, and backfilling those inside the fence
        stalled the writer for 100-160 ms; another unfenced round is cheaper.
        """
        assert self.R is not None
        with self.fence():
            if max_tail is not None and self.backfill_tail() > max_tail:
                return False
            txs = self.copy()
            self._end_read()
            try:
                _passive_checkpoint(self.R)
            finally:
                self.keep_checkpoints()
                self._begin_read()
        ship(txs)
        return True


def _begin(conn: apsw.Connection) -> None:
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()  # apsw is lazy: consume


class _EagerBusyHandler:
    """Retry a busy lock every 0.2 ms (SQLite's own handler backs off to 100 ms sleeps).

    A writer that is flat out holds its lock most of the time; polling coarsely lets the
    fence wait hundreds of milliseconds for a gap, polling finely finds one within ~1 ms.
    """

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.deadline = 0.0

    def __call__(self, attempt: int) -> bool:
        now = time.monotonic()
        if attempt == 0:
            self.deadline = now + self.timeout_s
        elif now >= self.deadline:
            return False
        time.sleep(0.0002)
        return True


def _passive_checkpoint(conn: apsw.Connection) -> bool:
    """PASSIVE never waits on readers or writers; BUSY only means another checkpoint runs."""
    try:
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        return True
    except apsw.BusyError:
        return False
