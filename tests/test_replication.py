"""replication.py in-process: generations, resume, snapshots, the snapshot request path."""

from __future__ import annotations

import os
import shutil
import threading
import time

import apsw
import pytest

from replicator import layout
from replicator.config import DbConfig, ReplicaConfig
from replicator.errors import SourceError
from replicator.checkpointer import backfill_tail
from replicator.policy import HISTORY_SNAPSHOT_FORCE
from replicator.replication import DbReplicator
from replicator.tail import ContinuityLost
from replicator.demo import content_hash
from replicator.plan import Target
from replicator.restore import restore
from replicator.daemon_ops import take_snapshot
from replicator.storage import Transient, open_storage
from replicator.storage.file import FileStorage

from integration.harness import wait_for


def _file_replica(path) -> ReplicaConfig:
    return ReplicaConfig(name="file", url=f"file://{path}", type="file", path=str(path))


def _cfg(db, replica: ReplicaConfig) -> DbConfig:
    return DbConfig(path=str(db), replicas=(replica,), monitor_interval_s=0.05)


def _write(conn, n, start=0):
    for i in range(start, start + n):
        conn.execute("INSERT INTO t(v) VALUES (?)", (f"row {i}".encode() * 20,))


@pytest.fixture(params=["file", "s3"])
def env(request, tmp_path):
    """Every test here runs against a directory replica and an S3 replica (moto's server)."""
    db = tmp_path / "app.db"
    if request.param == "file":
        replica = _file_replica(tmp_path / "replica")
    else:
        server = request.getfixturevalue("moto_server")
        opts = request.getfixturevalue("make_bucket")(server)
        replica = ReplicaConfig(name="s3", url=f"s3://{opts.bucket}/{opts.prefix}", type="s3", s3=opts,
                                sync_interval_s=0.01)
    conn = apsw.Connection(str(db))
    conn.set_busy_timeout(2000)
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)"))
    yield db, replica, conn
    conn.close()


def _run_once(cfg, steps=1) -> DbReplicator:
    rep = DbReplicator(cfg)
    rep.open()
    for _ in range(steps):
        rep.step()
    rep.stop()
    assert rep.join()
    return rep


def _generations(replica: ReplicaConfig):
    return layout.parse_listing(open_storage(replica).list(layout.GENERATIONS)).generations


def _restored_hash(replica: ReplicaConfig, out, target=Target()):
    out.unlink(missing_ok=True)
    restore(open_storage(replica), out, target)
    return content_hash(out)


def test_restart_without_changes_resumes_the_generation(env, tmp_path):
    db, replica, conn = env
    cfg = _cfg(db, replica)
    _write(conn, 10)
    _run_once(cfg)
    _write(conn, 10, 10)
    _run_once(cfg)
    gens = _generations(replica)
    assert len(gens) == 1 and len(gens[0].snapshots) == 1
    assert _restored_hash(replica, tmp_path / "o.db") == content_hash(db)


def test_wal_restarted_while_down_starts_a_new_generation(env, tmp_path):
    db, replica, conn = env
    cfg = _cfg(db, replica)
    _write(conn, 10)
    _run_once(cfg)
    conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    _write(conn, 5, 10)
    _run_once(cfg)
    gens = _generations(replica)
    assert len(gens) == 2
    assert gens[1].first_txid > gens[0].last_txid  # txids never repeat across generations
    assert _restored_hash(replica, tmp_path / "o.db") == content_hash(db)


def test_replaced_database_file_starts_a_new_generation(env, tmp_path):
    db, replica, conn = env
    rep = DbReplicator(_cfg(db, replica))
    rep.open()
    try:
        _write(conn, 5)
        rep.step()
        other = tmp_path / "other.db"
        c2 = apsw.Connection(str(other))
        list(c2.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); "
                        "INSERT INTO t(v) VALUES (x'ff')"))
        c2.close()
        conn.close()
        for suffix in ("-wal", "-shm"):
            if os.path.exists(str(other) + suffix):
                os.replace(str(other) + suffix, str(db) + suffix)
        os.replace(other, db)
        with pytest.raises(ContinuityLost):
            rep.step()
        rep.restart_tail()
    finally:
        rep.stop()
        assert rep.join()
    assert len(_generations(replica)) == 2
    assert _restored_hash(replica, tmp_path / "o.db") == content_hash(db)


