"""daemon.py: every database supervised alone; one that fails never stops another."""

from __future__ import annotations

import logging

import apsw

from replicator import layout
from replicator.config import Config, DbConfig, ReplicaConfig
from replicator.daemon import Daemon
from replicator.demo import content_hash
from replicator.plan import Target
from replicator.restore import restore
from replicator.storage import open_storage

from integration.harness import wait_for


def _db(path):
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(2000)
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)"))
    return conn


def _cfg(db, replica) -> DbConfig:
    return DbConfig(path=str(db), replicas=(ReplicaConfig(name="file", url=f"file://{replica}", type="file",
                                                          path=str(replica)),), monitor_interval_s=0.05)


def _restored(replica, out):
    out.unlink(missing_ok=True)
    restore(open_storage(f"file://{replica}"), out, Target())
    return content_hash(out)


def test_a_failing_database_is_retried_alone_and_the_others_go_on(tmp_path, monkeypatch, caplog):
    """A bug in one database's worker (here: an exception from its step) is logged with its
    traceback, that database is closed and taken up again after a backoff (resuming its
    generation), and the other database never notices."""
    monkeypatch.setattr("replicator.replication.RESTART_DELAY_S", (0.05, 0.2))
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    conns = [_db(a), _db(b)]
    daemon = Daemon(Config(dbs=(_cfg(a, tmp_path / "ra"), _cfg(b, tmp_path / "rb"))))
    rep_a, rep_b = daemon.replicators
    real_step, failures = rep_a.step, []

    def step():
        if len(failures) < 3:
            failures.append(1)
            raise RuntimeError("a bug in the worker")
        real_step()

    monkeypatch.setattr(rep_a, "step", step)
    with caplog.at_level(logging.INFO):
        daemon.start()
        try:
            wait_for(lambda: f"replicating {b} to " in caplog.text, 30, "b to start", interval=0.02)
            for i in range(20):
                for c in conns:
                    c.execute("INSERT INTO t(v) VALUES (?)", (b"x" * 100 * (i + 1),))
            wait_for(lambda: len(failures) >= 3, 30, "the injected failures", interval=0.02)
            wait_for(lambda: rep_b.shippers[0].shipped_txid >= 21, 30, "b to keep replicating", interval=0.02)
            wait_for(lambda: rep_a.shippers[0].shipped_txid >= rep_a.tail.pos.txid > 1, 30, "a to replicate again", interval=0.02)
        finally:
            assert daemon.shutdown()
    assert "a bug in the worker" in caplog.text and "Traceback" in caplog.text
    assert caplog.text.count("resuming generation") >= 3  # a's failures did not start new histories
    for db, replica in ((a, tmp_path / "ra"), (b, tmp_path / "rb")):
        assert _restored(replica, tmp_path / "o.db") == content_hash(db)
        gens = layout.parse_listing(open_storage(f"file://{replica}").list(layout.GENERATIONS)).generations
        assert len(gens) == 1
    for c in conns:
        c.close()


def test_a_database_that_cannot_be_opened_yet_starts_once_it_can(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("replicator.replication.RESTART_DELAY_S", (0.05, 0.2))
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    a.write_text("not a database yet")
    conn_b = _db(b)
    daemon = Daemon(Config(dbs=(_cfg(a, tmp_path / "ra"), _cfg(b, tmp_path / "rb"))))
    with caplog.at_level(logging.INFO):
        daemon.start()
        try:
            wait_for(lambda: f"replicating {b} to " in caplog.text, 30, "b to start", interval=0.02)
            conn_b.execute("INSERT INTO t(v) VALUES (x'01')")
            wait_for(lambda: "not a SQLite database" in caplog.text, 30, "a's failure to be reported", interval=0.02)
            wait_for(lambda: daemon.replicators[1].shippers[0].shipped_txid >= 2, 30, "b to replicate", interval=0.02)
            a.unlink()
            conn_a = _db(a)
            conn_a.execute("INSERT INTO t(v) VALUES (x'02')")
            wait_for(lambda: f"replicating {a} to " in caplog.text, 30, "a to start", interval=0.02)
        finally:
            assert daemon.shutdown()
    assert caplog.text.count("not a SQLite database") < 5  # logged once a minute, not per attempt
    assert _restored(tmp_path / "ra", tmp_path / "o.db") == content_hash(a)
    assert _restored(tmp_path / "rb", tmp_path / "o.db") == content_hash(b)
    conn_a.close()
    conn_b.close()
