"""handles.py against real SQLite files: the read transactions, the spare, the fence."""

from __future__ import annotations

import apsw
import pytest

from replicator.errors import SourceError
from replicator.handles import DbHandles



def test_open_holds_no_read_transaction_until_asked(app_db):
    """The caller begins R inside a fence: until then nothing of ours holds the WAL."""
    path, app = app_db
    h = DbHandles(str(path))
    h.open()
    try:
        assert not h.reading
        app.execute("INSERT INTO t(v) VALUES (x'01')")
        busy, log, done = app.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0]
        assert busy == 0 and log == 0  # no reader of ours: the application could truncate the WAL
        with h.fence():
            h.begin_read()
        assert h.reading
        app.execute("INSERT INTO t(v) VALUES (x'02')")
        with pytest.raises(apsw.BusyError):  # now R holds its mark
            app.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    finally:
        h.close()


def test_the_fence_stops_commits_and_ends_with_its_block(app_db):
    path, app = app_db
    h = DbHandles(str(path), busy_timeout_s=0.05)
    h.open()
    app.set_busy_timeout(0)
    try:
        with h.fence():
            before = h.index_header().mx_frame
            with pytest.raises(apsw.BusyError):
                app.execute("INSERT INTO t(v) VALUES (x'03')")
            assert h.index_header().mx_frame == before
        app.execute("INSERT INTO t(v) VALUES (x'04')")
        assert h.index_header().mx_frame > before
    finally:
        h.close()


def test_the_fence_times_out_behind_a_long_write_transaction(app_db):
    path, app = app_db
    h = DbHandles(str(path), busy_timeout_s=0.05)
    h.open()
    try:
        app.execute("BEGIN IMMEDIATE")
        with pytest.raises(SourceError, match="could not take the write lock"):
            with h.fence():
                pass
        app.execute("ROLLBACK")
        with h.fence():
            pass
    finally:
        h.close()


def test_promote_spare_never_leaves_the_wal_unheld(app_db):
    """R ends only after the spare began: an application TRUNCATE (which needs every reader
    gone) fails at every step."""
    path, app = app_db
    h = DbHandles(str(path))
    h.open()
    try:
        with h.fence():
            h.begin_read()
        app.execute("INSERT INTO t(v) VALUES (x'05')")
        h.begin_spare()
        with pytest.raises(apsw.BusyError):
            app.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        h.promote_spare()
        assert h.reading
        app.execute("INSERT INTO t(v) VALUES (x'06')")
        with pytest.raises(apsw.BusyError):
            app.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        h.begin_spare()
        h.end_spare()  # giving the spare up keeps R's own mark
        with pytest.raises(apsw.BusyError):
            app.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    finally:
        h.close()


def test_rejects_a_file_that_is_not_sqlite(tmp_path):
    p = tmp_path / "x.db"
    p.write_text("plain text, definitely not a database file")
    with pytest.raises(SourceError, match="not a SQLite database"):
        DbHandles(str(p)).open()


def test_a_missing_database_is_named(tmp_path):
    with pytest.raises(SourceError, match="database not found"):
        DbHandles(str(tmp_path / "absent.db")).open()


def test_replaced_notices_another_file_under_the_path(app_db, tmp_path):
    path, app = app_db
    h = DbHandles(str(path))
    h.open()
    try:
        assert not h.replaced()
        other = tmp_path / "other.db"
        other.write_bytes(path.read_bytes())
        other.replace(path)
        assert h.replaced()
    finally:
        h.close()
