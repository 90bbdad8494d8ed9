"""checkpointer.py against real SQLite: the read mark moves without losing a frame, the
WAL restarts only over frames that are durable in the spool, and a spool that cannot sync
keeps every frame in the WAL."""

from __future__ import annotations

import threading

import apsw
import pytest

from replicator.checkpointer import Checkpointer, backfill_tail, finish, move_mark
from replicator.errors import SpoolError

from livedb import LiveTail


def _write(app, n, size=500):
    for _ in range(n):
        app.execute("INSERT INTO t(v) VALUES (?)", (bytes(size),))


def _checkpoint(live: LiveTail) -> None:
    move_mark(live.handles, live.spooler)
    live.handles.backfill()
    assert finish(live.handles, live.spooler, max_tail=None)


def test_a_checkpoint_lets_the_next_write_restart_the_wal_and_nothing_is_missed(app_db):
    path, app = app_db
    live = LiveTail(path).start()
    try:
        _write(app, 20)
        _checkpoint(live)
        assert backfill_tail(live.handles) == 0
        salts = live.tail.pos.salts
        _write(app, 1)  # restarts the WAL at frame 1
        live.spooler.copy()
        assert live.tail.pos.salts != salts and live.tail.pos.frame <= 3
        assert live.txids() == list(range(2, 23))
    finally:
        live.close()


def test_application_checkpoints_cannot_destroy_uncopied_frames(app_db):
    path, app = app_db
    live = LiveTail(path).start()
    try:
        _write(app, 50)
        app.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        with pytest.raises(apsw.BusyError):  # needs every reader gone: R holds its mark
            app.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        _write(app, 1)
        live.spooler.copy()
        assert live.txids() == list(range(2, 53))
    finally:
        live.close()


def test_move_mark_moves_it_without_a_fence_and_loses_nothing(app_db):
    """The spare reader begins before R ends: application checkpoints still cannot restart
    the WAL past an uncopied frame, whether the new mark is above 0 or on 0 (design 4)."""
    path, app = app_db
    live = LiveTail(path).start()
    try:
        _write(app, 20)
        move_mark(live.handles, live.spooler)
        assert live.txids() == list(range(2, 22))
        _write(app, 20)
        app.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        with pytest.raises(apsw.BusyError):  # the new mark holds the WAL
            app.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        live.spooler.copy()
        assert live.txids() == list(range(2, 42))
        _checkpoint(live)  # everything backfilled: R is now on mark 0
        move_mark(live.handles, live.spooler)  # the spare begins on mark 0 too
        _write(app, 5)
        _, backfilled = app.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        assert backfilled == 0  # a reader on mark 0 blocks every backfill, so no restart
        live.spooler.copy()
        assert live.txids() == list(range(2, 47))
    finally:
        live.close()


def test_fenced_move_mark_returns_the_exact_view(app_db):
    path, app = app_db
    live = LiveTail(path).start()
    try:
        _write(app, 7)
        hdr, pos, value = move_mark(live.handles, live.spooler, fenced=True)
        assert pos.frame == hdr.mx_frame and pos.txid == 8
        assert value == live.tail.checksum.value
    finally:
        live.close()


class _FailingSync:
    """The spool's sync fails (an fsync error): in-process because it cannot be made real
    on demand; disk-full and I/O errors of real files are in test_spooler.py."""

    def __init__(self, live: LiveTail):
        self.real = live.spool.sync
        self.failing = True
        live.spool.sync = self  # type: ignore[method-assign]

    def __call__(self, *args, **kwargs) -> None:
        if self.failing:
            raise SpoolError("cannot sync the spool: Input/output error (injected)")
        self.real(*args, **kwargs)


def test_a_failed_sync_moves_no_mark_and_lets_no_restart_happen(app_db):
    path, app = app_db
    live = LiveTail(path).start()
    failing = _FailingSync(live)
    try:
        _write(app, 30)
        with pytest.raises(SpoolError):
            move_mark(live.handles, live.spooler)
        assert not live.handles._spare  # the spare gave its transaction up; R kept its mark
        with pytest.raises(SpoolError):
            finish(live.handles, live.spooler, max_tail=None)
        assert live.handles.reading
        # The application checkpoints everything it can and writes again: R's mark still
        # holds every frame, so the WAL does not restart and nothing is lost.
        app.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        _write(app, 5)
        failing.failing = False
        live.spooler._retry_at = 0
        live.spooler.copy()
        assert live.txids() == list(range(2, 37))
        _checkpoint(live)
        _write(app, 1)
        live.spooler.copy()
        assert live.txids() == list(range(2, 38))
    finally:
        live.close()


def test_the_cycle_runs_on_its_thread_and_reports_what_stopped_it(app_db):
    path, app = app_db
    live = LiveTail(path).start()
    done = threading.Event()
    cycle = Checkpointer(live.handles, live.spooler, threading.Event(), done.set)
    try:
        _write(app, 40)
        cycle.start()
        assert done.wait(30)
        assert cycle.join() is None
        assert backfill_tail(live.handles) == 0
        failing = _FailingSync(live)
        _write(app, 40)
        done.clear()
        cycle.start()
        assert done.wait(30)
        assert isinstance(cycle.join(), SpoolError)
        assert backfill_tail(live.handles) > 0
        failing.failing = False
    finally:
        live.close()