def test_snapshot_in_the_generation_is_used_by_later_restores(env, tmp_path):
    db, replica, conn = env
    rep = DbReplicator(_cfg(db, replica))
    rep.open()
    try:
        _write(conn, 10)
        rep.step()
        txid = rep.snapshot_now("before-migration")
        _write(conn, 3, 10)
        rep.step()
    finally:
        rep.stop()
        assert rep.join()
    gen = _generations(replica)[0]
    assert [s.txid for s in gen.snapshots][-1] == txid
    assert gen.snapshots[-1].name == "before-migration"
    out = tmp_path / "o.db"
    result = restore(open_storage(replica), out)
    assert result.snapshot_key == gen.snapshots[-1].key and result.segments == 1
    assert content_hash(out) == content_hash(db)


def test_snapshot_command_goes_through_a_running_daemon(env, tmp_path):
    db, replica, conn = env
    cfg = _cfg(db, replica)
    rep = DbReplicator(cfg)
    rep.start()
    try:
        _write(conn, 4)
        txid = take_snapshot(cfg, "via-daemon", timeout_s=30)
    finally:
        rep.stop()
        assert rep.join()
    names = [s.name for g in _generations(replica) for s in g.snapshots]
    assert "via-daemon" in names and txid >= 1


def test_snapshot_command_without_a_daemon_does_it_itself(env, tmp_path):
    db, replica, conn = env
    _write(conn, 4)
    txid = take_snapshot(_cfg(db, replica), None, timeout_s=30)
    gen = _generations(replica)[0]
    assert gen.snapshots[-1].txid == txid
    assert _restored_hash(replica, tmp_path / "o.db", Target(txid=txid)) == content_hash(db)


def test_writes_during_a_daemon_run_are_woken_by_file_events(env, tmp_path):
    """monitor-interval is an hour: only watchdog's -wal event can wake the worker."""
    db, replica, conn = env
    cfg = DbConfig(path=str(db), replicas=_cfg(db, replica).replicas, monitor_interval_s=3600)
    from replicator.config import Config
    from replicator.daemon import Daemon

    daemon = Daemon(Config(dbs=(cfg,)), supervised=False)
    daemon.start()
    try:
        rep = daemon.replicators[0]
        tick = threading.Event()
        # The inotify watch is set up by watchdog's thread shortly after start(): keep
        # writing (one row per 0.2 s) until a commit made after it has been shipped.
        for i in range(50):
            target = rep.tail.pos.txid + 1
            _write(conn, 1, i)
            for _ in range(4):
                if rep.shippers[0].shipped_txid >= target:
                    break
                tick.wait(0.05)
            else:
                continue
            break
        else:
            raise AssertionError("no commit was shipped within 10 s without a timer wake-up")
    finally:
        assert daemon.shutdown()


def test_database_written_by_another_sqlite_version(tmp_path):
    """The stdlib's SQLite stamps its own version in page 1; the backup API stamps apsw's."""
    import sqlite3

    db, replica = tmp_path / "std.db", _file_replica(tmp_path / "replica")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    for i in range(20):
        conn.execute("INSERT INTO t(v) VALUES (?)", (bytes(300),))
    _run_once(_cfg(db, replica))
    conn.execute("INSERT INTO t(v) VALUES (x'01')")
    conn.close()
    assert _restored_hash(replica, tmp_path / "o.db") != content_hash(db)  # last row not shipped yet
    _run_once(_cfg(db, replica))
    assert _restored_hash(replica, tmp_path / "o.db") == content_hash(db)


