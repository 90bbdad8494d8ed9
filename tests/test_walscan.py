"""walscan: the C scanner and the Python reference give the same bytes and checksums, and
both agree with the model (segment records a decoder reads back, the checksum of the pages)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator import walscan
from replicator.dbhash import PAGE_HASH, DbChecksum
from replicator.segment import SegmentEncoder, decode_segment
from replicator.wal import FRAME_HEADER
from strategies import MAX_PGNO, PAGE_SIZE

SALTS = (0x1234, 0xABCD)
IMPLS = [walscan.scan_py] + ([walscan._walscan.scan] if walscan._walscan is not None else [])

frame = st.tuples(st.integers(1, MAX_PGNO), st.integers(0, 255), st.booleans(), st.integers(1, MAX_PGNO))


def _wal(frames, salts=SALTS) -> bytes:
    """Frames (pgno, fill byte, is_commit, db_size) as WAL bytes; checksums are the index."""
    out = bytearray()
    for i, (pgno, fill, commit, size) in enumerate(frames):
        out += FRAME_HEADER.pack(pgno, size if commit else 0, *salts, i, i + 1)
        out += bytes([fill]) * PAGE_SIZE
    return bytes(out)


def _scan(impl, data, n, checksum, txid=10):
    return impl(data, n, PAGE_SIZE, *SALTS, txid, checksum, PAGE_HASH, 777)


def test_the_c_scanner_was_built():
    """CI has a compiler: a silent fallback to the slow path there would go unnoticed."""
    assert walscan._walscan is not None


@settings(max_examples=300, deadline=None)
@given(st.lists(frame, max_size=40), st.integers(0, MAX_PGNO))
def test_c_and_python_agree_byte_for_byte(frames, start_pages):
    data = _wal(frames)
    results, states = [], []
    for impl in IMPLS:
        ck = DbChecksum(PAGE_SIZE)
        ck.resize(start_pages)
        results.append(_scan(impl, data, len(frames), ck))
        states.append((ck.value, list(ck.hashes)))
    assert all(r == results[0] for r in results[1:])
    assert all(s == states[0] for s in states[1:])


@settings(max_examples=200, deadline=None)
@given(st.lists(frame, min_size=1, max_size=40))
def test_records_are_the_last_page_of_each_write_and_the_checksum_is_the_databases(frames):
    frames[-1] = frames[-1][:2] + (True, frames[-1][3])
    data = _wal(frames)
    ck = DbChecksum(PAGE_SIZE)
    consumed, frame_ck, s = walscan.scan(data, len(frames), PAGE_SIZE, SALTS, 10, ck, 777)
    assert consumed == len(frames) and frame_ck == (len(frames) - 1, len(frames))
    # The model: apply each transaction's pages to a dict-of-pages database.
    db: dict[int, bytes] = {}
    pending: dict[int, bytes] = {}
    expected = []
    for pgno, fill, commit, size in frames:
        pending[pgno] = bytes([fill]) * PAGE_SIZE
        if commit:
            db.update(pending)
            db = {p: v for p, v in db.items() if p <= size}
            value = 0
            for p in range(1, size + 1):
                value ^= PAGE_HASH(db.get(p, bytes(PAGE_SIZE)), seed=p)
            expected.append((size, value, {p: v for p, v in sorted(pending.items()) if p <= size}))
            pending = {}
    assert [(size, value) for size, value, _ in expected] == list(zip(s.sizes, s.checksums))
    got = list(s.records())
    assert [t for t, _, _ in got] == list(range(11, 11 + len(expected)))
    assert [{p: bytes(v) for p, v in pages.items()} for _, _, pages in got] == [e[2] for e in expected]
    assert ck.value == expected[-1][1]
    # The records are a segment body a restore decodes.
    seg = SegmentEncoder().encode_body("g", PAGE_SIZE, s.body, s.first_txid, s.last_txid, 777, 777,
                                       s.sizes[-1], s.checksums[-1])
    _, txs = decode_segment(seg)
    assert [(t.txid, t.db_size, t.db_checksum) for t in txs] == [
        (11 + i, size, value) for i, (size, value, _) in enumerate(expected)]


@pytest.mark.parametrize("impl", IMPLS)
def test_frames_after_the_last_commit_are_left_for_the_next_read(impl):
    data = _wal([(1, 1, True, 1), (2, 2, False, 0), (3, 3, False, 0)])
    ck = DbChecksum(PAGE_SIZE)
    r = _scan(impl, data, 3, ck)
    assert r[:4] == (-1, 1, 0, 1) and len(r[5]) == 8  # one transaction, one frame consumed


@pytest.mark.parametrize("impl", IMPLS)
def test_a_frame_of_another_wal_is_reported_before_anything_changes(impl):
    data = _wal([(1, 1, True, 1)]) + _wal([(2, 2, True, 2)], salts=(9, 9))
    ck = DbChecksum(PAGE_SIZE)
    assert _scan(impl, data, 2, ck)[0] == 1
    assert ck.n_pages == 0 and ck.value == 0
    with pytest.raises(walscan.BadSalts):
        walscan.scan(data, 2, PAGE_SIZE, SALTS, 10, ck, 777)
