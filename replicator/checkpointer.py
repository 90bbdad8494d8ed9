"""The checkpoint cycle (docs/design.md 4.4), and the one way the read mark moves.

(a) `move_mark`: the spare reader begins, everything up to mxFrame is copied and made
    durable in the spool, and only then does R end its transaction and the spare take its
    place: a read transaction is held at every instant, and none is given up over a frame
    that is not durable.
(b) an unfenced PASSIVE backfill from W does the bulk of the work; (a)+(b) repeat while the
    writer leaves a long tail that keeps halving (policy.another_backfill_round).
(c) `finish`: fence, copy the small tail, make it durable, end R, PASSIVE checkpoint from R,
    begin R again (on mark 0): the first write after the fence restarts the WAL at frame 1.
Everything after the first (a) runs on the checkpoint thread while the worker keeps copying.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from . import faults, policy, wal
from .errors import SourceError, SpoolError
from .handles import DbHandles
from .spooler import Spooler
from .tail import ContinuityLost, Position

log = logging.getLogger(__name__)


def move_mark(handles: DbHandles, spooler: Spooler, fenced: bool = False
              ) -> tuple[wal.IndexHeader, Position, int] | None:
    """Move R's read mark up to mxFrame, releasing nothing that is not durable.

    fenced=True begins the spare inside a fence and returns (the header its view was taken
    at, the position there, the checksum there): a snapshot reads exactly that view. The
    unfenced form never stops the writer.
    """
    view = None
    with spooler.lock:
        if fenced:
            with handles.fence():
                handles.begin_spare()
                try:
                    spooler.copy_locked()
                except BaseException:
                    handles.end_spare()
                    raise
                hdr = handles.index_header()
                assert spooler.tail.pos is not None and spooler.tail.checksum is not None
                view = (hdr, spooler.tail.pos, spooler.tail.checksum.value)
        else:
            handles.begin_spare()
    try:
        if not fenced:
            spooler.copy()  # to the spare's view at least
        spooler.sync()
    except BaseException:
        with spooler.lock:
            handles.end_spare()
        raise
    faults.point("mark-synced")
    with spooler.lock:
        handles.promote_spare()
    return view


def finish(handles: DbHandles, spooler: Spooler, max_tail: int | None) -> bool:
    """(c): fence, copy the tail, make it durable, checkpoint from R, re-open R.

    What the fence adds to SQLite's own checkpoint is kept small: everything spooled before
    it is synced first (the worker waits on `lock`, not the application); inside, the tail's
    segments ride in their state record, so making them durable is the log's fsync alone,
    and that runs on the spooler's thread while SQLite checkpoints (measured flat out:
    spooling and syncing the tail in line held the fence ~2 ms longer, enough to push the
    application's busy handler into its next sleep step).

    So that a sync that fails cannot let the WAL restart over what it could not make
    durable, the spare begins before R ends: on a mark above 0 (the checkpoint still
    backfills everything: the mark is mxFrame itself) it stops every restart until it is
    given up, which happens only once the sync succeeded; if it failed, the spare becomes R.
    (If the spare lands on mark 0, everything was backfilled already, and that can only be
    at or below R's mark, which is durable.)

    With `max_tail`, gives up (False, nothing changed) if more frames than that wait to be
    backfilled once the fence is held: taking the fence can take a flat-out writer long
    enough to write thousands of frames, and backfilling those inside the fence stalled the
    writer for 100-160 ms; another unfenced round is cheaper.
    """
    handles.sync_wal()  # most of what the checkpoint would fsync inside the fence
    with spooler.lock:
        spooler.sync()  # what is spooled so far (the worker waits): the fence syncs only its tail
        return _finish_fenced(handles, spooler, max_tail)


def _finish_fenced(handles: DbHandles, spooler: Spooler, max_tail: int | None) -> bool:
    with handles.fence():
        if max_tail is not None and backfill_tail(handles) > max_tail:
            return False
        if spooler.failed is not None:
            spooler.recover(force=True)  # raises while the spool cannot be written
        synced = spooler.spool_and_sync_in_background(spooler.tail.read())
        handles.begin_spare()
        handles.end_read()
        try:
            handles.checkpoint_from_reader()
            faults.point("checkpoint-fenced")
        finally:
            try:
                synced()
            except BaseException:
                handles.adopt_spare()  # its mark holds every frame: nothing leaves the WAL
                raise
            handles.begin_read()  # on mark 0: the next write after the fence restarts the WAL
            handles.end_spare()
    return True


def backfill_tail(handles: DbHandles) -> int:
    """Frames in the WAL not yet written back to the database file."""
    hdr = handles.index_header()
    return hdr.mx_frame - hdr.nbackfill


class Checkpointer:
    """Runs one checkpoint cycle at a time on its own thread; the worker asks and joins."""

    def __init__(self, handles: DbHandles, spooler: Spooler, stopping: threading.Event,
                 on_done: Callable[[], None], name: str = "checkpoint"):
        self.handles = handles
        self.spooler = spooler
        self.stopping = stopping
        self.on_done = on_done
        self.name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        # For status(): cycles completed and their durations (one update per cycle).
        self.completed = 0
        self.seconds_total = 0.0
        self.last_seconds: float | None = None

    def start(self) -> None:
        assert not self.running()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self) -> BaseException | None:
        """Wait for the cycle (if any); returns what stopped it early, if anything did."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        err, self._error = self._error, None
        return err

    def _run(self) -> None:
        """(a), then (b) and more (a)+(b) rounds while they shorten the tail, then (c), back to
        back: each millisecond between the end of a backfill and the fence of (c) lets a
        flat-out writer add ~20 frames that (c) must backfill with the writer stopped."""
        try:
            started = time.monotonic()
            rounds, before, retries = 0, 1 << 62, 0
            move_mark(self.handles, self.spooler)
            while not self.stopping.is_set():
                self.handles.backfill()  # BUSY (the application checkpoints): go on
                faults.point("backfilled")
                rounds += 1
                tail = backfill_tail(self.handles)
                if not policy.another_backfill_round(tail, before, rounds):
                    if finish(self.handles, self.spooler, policy.fence_tail_limit(retries)):
                        self._completed(time.monotonic() - started)
                        return
                    retries += 1  # the writer got far while the fence was taken
                before = tail
                move_mark(self.handles, self.spooler)
        except (ContinuityLost, SpoolError, SourceError) as err:
            self._error = err  # the worker decides: new generation, paused, or retry
        except Exception as err:  # noqa: BLE001 - must not kill the tail; the worker reports it
            log.exception("%s: checkpoint failed", self.handles.path)
            self._error = err
        finally:
            self.on_done()

    def _completed(self, seconds: float) -> None:
        self.last_seconds = seconds
        self.seconds_total += seconds
        self.completed += 1
