"""`replicator run -c CONFIG`: every database to each of its replicas; SIGINT/SIGTERM stop cleanly."""

from __future__ import annotations

import signal
from pathlib import Path

import apsw
import pytest

from replicator.demo import content_hash
from replicator.restore import restore
from replicator.storage import open_storage

from .harness import start_replicator, stop, wait_for


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_replicates_each_db_to_each_replica(tmp_path: Path, sig: int) -> None:
    dbs = [tmp_path / "a.db", tmp_path / "b.db"]
    conns = []
    for db in dbs:
        c = apsw.Connection(str(db))
        c.set_busy_timeout(2000)
        list(c.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"))
        conns.append(c)
    config = tmp_path / "replicator.yml"
    config.write_text("dbs:\n" + "".join(
        f"  - path: {db}\n    replicas:\n      - url: file://{tmp_path}/r1-{db.stem}\n"
        f"      - name: second\n        type: file\n        path: {tmp_path}/r2-{db.stem}\n        sync-interval: 50ms\n"
        for db in dbs))
    log = tmp_path / "run.log"
    proc = start_replicator(["run", "-c", str(config)], log)
    wait_for(lambda: "replicating" in log.read_text(), 30, "the daemon to start")
    for c in conns:
        for i in range(50):
            c.execute("INSERT INTO t(v) VALUES (?)", (f"value {i}",))
    assert stop(proc, sig) == 0, log.read_text()[-2000:]
    assert "stopped cleanly" in log.read_text()
    for c in conns:
        c.close()
    for db in dbs:
        for replica in (tmp_path / f"r1-{db.stem}", tmp_path / f"r2-{db.stem}"):
            out = tmp_path / f"restored-{replica.name}.db"
            restore(open_storage(f"file://{replica}"), out)
            assert content_hash(out) == content_hash(db)
