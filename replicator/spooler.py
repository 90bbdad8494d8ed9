"""From the WAL tail into the spool, in the order that keeps every claim true.

1. The tail reads committed transactions (its position and checksum move in memory).
2. Their segments are put in the spool, then one state-log record names the new position.
3. sync() makes the objects durable, then the log records that name them.
4. Only then may a read mark move past those frames, or the WAL restart over them
   (checkpointer.py, replication.py): the durable spool leads, the WAL's release follows.

When 2 or 3 fails (disk full, I/O error), the position in memory is ahead of what the spool
can prove: everything is rolled back to the last durable state (the objects past it are
deleted, the log restarted from it) and copied again from the WAL, which still holds those
frames because nothing released them. Until the rollback succeeds nothing is copied, no
checkpoint runs (the WAL grows; nothing is lost), and it is retried with backoff.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from . import faults, layout
from .errors import SpoolError
from .segment import SegmentEncoder
from .spool import Spool, TailState
from .storage.base import StorageError
from .tail import ContinuityLost, Copied, Tail
from .walscan import Scanned

log = logging.getLogger(__name__)

SEGMENT_MAX_PAGE_BYTES = 32 << 20  # split a large batch into segments of about this much data
COPY_CHUNK_BYTES = 32 << 20  # WAL read and spooled per piece when the tail is behind
RETRY_DELAY_S = (0.1, 5.0)  # backoff while the spool cannot be written (min, max)
FAILURE_LOG_INTERVAL_S = 60.0


class Spooler:
    """Copies the tail into the spool; the one place the durability order lives."""

    def __init__(self, spool: Spool, tail: Tail, on_spooled: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic):
        self.spool = spool
        self.tail = tail
        self.on_spooled = on_spooled
        self.clock = clock
        self.encoder = SegmentEncoder()
        self.generation = ""
        self.db_ident: tuple[int, int] | None = None  # of the file the generation follows
        # Held while copying, spooling and moving the read mark: the worker and the
        # checkpoint thread both do these. Reentrant: a fenced caller holds it while it
        # copies and syncs, and a failure rolls back under it.
        self.lock = threading.RLock()
        self.history_bytes = 0  # compressed segment bytes spooled since the newest snapshot
        self.batch_bytes = 0  # WAL record bytes spooled since the worker last looked
        self.failed: SpoolError | None = None  # set while the spool cannot be written
        self._rolled_back = True  # False while a rollback is owed (see module docstring)
        self._durable: TailState | None = None  # what the owed rollback goes back to
        self._retry_at = 0.0
        self._delay = RETRY_DELAY_S[0]
        self._logged_at = -1e18
        self._sync_pool: ThreadPoolExecutor | None = None

    # -- the copy path -------------------------------------------------------------------

    def copy(self, max_bytes: int = COPY_CHUNK_BYTES, force: bool = False) -> int:
        """Copy and spool everything committed so far, in pieces of `max_bytes` (a backlog is
        never in memory at once); returns the number of transactions. Raises SpoolError
        (after rolling back) when the spool cannot take them; while it cannot, tries again
        only after a backoff, unless `force` (the final copy on stop)."""
        self.recover(force)
        recovering = self.failed is not None
        n = 0
        while True:
            with self.lock:
                copied = self.tail.read(max_bytes)
                self._spool(copied)
            n += copied.n_tx
            if self.tail.caught_up:
                break
        if recovering:
            self.sync()  # the failure is over once what was copied again is durable
        return n

    def copy_locked(self) -> int:
        """copy() for a caller that holds `lock` already (inside a fence): all of it at once."""
        if self.failed is not None and not self._rolled_back:
            raise self.failed
        copied = self.tail.read()
        self._spool(copied)
        return copied.n_tx

    def _spool(self, copied: Copied, embed: bool = False) -> list[str]:
        """Segments, then the state record; with `embed` the record carries the segments too
        (see Spool.append). Returns the keys put."""
        if not copied:
            return []
        assert self.tail.checksum is not None and self.tail.pos is not None
        try:
            changed: set[int] = set()
            objects: list[tuple[str, bytes]] = []
            for scanned in copied:
                changed.update(scanned.changed)
                objects.extend(self._put_segments(scanned))
                self.batch_bytes += len(scanned.body)
            faults.point("spooled-unrecorded")
            compact = self.spool.append(self.generation, self.tail.pos, self.tail.checksum, changed,
                                        embed=objects if embed else None)
            if compact:  # a new base must not claim objects that are not durable yet
                self.spool.sync()
                self.spool.save_base(TailState(self.generation, self.tail.pos, self.tail.checksum.copy(),
                                               self.db_ident))
        except (SpoolError, StorageError, OSError) as err:
            raise self._fail(err) from None
        self.on_spooled()
        return [key for key, _ in objects]

    def _put_segments(self, s: Scanned) -> list[tuple[str, bytes]]:
        """The records of one read as segments of at most SEGMENT_MAX_PAGE_BYTES (unless one
        transaction is larger), split between transactions; returns (key, bytes) of each."""
        ps, ends, records = self.tail.page_size, s.ends, memoryview(s.body)
        out = []
        i, start = 0, 0
        while i < len(ends):
            j = max(i, bisect.bisect_right(ends, start + SEGMENT_MAX_PAGE_BYTES) - 1)
            first, last = s.first_txid + i, s.first_txid + j
            data = self.encoder.encode_body(self.generation, ps, records[start:ends[j]], first, last,
                                            s.time_ns, s.time_ns, s.sizes[j], s.checksums[j])
            key = layout.segment_key(self.generation, first, last, s.time_ns, s.time_ns)
            self.spool.objects.put(key, data)
            self.history_bytes += len(data)
            out.append((key, data))
            i, start = j + 1, ends[j]
        return out

    def sync(self) -> None:
        """Make everything spooled so far durable (before the frames may leave the WAL).
        Raises SpoolError, after rolling back, when it cannot."""
        if self.failed is not None and not self._rolled_back:
            raise self.failed
        try:
            self.spool.sync()
        except SpoolError as err:
            with self.lock:
                raise self._fail(err) from None
        self._recovered()

    def spool_and_sync_in_background(self, copied: Copied) -> Callable[[], None]:
        """Spool `copied` and sync, on the spooler's sync thread, while the caller (who holds
        `lock`, inside a fence) does something else; returns a function that waits for both
        and raises (after rolling back) as _spool() and sync() would. The segments ride in
        their state record, so the sync is the log's fsync alone (plus anything spooled
        since the caller's last sync: none, if it synced under `lock` just before).

        The worker cannot spool meanwhile (it waits for `lock`), so the sync thread has the
        encoder and the spool to itself."""
        if self.failed is not None and not self._rolled_back:
            raise self.failed
        if self._sync_pool is None:
            self._sync_pool = ThreadPoolExecutor(1, thread_name_prefix="spool-sync")

        sync_failed: list[SpoolError] = []

        def job() -> None:
            keys = self._spool(copied, embed=True)  # a failure here has rolled back already
            try:
                self.spool.sync(embedded=keys)  # the log's fsync carries these
            except SpoolError as err:
                sync_failed.append(err)
                raise

        future = self._sync_pool.submit(job)

        def wait() -> None:
            try:
                future.result()
            except SpoolError as err:
                if sync_failed:
                    with self.lock:
                        raise self._fail(err) from None
                raise
            self._recovered()

        return wait

    # -- failure and recovery ------------------------------------------------------------

    def _fail(self, err: BaseException) -> SpoolError:
        """Under `lock`: record the failure and roll back to the last durable state.

        A write that failed (disk full) leaves the batches before it intact: they are made
        durable first, so only the failed one is copied again. After a failed fsync nothing
        since the last good sync is trusted (the spool refuses to sync until rolled back).
        """
        first = self.failed is None
        self.failed = err if isinstance(err, SpoolError) else SpoolError(
            f"cannot write the spool {self.spool.dir}: {getattr(err, 'strerror', None) or err}")
        self._rolled_back = False
        now = self.clock()
        if first:
            self._delay = RETRY_DELAY_S[0]
        self._retry_at = now + self._delay
        self._delay = min(RETRY_DELAY_S[1], self._delay * 2)
        if first or now - self._logged_at >= FAILURE_LOG_INTERVAL_S:
            log.warning("%s; checkpoints are paused (the WAL keeps every frame not yet spooled) "
                        "and spooling is retried until it works", self.failed)
            self._logged_at = now
        with contextlib.suppress(SpoolError):
            self.spool.sync()  # refused after a failed fsync, which is what we want then
        # The position goes back at once (reading needs no space); cleaning the spool up to
        # it needs writes, and is owed until it succeeds: nothing is copied meanwhile.
        state = self.spool.durable_state()
        if state is None or state.generation != self.generation:
            raise ContinuityLost(f"the spool's tail state in {self.spool.dir} cannot be read back")
        self.tail.set(state.pos, state.checksum)
        self._durable = state
        self._try_rollback()
        return self.failed

    def _try_rollback(self) -> None:
        assert self._durable is not None
        try:
            self._clean_up_to(self._durable)
            self._rolled_back = True
        except (SpoolError, StorageError, OSError) as err:
            log.debug("rollback of %s failed: %s", self.spool.dir, err)

    def _clean_up_to(self, state: TailState) -> None:
        """Delete the spooled segments past `state` (not durable, maybe partial) and restart
        the state log from it."""
        stale = [o for o in self.spool.objects.list(layout.GENERATIONS)
                 if isinstance(info := layout.parse_key(o.key, o.size), layout.SegmentInfo)
                 and info.generation == self.generation and info.last_txid > state.pos.txid]
        self.spool.objects.delete_many([o.key for o in stale])
        self.spool.save_base(state)
        self.history_bytes = max(0, self.history_bytes - sum(o.size for o in stale))

    def recover(self, force: bool = False) -> None:
        """While failed: raises SpoolError until the backoff has passed (or `force`) and the
        owed rollback has succeeded; then lets one copy try. The failure is over only when a
        sync has succeeded again (see _recovered)."""
        if self.failed is None:
            return
        if not force and self.clock() < self._retry_at:
            raise self.failed
        with self.lock:
            if not self._rolled_back:
                self._try_rollback()
            if not self._rolled_back:
                self._retry_at = self.clock() + self._delay
                self._delay = min(RETRY_DELAY_S[1], self._delay * 2)
                raise self.failed

    def _recovered(self) -> None:
        """A sync succeeded: a failure, if there was one, is over."""
        if self.failed is not None:
            log.info("%s is writable again: spooling resumed from txid %d", self.spool.dir,
                     self.tail.pos.txid if self.tail.pos else 0)
            self.failed = None
            self._delay = RETRY_DELAY_S[0]