def test_named_snapshot_at_the_generations_first_txid_is_shipped(env):
    """Snapshots are known by key: a named one at the same txid as another still ships."""
    db, replica, conn = env
    take_snapshot(_cfg(db, replica), "first-day", timeout_s=30)
    snaps = _generations(replica)[0].snapshots
    assert [s.name for s in snaps] == [None, "first-day"]
    assert snaps[0].txid == snaps[1].txid


def _steps_until_snapshot(rep, conn, limit_bytes: float, max_rows: int = 5000) -> int:
    """Write a row and step until a snapshot is taken; every step without one must have left
    the history under `limit_bytes`. Returns the history bytes seen before the snapshot."""
    first, seen = rep.last_snapshot_ns, 0
    for i in range(max_rows):
        _write(conn, 1, 10_000 + i)
        rep.step()
        if rep.last_snapshot_ns != first:
            return seen
        seen = rep.history_bytes
        assert seen < limit_bytes
    raise AssertionError("no snapshot")


def test_history_past_the_ratio_takes_a_snapshot(env, tmp_path, monkeypatch):
    """A restore reads at most ~ratio x the newest snapshot of segments: then a new snapshot."""
    db, replica, conn = env
    monkeypatch.setattr("replicator.policy.SNAPSHOT_HISTORY_FLOOR_BYTES", 0)
    monkeypatch.setattr("replicator.policy.HISTORY_SNAPSHOT_QUIET_S", 0)
    cfg = DbConfig(path=str(db), replicas=(replica,), monitor_interval_s=0.05, snapshot_history_ratio=2.0)
    rep = DbReplicator(cfg)
    rep.open()
    try:
        snap = rep.last_snapshot_bytes
        assert snap > 0 and rep.history_bytes == 0
        _steps_until_snapshot(rep, conn, 2 * snap)
        assert rep.history_bytes < 2 * snap
        _write(conn, 3)
        rep.step()
    finally:
        rep.stop()
        assert rep.join()
    gen = _generations(replica)[0]
    assert len(gen.snapshots) == 2
    between = sum(s.size for s in gen.segments if gen.snapshots[0].txid < s.first_txid <= gen.snapshots[1].txid)
    # Not too early either. (The daemon counts segments as spooled; a shipper that merged a run
    # of these tiny ones saved their headers, so the replica holds somewhat less.)
    assert between >= 1.5 * gen.snapshots[0].size
    out = tmp_path / "o.db"
    result = restore(open_storage(replica), out)
    assert result.snapshot_key == gen.snapshots[-1].key
    assert content_hash(out) == content_hash(db)
    again = DbReplicator(cfg)  # a restart recovers the count from the replica's listing
    again.open()
    try:
        after = [s for s in gen.segments if s.first_txid > gen.snapshots[1].txid]
        assert (again.last_snapshot_bytes, again.history_bytes) == (gen.snapshots[1].size, sum(s.size for s in after))
    finally:
        again.stop()
        assert again.join()


def test_history_snapshot_waits_for_a_pause_until_a_multiple_of_the_ratio(env, monkeypatch):
    db, replica, conn = env
    monkeypatch.setattr("replicator.policy.SNAPSHOT_HISTORY_FLOOR_BYTES", 0)
    monkeypatch.setattr("replicator.policy.HISTORY_SNAPSHOT_QUIET_S", 3600)  # never quiet here
    cfg = DbConfig(path=str(db), replicas=(replica,), monitor_interval_s=0.05, snapshot_history_ratio=1.0)
    rep = DbReplicator(cfg)
    rep.open()
    try:
        snap = rep.last_snapshot_bytes
        seen = _steps_until_snapshot(rep, conn, HISTORY_SNAPSHOT_FORCE * snap)
        assert seen >= snap  # it was due long before, but the writer never paused
    finally:
        rep.stop()
        assert rep.join()


