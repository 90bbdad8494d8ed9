"""verify.py against real databases and replicas the real replicator wrote: row counts, the
live checksum as the replica records it, waiting for the replicator to ship the live state
(a real `replicate` process), the comparison and the drill's record."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import apsw
import pytest

from replicator import layout
from replicator.config import DbConfig, ReplicaConfig
from replicator.replication import DbReplicator
from replicator.segment import decode_segment
from replicator.storage import open_storage
from replicator.verify import (VerifyError, compare, file_row_counts, find_txid, read_live, record, verify,
                               write_record)

EXE = Path(sys.executable).parent / "replicator"


def make_db(path: Path) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(5000)
    list(conn.execute('PRAGMA journal_mode=wal; CREATE TABLE t(x); CREATE TABLE "odd ""name"""(y)'))
    return conn


def insert(conn: apsw.Connection, n: int, table: str = "t") -> None:
    with conn:
        for i in range(n):
            conn.execute(f"INSERT INTO {table} VALUES (?)", (f"row {i} " * 40,))


def replicate_steps(db: Path, replica: Path, conn: apsw.Connection, batches: int) -> None:
    """The real replicator, in process, one copy step per batch of writes (then stopped)."""
    rep = DbReplicator(DbConfig(path=str(db), replicas=(
        ReplicaConfig(name="file", url=f"file://{replica}", type="file", path=str(replica)),)))
    try:
        rep.open()
        for _ in range(batches):
            insert(conn, 5)
            rep.step()
    finally:
        rep.stop()
        assert rep.join()


def newest_recorded_checksum(replica: Path) -> tuple[int, int]:
    storage = open_storage(f"file://{replica}")
    seg = layout.parse_listing(storage.list(layout.GENERATIONS)).generations[-1].segments[-1]
    tx = decode_segment(storage.get(seg.key), seg.key)[1][-1]
    return tx.txid, tx.db_checksum


def test_row_counts_per_table(tmp_path):
    conn = make_db(tmp_path / "a.db")
    insert(conn, 3)
    insert(conn, 2, '"odd ""name"""')
    try:
        list(conn.execute("CREATE VIRTUAL TABLE docs USING fts5(body)"))
        virtual = True
    except apsw.SQLError:
        virtual = False  # no fts5 in this SQLite: the plain tables still count
    conn.close()
    counts = file_row_counts(tmp_path / "a.db")
    assert counts["t"] == 3 and counts['odd "name"'] == 2
    if virtual:
        assert "docs" not in counts and "docs_data" in counts  # shadow tables are ordinary


def test_the_live_checksum_is_the_one_the_replica_records(tmp_path):
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    conn = make_db(db)
    replicate_steps(db, replica, conn, 3)
    txid, recorded = newest_recorded_checksum(replica)
    live = read_live(str(db))
    assert live.checksum == recorded and live.counts == {"t": 15, 'odd "name"': 0}
    assert os.path.exists(f"{db}-wal")  # reading never checkpointed the live WAL away
    assert find_txid(open_storage(f"file://{replica}"), live.checksum, live.read_at_ns, time.monotonic()) == txid
    result = verify(open_storage(f"file://{replica}"), f"file://{replica}", against=str(db), timeout_s=5)
    assert result.ok and result.txid == txid and result.counts == result.live_counts == live.counts
    assert result.checksum == recorded
    conn.close()


def test_against_waits_for_the_replicator_to_ship_the_live_state(tmp_path):
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    conn = make_db(db)
    replicate_steps(db, replica, conn, 2)
    insert(conn, 7)  # committed while no replicator runs: the replica does not have it yet
    storage = open_storage(f"file://{replica}")
    with pytest.raises(VerifyError, match="holds no transaction with the live database's checksum"):
        verify(storage, "r", against=str(db), timeout_s=0.3)

    outcome: dict = {}
    waiter = threading.Thread(target=lambda: outcome.update(
        result=verify(storage, "r", against=str(db), timeout_s=60)))
    waiter.start()
    proc = subprocess.Popen([str(EXE), "replicate", str(db), f"file://{replica}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        waiter.join(90)
        assert not waiter.is_alive()
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
    result = outcome["result"]
    assert result.ok and result.counts["t"] == 17 and result.live_counts["t"] == 17
    conn.close()


def test_the_scan_stops_at_objects_older_than_the_live_read(tmp_path):
    """Nothing observed before the live read began can be newer than the live state, so a
    miss reads one object, not the whole history."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    conn = make_db(db)
    for _ in range(3):  # each run ships its own segment (within a run pending ones merge)
        replicate_steps(db, replica, conn, 1)
    conn.close()
    storage = open_storage(f"file://{replica}")
    assert len(list(storage.list(layout.GENERATIONS))) > 2
    seen: dict = {}
    assert find_txid(storage, 12345, time.time_ns() + 10 * 10**9, time.monotonic(), seen) is None
    assert len(seen) == 1
    seen.clear()  # a read that began long ago: everything is a candidate
    assert find_txid(storage, 12345, 0, time.monotonic(), seen) is None
    assert len(seen) == len(list(storage.list(layout.GENERATIONS)))


def test_compare_lists_each_difference():
    assert compare(1, {"a": 2}, 1, {"a": 2}) == []
    diffs = compare(1, {"a": 2, "b": 1}, 2, {"a": 3, "c": 4})
    assert diffs == ["checksum 0000000000000001 != live 0000000000000002",
                     "table a: 2 rows restored, 3 live",
                     "table b: not in the live database (1 rows restored)",
                     "table c: not in the restored copy (4 rows live)"]


def test_a_missing_live_database_is_one_error(tmp_path):
    with pytest.raises(VerifyError, match="database not found"):
        read_live(str(tmp_path / "nope.db"))


def test_the_record_is_written_whole_with_exactly_its_fields(tmp_path):
    db = tmp_path / "app.db"
    db.write_bytes(b"")
    os.chmod(db, 0o600)
    path = write_record(str(db), record(False, "s3", None, "boom", now_ms=lambda: 42))
    assert path == tmp_path / "app.db-replicator" / "verify.json"
    assert json.loads(path.read_text()) == {"time_ms": 42, "ok": False, "txid": None, "replica": "s3",
                                            "error": "boom"}
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700  # the spool's mode, from the database's
    write_record(str(db), record(True, "s3", 7, None))
    assert json.loads(path.read_text())["ok"] is True
    assert [p.name for p in path.parent.iterdir()] == ["verify.json"]  # no temporary left
