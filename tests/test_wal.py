"""wal.py against real WAL and wal-index files written by SQLite (through apsw)."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import apsw
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from replicator import wal

NATIVE = "<" if sys.byteorder == "little" else ">"


class LiveWal:
    """A database in WAL mode with autocheckpoint off; the connection stays open so the
    -wal and -shm files stay as SQLite left them."""

    def __init__(self, path: Path, page_size: int = 512):
        self.path = path
        self.page_size = page_size
        self.conn = apsw.Connection(str(path))
        list(self.conn.execute(f"pragma page_size={page_size}; pragma journal_mode=wal; "
                               "pragma wal_autocheckpoint=0; create table t(x)"))
        self.commits = 1  # create table

    def insert(self, n: int, size: int = 300) -> None:
        for _ in range(n):
            with self.conn:
                self.conn.execute("insert into t values (?)", (os.urandom(size),))
            self.commits += 1

    def wal_bytes(self) -> bytes:
        return Path(str(self.path) + "-wal").read_bytes()

    def shm_bytes(self) -> bytes:
        return Path(str(self.path) + "-shm").read_bytes()[: wal.SHM_HEADER_SIZE]

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def live(tmp_path):
    db = LiveWal(tmp_path / "t.db")
    db.insert(5)
    yield db
    db.close()


def frames(data: bytes, page_size: int, n: int):
    for i in range(1, n + 1):
        off = wal.frame_offset(i, page_size)
        yield i, data[off: off + wal.FRAME_HEADER_SIZE + page_size]


def test_wal_header_of_a_real_wal(live):
    hdr = wal.parse_wal_header(live.wal_bytes())
    assert hdr is not None
    assert hdr.magic in (wal.WAL_MAGIC_LE, wal.WAL_MAGIC_BE)
    assert hdr.version == 3007000
    assert hdr.page_size == 512
    assert hdr.checkpoint_seq == 0


def test_shm_header_agrees_with_the_wal(live):
    data = live.wal_bytes()
    hdr = wal.parse_wal_header(data)
    idx = wal.parse_shm_header(live.shm_bytes())
    assert idx.is_init == 1
    assert (idx.salt1, idx.salt2) == (hdr.salt1, hdr.salt2)
    assert idx.page_size == 512
    assert idx.mx_frame == (len(data) - wal.WAL_HEADER_SIZE) // (wal.FRAME_HEADER_SIZE + 512)
    assert idx.n_page == live.conn.execute("pragma page_count").fetchall()[0][0]
    # The last committed frame says the same database size.
    last = wal.parse_frame_header(data, wal.frame_offset(idx.mx_frame, 512))
    assert last.commit_size == idx.n_page


def test_frame_checksums_chain_from_the_wal_header(live):
    data = live.wal_bytes()
    hdr = wal.parse_wal_header(data)
    idx = wal.parse_shm_header(live.shm_bytes())
    seed = (hdr.cksum1, hdr.cksum2)
    commits = 0
    for i, frame in frames(data, 512, idx.mx_frame):
        fh = wal.parse_frame_header(frame)
        assert (fh.salt1, fh.salt2) == (hdr.salt1, hdr.salt2), f"frame {i}"
        seed = wal.frame_checksum(frame, hdr.big_endian_checksums, seed)
        assert seed == (fh.cksum1, fh.cksum2), f"frame {i}"
        commits += bool(fh.commit_size)
    assert commits == live.commits
    assert seed == idx.frame_cksum  # the wal-index records the checksum of frame mxFrame


def test_a_changed_page_breaks_the_chain(live):
    data = bytearray(live.wal_bytes())
    hdr = wal.parse_wal_header(data)
    off = wal.frame_offset(2, 512) + wal.FRAME_HEADER_SIZE + 100
    data[off] ^= 0x01
    seed = (hdr.cksum1, hdr.cksum2)
    (_, f1), (_, f2) = list(frames(bytes(data), 512, 2))
    seed = wal.frame_checksum(f1, hdr.big_endian_checksums, seed)
    assert seed == (wal.parse_frame_header(f1).cksum1, wal.parse_frame_header(f1).cksum2)
    fh2 = wal.parse_frame_header(f2)
    assert wal.frame_checksum(f2, hdr.big_endian_checksums, seed) != (fh2.cksum1, fh2.cksum2)


def test_wal_restart_new_salts_and_stale_frames_past_mx_frame(tmp_path):
    db = LiveWal(tmp_path / "t.db")
    try:
        db.insert(6)
        before = wal.parse_wal_header(db.wal_bytes())
        old_mx = wal.parse_shm_header(db.shm_bytes()).mx_frame
        db.conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        db.insert(1, size=10)  # everything backfilled, no readers: this write restarts the WAL
        data = db.wal_bytes()
        after = wal.parse_wal_header(data)
        idx = wal.parse_shm_header(db.shm_bytes())
        assert after.checkpoint_seq == before.checkpoint_seq + 1
        assert after.salt1 == (before.salt1 + 1) & 0xFFFFFFFF
        assert (idx.salt1, idx.salt2) == (after.salt1, after.salt2)
        assert 0 < idx.mx_frame < old_mx
        # The old frames are still in the file past mxFrame, valid-looking but another WAL's.
        stale = wal.parse_frame_header(data, wal.frame_offset(idx.mx_frame + 1, 512))
        assert (stale.salt1, stale.salt2) == (before.salt1, before.salt2)
    finally:
        db.close()


def test_64k_pages_are_encoded_in_the_wal_index(tmp_path):
    db = LiveWal(tmp_path / "big.db", page_size=65536)
    try:
        db.insert(1)
        raw = db.shm_bytes()
        (sz_page,) = struct.unpack_from(NATIVE + "H", raw, 14)
        assert sz_page == 1  # 65536 does not fit in u16: SQLite stores it as 1
        idx = wal.parse_shm_header(raw)
        assert idx.page_size == 65536
        hdr = wal.parse_wal_header(db.wal_bytes())
        assert hdr.page_size == 65536
        data = db.wal_bytes()
        assert idx.mx_frame == (len(data) - wal.WAL_HEADER_SIZE) // (wal.FRAME_HEADER_SIZE + 65536)
        seed = (hdr.cksum1, hdr.cksum2)
        for _, frame in frames(data, 65536, idx.mx_frame):
            seed = wal.frame_checksum(frame, hdr.big_endian_checksums, seed)
        assert seed == idx.frame_cksum
    finally:
        db.close()


# -- torn or invalid wal-index headers ---------------------------------------------------


def _rechecksum(copy: bytearray) -> None:
    """Recompute the checksum of one 48-byte header copy (what a writer does)."""
    ck = wal.wal_checksum(bytes(copy[:40]), sys.byteorder == "big", native=True)
    struct.pack_into(NATIVE + "II", copy, 40, *ck)


def _both(raw: bytes, edit) -> bytes:
    first = bytearray(raw[:48])
    edit(first)
    return bytes(first) + bytes(first) + raw[96:]


def test_torn_read_when_the_copies_differ(live):
    raw = bytearray(live.shm_bytes())
    wal.parse_shm_header(bytes(raw))  # sane to start with
    raw[48 + 16] ^= 0x01  # mxFrame of the second copy
    with pytest.raises(wal.TornRead, match="differ"):
        wal.parse_shm_header(bytes(raw))


def test_torn_read_when_not_initialised(live):
    raw = _both(live.shm_bytes(), lambda c: c.__setitem__(12, 0))
    with pytest.raises(wal.TornRead, match="not initialised"):
        wal.parse_shm_header(raw)


def test_torn_read_on_a_bad_checksum(live):
    raw = _both(live.shm_bytes(), lambda c: struct.pack_into(NATIVE + "I", c, 16, 999))
    with pytest.raises(wal.TornRead, match="checksum"):
        wal.parse_shm_header(raw)


def test_a_consistent_rewrite_is_accepted(live):
    def edit(c: bytearray) -> None:
        struct.pack_into(NATIVE + "I", c, 16, 999)
        _rechecksum(c)

    assert wal.parse_shm_header(_both(live.shm_bytes(), edit)).mx_frame == 999


def test_torn_read_on_a_short_wal_index(live):
    with pytest.raises(wal.TornRead):
        wal.parse_shm_header(live.shm_bytes()[: wal.SHM_HEADER_SIZE - 1])
    with pytest.raises(wal.TornRead):
        wal.parse_shm_header(b"")


# -- WAL header validation ---------------------------------------------------------------


def test_wal_header_none_for_short_or_empty():
    assert wal.parse_wal_header(b"") is None
    assert wal.parse_wal_header(bytes(31)) is None
    assert wal.parse_wal_header(bytes(32)) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=64))
def test_wal_header_none_for_garbage(data):
    assume(len(data) < 4 or struct.unpack(">I", data[:4])[0] not in (wal.WAL_MAGIC_LE, wal.WAL_MAGIC_BE))
    assert wal.parse_wal_header(data) is None


def test_wal_header_none_after_any_bit_flip(live):
    good = live.wal_bytes()[: wal.WAL_HEADER_SIZE]
    assert wal.parse_wal_header(good) is not None
    for bit in range(wal.WAL_HEADER_SIZE * 8):
        bad = bytearray(good)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert wal.parse_wal_header(bytes(bad)) is None, f"bit {bit}"


def test_big_endian_checksummed_header():
    fields = struct.pack(">6I", wal.WAL_MAGIC_BE, 3007000, 4096, 7, 0x01020304, 0x0A0B0C0D)
    ck = wal.wal_checksum(fields, big_endian=True)
    hdr = wal.parse_wal_header(fields + struct.pack(">2I", *ck))
    assert hdr is not None and hdr.big_endian_checksums
    assert (hdr.page_size, hdr.checkpoint_seq, hdr.salt1, hdr.salt2) == (4096, 7, 0x01020304, 0x0A0B0C0D)
    # The same fields checksummed little-endian do not verify under the big-endian magic.
    ck_le = wal.wal_checksum(fields, big_endian=False)
    assert ck_le != ck
    assert wal.parse_wal_header(fields + struct.pack(">2I", *ck_le)) is None


def test_wal_checksum_needs_whole_word_pairs():
    with pytest.raises(ValueError):
        wal.wal_checksum(bytes(12), big_endian=False)


def test_frame_offset():
    assert wal.frame_offset(1, 4096) == 32
    assert wal.frame_offset(3, 512) == 32 + 2 * (24 + 512)
