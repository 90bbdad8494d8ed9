"""image.py against real SQLite: R's view, page for page, from the WAL and the file."""

from __future__ import annotations

import apsw
import pytest

from replicator.checkpointer import move_mark
from replicator.dbhash import DbChecksum
from replicator.image import image_matches, read_image

from livedb import LiveTail


def _open_image(tmp_path, data: bytes) -> apsw.Connection:
    copy = tmp_path / "image.db"
    copy.write_bytes(data)
    return apsw.Connection(f"file:{copy}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)


@pytest.fixture
def thirty_rows(app_db):
    """A tail on the application's database after 30 rows of ~3000 bytes, and the header
    of R's view after a fenced mark move: (app, live, hdr)."""
    path, app = app_db
    live = LiveTail(path).start()
    try:
        for i in range(30):
            app.execute("INSERT INTO t(v) VALUES (?)", (bytes([i]) * 3000,))
        hdr, _, _ = move_mark(live.handles, live.spooler, fenced=True)
        yield app, live, hdr
    finally:
        live.close()


def test_image_is_the_database_as_of_mxframe(thirty_rows, tmp_path):
    """Pages from the WAL overlay the file; commits after R's snapshot are not in the image."""
    app, live, hdr = thirty_rows
    app.execute("INSERT INTO t(v) VALUES (x'99')")  # after R's snapshot: not in the image
    n_pages, chunks = read_image(live.handles, hdr)
    data = b"".join(chunk for _, chunk in chunks)
    assert len(data) == n_pages * live.handles.page_size
    conn = _open_image(tmp_path, data)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*) FROM t").fetchall() == [(30,)]
    finally:
        conn.close()


def test_image_chunks_read_the_file_and_overlay_the_wal_across_chunk_boundaries(app_db, tmp_path, monkeypatch):
    """Chunks of a few pages: pages from the file, pages replaced by WAL frames, and pages
    past the file's end (only in the WAL) all land in the right place of the right chunk."""
    path, app = app_db
    for i in range(40):
        app.execute("INSERT INTO t(v) VALUES (?)", (bytes([i]) * 1500,))
    app.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # these pages now live in the file
    file_pages = path.stat().st_size // 4096
    live = LiveTail(path).start()
    try:
        app.execute("UPDATE t SET v = ? WHERE id % 3 = 0", (b"\xee" * 1500,))  # frames over file pages
        for i in range(40):
            app.execute("INSERT INTO t(v) VALUES (?)", (bytes([100 + i]) * 2500,))  # past the file's end
        hdr, _, _ = move_mark(live.handles, live.spooler, fenced=True)
        n_pages, chunks = read_image(live.handles, hdr)
        whole = b"".join(chunk for _, chunk in chunks)
        assert n_pages > file_pages
        monkeypatch.setattr("replicator.image.IMAGE_CHUNK_PAGES", 3)
        n_small, small = read_image(live.handles, hdr)
        parts = list(small)
        assert n_small == n_pages
        assert [first for first, _ in parts] == list(range(1, n_pages + 1, 3))
        assert all(len(chunk) == 3 * live.handles.page_size for _, chunk in parts[:-1])
        assert b"".join(chunk for _, chunk in parts) == whole
        conn = _open_image(tmp_path, whole)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("SELECT count(*), sum(v = ?) FROM t", (b"\xee" * 1500,)).fetchall() == [(80, 13)]
            want = app.execute("SELECT group_concat(hex(v)) FROM t").fetchall()
            assert conn.execute("SELECT group_concat(hex(v)) FROM t").fetchall() == want
        finally:
            conn.close()
    finally:
        live.close()


def _checksum_of_view(live, hdr) -> DbChecksum:
    checksum = DbChecksum(live.handles.page_size)
    for _, chunk in read_image(live.handles, hdr)[1]:
        checksum.append_pages(chunk)
    return checksum


def test_image_matches_only_the_database_it_describes(thirty_rows):
    app, live, hdr = thirty_rows
    saved = _checksum_of_view(live, hdr)
    assert image_matches(live.handles, hdr, saved)
    app.execute("UPDATE t SET v = x'00' WHERE id = 30")  # one page changes, the count stays
    hdr, _, _ = move_mark(live.handles, live.spooler, fenced=True)
    assert not image_matches(live.handles, hdr, saved)
    for _ in range(4):
        app.execute("INSERT INTO t(v) VALUES (?)", (b"x" * 3000,))
    hdr, _, _ = move_mark(live.handles, live.spooler, fenced=True)
    grown = _checksum_of_view(live, hdr)
    assert grown.n_pages > saved.n_pages
    assert not image_matches(live.handles, hdr, saved)  # another page count
    assert image_matches(live.handles, hdr, grown)
