"""source.py against real SQLite files: the copy loop, restarts, checkpoints, the invariant."""

from __future__ import annotations

import apsw
import pytest

from replicator.dbhash import DbChecksum
from replicator.errors import SourceError
from replicator.source import Source


def _app(path) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(100)
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB)"))
    return conn


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "app.db"
    conn = _app(path)
    yield path, conn
    conn.close()


def _started(path) -> Source:
    src = Source(str(path), busy_timeout_s=2)
    src.open()
    with src.fence():
        src.advance_read()
        src.start_position(txid=1)
    src.checksum = DbChecksum(src.page_size)  # (not the database's: these tests follow txids)
    return src


def test_copy_returns_each_commit_once_in_order(db):
    path, app = db
    src = _started(path)
    try:
        for i in range(5):
            app.execute("INSERT INTO t(v) VALUES (?)", (bytes(100),))
        copied = src.copy()
        assert copied.txids() == [2, 3, 4, 5, 6]
        assert all(size >= 2 for _, size, _ in copied.records())
        assert src.copy() == []  # nothing new: nothing copied twice
    finally:
        src.close()


def test_copy_with_a_byte_budget_stops_at_a_commit_and_says_whether_it_caught_up(db, monkeypatch):
    path, app = db
    monkeypatch.setattr("replicator.source.MAX_READ_BYTES", 1)  # one transaction per read
    src = _started(path)
    try:
        for i in range(6):
            app.execute("INSERT INTO t(v) VALUES (?)", (bytes(100),))
        pieces = []
        while True:
            pieces.append(src.copy(max_bytes=2 * (4096 + 24)).txids())
            if src.caught_up:
                break
        assert [t for p in pieces for t in p] == [2, 3, 4, 5, 6, 7]
        assert len(pieces) >= 3 and all(pieces[:-1])
        assert src.copy() == [] and src.caught_up
    finally:
        src.close()


def test_rolled_back_frames_are_never_copied(db):
    path, app = db
    src = _started(path)
    try:
        app.execute("PRAGMA cache_size=5")
        app.execute("BEGIN")
        for _ in range(200):  # spills uncommitted frames into the WAL
            app.execute("INSERT INTO t(v) VALUES (?)", (bytes(3000),))
        app.execute("ROLLBACK")
        assert src.copy() == []
        app.execute("INSERT INTO t(v) VALUES (x'01')")
        assert src.copy().txids() == [2]
    finally:
        src.close()


def test_wal_restart_after_our_checkpoint_continues_from_frame_one(db):
    path, app = db
    src = _started(path)
    shipped = []
    try:
        for _ in range(20):
            app.execute("INSERT INTO t(v) VALUES (?)", (bytes(500),))
        src.checkpoint(shipped.append)
        salts = src.pos.salts
        app.execute("INSERT INTO t(v) VALUES (x'02')")  # restarts the WAL at frame 1
        copied = src.copy()
        assert src.pos.salts != salts and src.pos.frame <= 3
        assert [t for c in shipped + [copied] for t in c.txids()] == list(range(2, 23))
    finally:
        src.close()


def test_application_checkpoints_cannot_destroy_uncopied_frames(db):
    path, app = db
    src = _started(path)
    try:
        for _ in range(50):
            app.execute("INSERT INTO t(v) VALUES (?)", (bytes(500),))
        app.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        with pytest.raises(apsw.BusyError):  # needs every reader gone: R holds its mark
            app.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        app.execute("INSERT INTO t(v) VALUES (x'03')")
        assert src.copy().txids() == list(range(2, 53))
    finally:
        src.close()


def test_advance_moves_the_mark_without_a_fence_and_loses_nothing(db):
    """The spare reader begins before R ends: application checkpoints still cannot restart
    the WAL past an uncopied frame, whether the new mark is above 0 or on 0 (design 4)."""
    path, app = db
    src = _started(path)
    try:
        for _ in range(20):
            app.execute("INSERT INTO t(v) VALUES (?)", (bytes(500),))
        assert src.advance().txids() == list(range(2, 22))
        for _ in range(20):
            app.execute("INSERT INTO t(v) VALUES (?)", (bytes(500),))
        app.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        with pytest.raises(apsw.BusyError):  # the new mark holds the WAL
            app.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        assert src.copy().txids() == list(range(22, 42))
        shipped: list = []
        src.checkpoint(shipped.append)  # everything backfilled: R is now on mark 0
        assert src.backfill_tail() == 0
        assert src.advance() == []  # the spare begins on mark 0 too
        for _ in range(5):
            app.execute("INSERT INTO t(v) VALUES (?)", (bytes(500),))
        _, backfilled = app.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        assert backfilled == 0  # a reader on mark 0 blocks every backfill, so no restart
        assert src.copy().txids() == list(range(42, 47))
    finally:
        src.close()