def test_a_checkpointed_idle_database_is_not_checkpointed_again(env):
    """After a checkpoint the WAL restarts only with the next write: until then our position
    stays past min-checkpoint-page-count, which must not start a cycle on every wake-up."""
    db, replica, conn = env
    cfg = DbConfig(path=str(db), replicas=(replica,), monitor_interval_s=0.05, min_checkpoint_page_count=10)
    rep = DbReplicator(cfg)
    rep.open()
    try:
        _write(conn, 30)
        rep.step()  # starts the checkpoint cycle on its thread
        assert rep.checkpointer.join() is None
        assert backfill_tail(rep.handles) == 0 and rep.tail.pos.frame >= 10
        rep.step()
        assert not rep.checkpointer.running()
        rep.step()
        assert not rep.checkpointer.running()
    finally:
        rep.stop()
        assert rep.join()


def test_checkpoints_go_ahead_without_the_lock_once_the_wal_is_long(env, monkeypatch):
    """An application that keeps winning the checkpointer lock must not stop our rounds: only
    they move the read mark, so the WAL would grow without bound."""
    db, replica, conn = env
    cfg = DbConfig(path=str(db), replicas=(replica,), monitor_interval_s=0.05, min_checkpoint_page_count=10)
    rep = DbReplicator(cfg)
    rep.open()
    monkeypatch.setattr(rep.handles, "keep_checkpoints", lambda: False)
    try:
        _write(conn, 12)
        rep.step()
        assert rep.checkpointer._thread is None  # due, but the application holds the lock: wait a little
        _write(conn, 40, 12)
        rep.step()
        assert rep.checkpointer._thread is not None  # past 4x: go ahead
    finally:
        rep.stop()
        assert rep.join()


class _Down:
    """A replica store that is unreachable until `up` is set (the outage is the in-process
    part; the store behind it is a real directory)."""

    def __init__(self, inner):
        self.inner, self.up, self.url = inner, False, inner.url

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if not self.up:
                raise Transient(f"{self.url}: cannot connect (the test's outage)")
            return attr(*args, **kwargs)

        return call


def _run_with_outage(cfg, storage, clock_ns=time.time_ns, writes=(), conn=None) -> DbReplicator:
    """Start with the store down (a fresh spool cannot see what the replica holds), write,
    bring the store back, stop cleanly."""
    rep = DbReplicator(cfg, storages={cfg.replicas[0].name: storage}, clock_ns=clock_ns)
    rep.open()
    for start, n in writes:
        _write(conn, n, start)
        rep.step()
    storage.up = True
    return rep


def test_a_fresh_spool_with_the_replica_down_never_repeats_txids(tmp_path):
    """A new container (no spool) whose replica is down at start: its generation's txids
    start above the clock floor, so they cannot repeat the replica's, and 'latest' is the
    new history (it used to start at txid 1 and restore the old generation's state)."""
    db, replica = tmp_path / "app.db", _file_replica(tmp_path / "replica")
    conn = apsw.Connection(str(db))
    conn.set_busy_timeout(2000)
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)"))
    cfg = _cfg(db, replica)
    _write(conn, 30)
    _run_once(cfg, steps=1)
    _write(conn, 20, 30)
    _run_once(cfg, steps=1)
    shutil.rmtree(str(db) + "-replicator")  # the spool is gone; the database and replica stay
    rep = _run_with_outage(cfg, _Down(FileStorage(replica.path, url=replica.url)), writes=[(50, 5)], conn=conn)
    rep.stop()
    assert rep.join()
    gens = [g for g in _generations(replica) if g.first_txid is not None]
    assert len(gens) == 2 and gens[1].first_txid > gens[0].last_txid
    assert _restored_hash(replica, tmp_path / "o.db") == content_hash(db)
    conn.close()


