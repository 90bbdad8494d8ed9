"""restore.py on hand-built replicas in memory: page selection, holes, proof, refusals."""

from __future__ import annotations

import io

import pytest

from replicator import layout
from replicator.dbhash import DbChecksum
from replicator.errors import CorruptObject, OutputExists
from replicator.plan import Target
from replicator.restore import _Output
from replicator.segment import SegmentEncoder, SnapshotWriter, Transaction
from replicator.storage.memory import MemoryStorage

PS = 512
GEN = "20261126T000000000Z-abcdef"


def page(tag: int) -> bytes:
    return bytes([tag]) * PS


def build(history: list[tuple[int, list[tuple[int, bytes]]]], corrupt_checksum: bool = False):
    """A replica: a 4-page snapshot at txid 1, then one segment per (db_size, pages) entry."""
    storage = MemoryStorage()
    ck = DbChecksum(PS)
    buf = io.BytesIO()
    w = SnapshotWriter(buf, GEN, PS, 1, 1_000_000, 4)
    w.write_pages(b"".join(page(10 + i) for i in range(4)))
    w.finish()
    for i in range(4):
        ck.update(i + 1, page(10 + i))
    storage.put(layout.snapshot_key(GEN, 1, 1_000_000), buf.getvalue())
    enc = SegmentEncoder()
    states = {1: b"".join(page(10 + i) for i in range(4))}
    image = bytearray(states[1])
    for n, (db_size, pages) in enumerate(history, start=2):
        for pgno, data in pages:
            ck.update(pgno, data)
            if len(image) < pgno * PS:
                image.extend(bytes(pgno * PS - len(image)))
            image[(pgno - 1) * PS:pgno * PS] = data
        ck.resize(db_size)
        del image[db_size * PS:]
        image.extend(bytes(db_size * PS - len(image)))
        states[n] = bytes(image)
        value = ck.value ^ (1 if corrupt_checksum else 0)
        tx = Transaction(n, n * 1_000_000, db_size, value, sorted(pages))
        storage.put(layout.segment_key(GEN, n, n, n * 1_000_000, n * 1_000_000), enc.encode(GEN, PS, [tx]))
    return storage, states


def restore_to(storage, tmp_path, txid=None):
    from replicator.restore import restore

    out = tmp_path / f"out-{txid}.db"
    restore(storage, out, Target(txid=txid), verify=False)
    return out.read_bytes()


def test_each_txid_restores_its_exact_image(tmp_path):
    storage, states = build([(4, [(2, page(1))]), (5, [(5, page(2)), (2, page(3))]), (5, [(1, page(4))])])
    for txid, image in states.items():
        assert restore_to(storage, tmp_path, txid) == image


def test_pages_past_a_shrink_are_zeros_when_the_file_regrows(tmp_path):
    storage, states = build([(2, [(1, page(1))]), (4, [(4, page(2))])])
    image = restore_to(storage, tmp_path, 3)
    assert image == states[3]
    assert image[2 * PS:3 * PS] == bytes(PS)  # page 3: dropped by the shrink, never rewritten


def test_a_wrong_recorded_checksum_is_refused(tmp_path):
    storage, _ = build([(4, [(2, page(1))])], corrupt_checksum=True)
    with pytest.raises(CorruptObject, match="checksum"):
        restore_to(storage, tmp_path, 2)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_existing_output_is_not_overwritten(tmp_path):
    from replicator.restore import restore

    storage, _ = build([(4, [(2, page(1))])])
    out = tmp_path / "out.db"
    out.write_bytes(b"keep")
    with pytest.raises(OutputExists):
        restore(storage, out)
    assert out.read_bytes() == b"keep"


def test_output_hashes_what_it_writes(tmp_path):
    fd_path = tmp_path / "x"
    import os

    fd = os.open(fd_path, os.O_RDWR | os.O_CREAT)
    try:
        out = _Output(fd)
        out.write(1, page(7) + page(8), PS)
        expected = DbChecksum(PS)
        expected.update(1, page(7))
        expected.update(2, page(8))
        expected.resize(3)
        assert out.checksum ^ out.holes_checksum(3, PS, "k") == expected.value
    finally:
        os.close(fd)


def test_a_restored_file_is_owner_only_unless_it_replaces_one(tmp_path):
    """A new restore is 0600 (it holds a whole database); one that replaces a file keeps that
    file's mode; no temp file is left either way."""
    import os
    import stat

    from replicator.restore import restore

    storage, _ = build([(4, [(1, page(1))])])
    fresh = tmp_path / "fresh.db"
    restore(storage, fresh, verify=False)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o600
    shared = tmp_path / "shared.db"
    shared.write_bytes(b"old")
    os.chmod(shared, 0o640)
    restore(storage, shared, force=True, verify=False)
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.db", "shared.db"]