def test_resume_proves_the_saved_frame(db):
    path, app = db
    src = _started(path)
    app.execute("INSERT INTO t(v) VALUES (x'04')")
    src.copy()
    saved = src.pos
    src.close()
    again = Source(str(path))
    again.open()
    try:
        assert again.resume(saved)
        again.checksum = src.checksum
        app.execute("INSERT INTO t(v) VALUES (x'05')")
        assert again.copy().txids() == [saved.txid + 1]
    finally:
        again.close()


def test_resume_refuses_after_the_wal_restarted_while_down(db):
    path, app = db
    src = _started(path)
    app.execute("INSERT INTO t(v) VALUES (x'06')")
    src.copy()
    saved = src.pos
    src.close()
    app.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)  # nobody holds the WAL now
    app.execute("INSERT INTO t(v) VALUES (x'07')")
    again = Source(str(path))
    again.open()
    try:
        assert not again.resume(saved)
    finally:
        again.close()


def test_rejects_a_file_that_is_not_sqlite(tmp_path):
    p = tmp_path / "x.db"
    p.write_text("plain text, definitely not a database file")
    with pytest.raises(SourceError, match="not a SQLite database"):
        Source(str(p)).open()


def test_image_is_the_database_as_of_mxframe(db, tmp_path):
    """Pages from the WAL overlay the file; commits after R's snapshot are not in the image."""
    path, app = db
    src = _started(path)
    try:
        for i in range(30):
            app.execute("INSERT INTO t(v) VALUES (?)", (bytes([i]) * 3000,))
        with src.fence():
            src.copy()
            src.advance_read()
            hdr = src.index_header()
        app.execute("INSERT INTO t(v) VALUES (x'99')")  # after R's snapshot: not in the image
        n_pages, chunks = src.image(hdr)
        data = b"".join(chunk for _, chunk in chunks)
        assert len(data) == n_pages * src.page_size
        copy = tmp_path / "image.db"
        copy.write_bytes(data)
        conn = apsw.Connection(f"file:{copy}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("SELECT count(*) FROM t").fetchall() == [(30,)]
        finally:
            conn.close()
    finally:
        src.close()


def test_image_chunks_read_the_file_and_overlay_the_wal_across_chunk_boundaries(db, tmp_path, monkeypatch):
    """Chunks of a few pages: pages from the file, pages replaced by WAL frames, and pages
    past the file's end (only in the WAL) all land in the right place of the right chunk."""
    path, app = db
    for i in range(40):
        app.execute("INSERT INTO t(v) VALUES (?)", (bytes([i]) * 1500,))
    app.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # these pages now live in the file
    file_pages = path.stat().st_size // 4096
    src = _started(path)
    try:
        app.execute("UPDATE t SET v = ? WHERE id % 3 = 0", (b"\xee" * 1500,))  # frames over file pages
        for i in range(40):
            app.execute("INSERT INTO t(v) VALUES (?)", (bytes([100 + i]) * 2500,))  # past the file's end
        with src.fence():
            src.copy()
            src.advance_read()
            hdr = src.index_header()
        n_pages, chunks = src.image(hdr)
        whole = b"".join(chunk for _, chunk in chunks)
        assert n_pages > file_pages
        monkeypatch.setattr("replicator.source.IMAGE_CHUNK_PAGES", 3)
        n_small, small = src.image(hdr)
        parts = list(small)
        assert n_small == n_pages
        assert [first for first, _ in parts] == list(range(1, n_pages + 1, 3))
        assert all(len(chunk) == 3 * src.page_size for _, chunk in parts[:-1])
        assert b"".join(chunk for _, chunk in parts) == whole
        copy = tmp_path / "image.db"
        copy.write_bytes(whole)
        conn = apsw.Connection(f"file:{copy}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("SELECT count(*), sum(v = ?) FROM t", (b"\xee" * 1500,)).fetchall() == [(80, 13)]
            want = app.execute("SELECT group_concat(hex(v)) FROM t").fetchall()
            assert conn.execute("SELECT group_concat(hex(v)) FROM t").fetchall() == want
        finally:
            conn.close()
    finally:
        src.close()