def test_a_generation_whose_txids_the_replica_holds_is_refused_and_replaced(tmp_path):
    """The clock floor is not enough when the clock is wrong (a board that booted in 1970):
    the replica refuses the generation and the replicator starts one above its txids."""
    db, replica = tmp_path / "app.db", _file_replica(tmp_path / "replica")
    conn = apsw.Connection(str(db))
    conn.set_busy_timeout(2000)
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)"))
    cfg = _cfg(db, replica)
    store = lambda: _Down(FileStorage(replica.path, url=replica.url))  # noqa: E731
    rep = _run_with_outage(cfg, store(), writes=[(0, 10)], conn=conn)  # txids from today's floor
    rep.stop()
    assert rep.join()
    (first,) = _generations(replica)
    shutil.rmtree(str(db) + "-replicator")
    fake_now = iter(range(5 * 10**9, 6 * 10**9, 1000))
    rep = _run_with_outage(cfg, store(), clock_ns=fake_now.__next__, writes=[(10, 5)], conn=conn)
    try:
        refused = rep.generation
        wait_for(lambda: refused in rep._refused, 30, "the replica to refuse the generation", interval=0.02)
        with pytest.raises(ContinuityLost, match="refused"):
            rep.step()
        rep.restart_tail()
        _write(conn, 3, 15)
        rep.step()
    finally:
        rep.stop()
        assert rep.join()
    gens = [g for g in _generations(replica) if g.first_txid is not None]
    assert [g.name for g in gens][0] == first.name and refused not in [g.name for g in gens]
    assert len(gens) == 2 and gens[1].first_txid > gens[0].last_txid
    assert _restored_hash(replica, tmp_path / "o.db") == content_hash(db)
    conn.close()


def test_a_snapshot_request_is_served_at_once_when_checkpoints_are_always_due(env):
    """A request used to be served only on wake-ups where no checkpoint was due (or
    running), so under a busy writer `snapshot --name before-migration` could time out."""
    db, replica, conn = env
    rep = DbReplicator(DbConfig(path=str(db), replicas=(replica,), monitor_interval_s=0.05,
                                min_checkpoint_page_count=10))
    rep.open()
    try:
        fut = rep.submit(lambda: rep.snapshot_now("before-migration"))
        served = None
        for i in range(8):
            _write(conn, 30, i * 30)  # a checkpoint is due at every wake-up
            rep.step()
            rep.checkpointer.join()
            if fut.done():
                served = i
                break
        assert served == 0 and fut.result() > 0
    finally:
        rep.stop()
        assert rep.join()
    assert "before-migration" in [s.name for g in _generations(replica) for s in g.snapshots]


def test_a_snapshot_that_disagrees_with_the_tail_is_never_published(env, monkeypatch):
    """The comparison with the running checksum happens before the object is renamed into
    place: it used to happen after, so a shipper could upload a snapshot known to be wrong."""
    db, replica, conn = env
    rep = DbReplicator(_cfg(db, replica))
    rep.open()
    published = []
    real_writer = FileStorage.writer

    def watching_writer(storage, key):
        import contextlib

        @contextlib.contextmanager
        def cm():
            with real_writer(storage, key) as out:
                yield out
            published.append(key)  # reached only once the object is in place

        return cm()

    try:
        _write(conn, 5)
        rep.step()
        monkeypatch.setattr(FileStorage, "writer", watching_writer)
        rep.tail.checksum.value ^= 1  # the tail and the image now disagree
        with pytest.raises(SourceError, match="does not match"):
            rep.snapshot_now("wrong")
        assert not [k for k in published if "wrong" in k]
        assert not [o.key for o in rep.spool.objects.list(layout.GENERATIONS) if "wrong" in o.key]
        rep.tail.checksum.value ^= 1
        monkeypatch.setattr(FileStorage, "writer", real_writer)
    finally:
        rep.stop()
        assert rep.join()
    assert "wrong" not in [s.name for g in _generations(replica) for s in g.snapshots]
