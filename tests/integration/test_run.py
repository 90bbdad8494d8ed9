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


def test_run_to_a_file_and_an_s3_replica(tmp_path: Path, moto_server, make_bucket) -> None:
    """The same database to a directory and to S3 (moto's server) from one config."""
    from replicator.config import ReplicaConfig

    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    conn.set_busy_timeout(2000)
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"))
    opts = make_bucket(moto_server, prefix="app")
    config = tmp_path / "replicator.yml"
    config.write_text(
        f"access-key-id: {opts.access_key_id}\nsecret-access-key: {opts.secret_access_key}\n"
        f"dbs:\n  - path: {db}\n    replicas:\n      - url: file://{tmp_path}/r1\n"
        f"      - type: s3\n        bucket: {opts.bucket}\n        path: app\n"
        f"        endpoint: {opts.endpoint}\n        region: {opts.region}\n        sync-interval: 100ms\n")
    log = tmp_path / "run.log"
    proc = start_replicator(["run", "-c", str(config)], log)
    wait_for(lambda: "replicating" in log.read_text(), 30, "the daemon to start")
    for i in range(100):
        conn.execute("INSERT INTO t(v) VALUES (?)", (f"value {i}",))
    assert stop(proc) == 0, log.read_text()[-2000:]
    assert opts.secret_access_key not in log.read_text()
    conn.close()
    s3 = ReplicaConfig(name="s3", url=f"s3://{opts.bucket}/app", type="s3", s3=opts)
    for storage in (open_storage(f"file://{tmp_path}/r1"), open_storage(s3)):
        out = tmp_path / "restored.db"
        out.unlink(missing_ok=True)
        restore(storage, out)
        assert content_hash(out) == content_hash(db)
