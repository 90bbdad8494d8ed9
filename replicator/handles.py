"""The SQLite handles on one live database, and the lock discipline they follow.

Three apsw connections: **R** holds the read transaction that keeps uncopied frames in the
WAL, **R2** is the spare reader that lets R's mark move without stopping the writer, and
**W** takes the write fence (BEGIN IMMEDIATE) and runs the unfenced backfill. Beside them,
one raw descriptor each on the database, the -wal and the -shm (mapped read-only) for
reading frames and the wal-index header. docs/design.md section 4 states the invariants;
this module only provides the moves (begin, end, swap, fence, checkpoint), and tail.py,
checkpointer.py and replication.py decide when each is safe.

Never close a descriptor on the database, -wal or -shm while R/W are open: POSIX advisory
locks belong to the process, and closing *any* descriptor of a file drops all of them.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import time
from typing import Iterator

import apsw

from . import wal
from .checkpoint_guard import CheckpointGuard
from .errors import SourceError

log = logging.getLogger(__name__)

REUSED_BUFFER_BYTES = 16 << 20  # WAL reads up to this share one buffer; a larger one gets its own
SHM_RETRIES = 1000  # torn wal-index reads are retried (a writer updates it in ~µs)


class DbHandles:
    def __init__(self, path: str, busy_timeout_s: float = 5.0):
        self.path = path
        self.wal_path = path + "-wal"
        self.shm_path = path + "-shm"
        self.busy_timeout_ms = int(busy_timeout_s * 1000)
        self.R: apsw.Connection | None = None
        self.R2: apsw.Connection | None = None
        self.W: apsw.Connection | None = None
        self._wal_fd = -1
        self._db_fd = -1
        self._shm: mmap.mmap | None = None
        self._shm_fd = -1
        self.guard: CheckpointGuard | None = None
        self.db_ident: tuple[int, int] | None = None
        self.page_size = 0
        self.reading = False  # R holds a read transaction
        self._spare = False  # R2 holds one
        self._read_buf = bytearray()

    # -- lifecycle -------------------------------------------------------------------

    def open(self) -> None:
        """Open R, R2 and W, put the database in WAL mode, then the raw descriptors.

        No read transaction yet: the caller begins R inside a fence (the tailing invariant
        holds from R's first instant, see replication.py).
        """
        if not os.path.exists(self.path):
            raise SourceError(f"database not found: {self.path}")
        try:
            with open(self.path, "rb") as f:
                head = f.read(16)
        except OSError as err:
            raise SourceError(f"cannot read {self.path}: {err.strerror}") from None
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
            # A read and rollback so that SQLite has the -wal and -shm open and locked
            # before our own descriptors exist (module docstring).
            _begin(self.R)
            self.R.execute("COMMIT")
            self.page_size = self.W.execute("PRAGMA page_size").fetchall()[0][0]
        except apsw.Error as err:
            self.close()
            raise SourceError(f"cannot open {self.path}: {err}") from None
        try:
            self._db_fd = os.open(self.path, os.O_RDONLY)
            self._wal_fd = os.open(self.wal_path, os.O_RDONLY)
            self._shm_fd = os.open(self.shm_path, os.O_RDONLY)
            self._shm = mmap.mmap(self._shm_fd, wal.SHM_HEADER_SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        except OSError as err:
            self.close()
            raise SourceError(f"cannot open {self.path}: {err.strerror or err}") from None
        try:
            self.guard = CheckpointGuard(self.shm_path)
            self.guard.acquire()
        except OSError as err:  # e.g. a read-only -shm: the application keeps checkpointing
            log.warning("%s: not taking over checkpoints: %s", self.path, err)
        st = os.fstat(self._db_fd)
        self.db_ident = (st.st_dev, st.st_ino)

    def _connect(self) -> apsw.Connection:
        conn = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READWRITE)
        conn.wal_autocheckpoint(0)  # only our checkpoint cycle checkpoints from these
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
        self.reading = self._spare = False
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

    # -- readers ---------------------------------------------------------------------

    def begin_read(self) -> None:
        assert self.R is not None and not self.reading
        _begin(self.R)
        self.reading = True

    def end_read(self) -> None:
        assert self.R is not None and self.reading
        self.R.execute("COMMIT")
        self.reading = False

    def begin_spare(self) -> None:
        """R2 begins its read transaction (R keeps its own): see promote_spare()."""
        assert self.R2 is not None and not self._spare
        _begin(self.R2)
        self._spare = True

    def end_spare(self) -> None:
        """Give up the spare's transaction (R keeps the mark it had)."""
        if self._spare:
            assert self.R2 is not None
            self.R2.execute("COMMIT")
            self._spare = False

    def promote_spare(self) -> None:
        """R ends its transaction and the spare, begun earlier, becomes R: the read mark
        moves to the spare's without an instant in which no read transaction is held."""
        assert self.R is not None and self._spare and self.reading
        self.R.execute("COMMIT")
        self.R, self.R2 = self.R2, self.R
        self._spare = False

    def adopt_spare(self) -> None:
        """After R ended its transaction (inside a fence): the spare, begun before, becomes R."""
        assert self.R is not None and self._spare and not self.reading
        self.R, self.R2 = self.R2, self.R
        self._spare, self.reading = False, True

    @contextlib.contextmanager
    def fence(self) -> Iterator[None]:
        """Hold the write lock: no commit can happen inside, so mxFrame stands still and the
        WAL cannot restart.

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

    # -- reading the WAL and the file ------------------------------------------------

    def index_header(self) -> wal.IndexHeader:
        assert self._shm is not None
        for _ in range(SHM_RETRIES):
            try:
                return wal.parse_shm_header(self._shm[: wal.SHM_HEADER_SIZE])
            except wal.TornRead:
                time.sleep(0)
        raise SourceError(f"{self.shm_path}: wal-index header never read consistently")

    def pread_wal(self, size: int, offset: int) -> memoryview:
        """Read into one reused buffer: a fresh 16 MiB per read cost as much in page faults
        as the read itself. Valid until the next call (walscan copies what it keeps)."""
        buf = self._read_buf
        if len(buf) < size:
            buf = bytearray(size)
            if size <= REUSED_BUFFER_BYTES:  # one huge transaction's read is not kept for good
                self._read_buf = buf
        view = memoryview(buf)[:size]
        return view[:os.preadv(self._wal_fd, [view], offset)]

    def read_wal(self, size: int, offset: int) -> bytes:
        """A small read of its own (frame headers, single pages)."""
        return os.pread(self._wal_fd, size, offset)

    def read_db_into(self, view: memoryview, offset: int) -> int:
        """Fill `view` from the database file at `offset`; returns the bytes read (short at EOF)."""
        done = 0
        while done < len(view) and (n := os.preadv(self._db_fd, [view[done:]], offset + done)):
            done += n
        return done

    def db_file_size(self) -> int:
        return os.fstat(self._db_fd).st_size

    # -- checkpoints -----------------------------------------------------------------

    def keep_checkpoints(self) -> bool:
        """Hold SQLite's checkpointer lock (checkpoint_guard.py); True while we hold it."""
        return self.guard is None or self.guard.acquire()

    def backfill(self) -> bool:
        """PASSIVE checkpoint from W, outside any fence: the bulk of a checkpoint's work.

        False if another connection is checkpointing right now.
        """
        assert self.W is not None
        try:
            return _passive_checkpoint(self.W)
        finally:
            self.keep_checkpoints()  # SQLite dropped the lock when our checkpoint ended

    def checkpoint_from_reader(self) -> bool:
        """PASSIVE checkpoint from R, which must be between transactions (inside one it fails
        with LockedError). Only inside a fence: R holds no mark here."""
        assert self.R is not None and not self.reading
        try:
            return _passive_checkpoint(self.R)
        finally:
            self.keep_checkpoints()

    def sync_wal(self) -> None:
        """A checkpoint fsyncs the WAL inside the fence; calling this first flushes most of
        that while the writer still runs."""
        os.fsync(self._wal_fd)


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
