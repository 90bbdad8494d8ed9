"""status.py and DbReplicator.status(): the numbers move under a real writer, a replica that
cannot be reached shows its lag, backlog and errors, and nothing carries a credential."""

from __future__ import annotations

import dataclasses
import json

import apsw
import pytest

from replicator.config import DbConfig, ReplicaConfig, S3Options
from replicator.replication import DbReplicator
from replicator.status import ERROR_KINDS, MAX_ERROR_CHARS, redact

from integration.harness import wait_for

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_redact_removes_credentials_and_keeps_one_bounded_line():
    text = (f"PUT https://bob:{SECRET}@s3.example/b/k?X-Amz-Credential={KEY_ID}%2F2026&X-Amz-Signature=abc123 "
            f"failed\nAuthorization: AWS4-HMAC-SHA256 Credential={KEY_ID}/x, Signature=ffff\n"
            f"key {KEY_ID} secret {SECRET}")
    out = redact(text, [SECRET])
    assert "\n" not in out
    for secret in (SECRET, KEY_ID, "bob", "abc123", "ffff"):
        assert secret not in out
    assert out.startswith("PUT https://***@s3.example/b/k?X-Amz-Credential=***&X-Amz-Signature=***")
    assert len(redact("x" * 1000)) == MAX_ERROR_CHARS
    assert redact(None) is None


def _file_replica(path) -> ReplicaConfig:
    return ReplicaConfig(name="file", url=f"file://{path}", type="file", path=str(path))


def _down_replica() -> ReplicaConfig:
    """S3 at a port nothing listens on: every round fails with a transient error."""
    opts = S3Options(bucket="nowhere", endpoint="http://127.0.0.1:9", force_path_style=True,
                     region="us-east-1", access_key_id=KEY_ID, secret_access_key=SECRET)
    return ReplicaConfig(name="down", url="s3://nowhere", type="s3", s3=opts, sync_interval_s=0.05)


def _write(conn, n):
    for _ in range(n):
        conn.execute("INSERT INTO t(v) VALUES (?)", (b"v" * 200,))


@pytest.fixture
def live(tmp_path):
    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    conn.set_busy_timeout(2000)
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)"))
    cfg = DbConfig(path=str(db), replicas=(_file_replica(tmp_path / "replica"), _down_replica()),
                   monitor_interval_s=0.05, min_checkpoint_page_count=1, checkpoint_interval_s=0.1)
    rep = DbReplicator(cfg)
    rep.start()
    yield rep, conn
    rep.stop()
    rep.join()
    conn.close()


def test_status_follows_a_writer_with_one_replica_down(live):
    rep, conn = live
    first = rep.status()
    assert first.generation and first.replicating and first.snapshots == 1
    _write(conn, 30)
    st = wait_for(lambda: (s := rep.status()).replicas[0].replicated_txid >= first.txid + 30 and s,
                  10, "the file replica to acknowledge 30 commits")
    assert st.txid >= first.txid + 30 and st.commit_time is not None
    ok, down = st.replicas
    assert (ok.name, ok.lag_seconds, ok.backlog_bytes, ok.consecutive_failures) == ("file", 0.0, 0, 0)
    assert ok.shipped_objects >= 2 and ok.shipped_bytes > 0 and ok.last_upload_time is not None
    assert ok.requests.get("put", 0) >= ok.shipped_objects
    assert ok.replicated_commit_time is not None and ok.replicated_commit_time <= st.commit_time + 0.001
    # The unreachable one: nothing acknowledged, everything spooled for it, errors counted.
    down_st = wait_for(lambda: (s := rep.status().replicas[1]).upload_errors["transient"] > 0 and s,
                       30, "a failed round on the unreachable replica")
    assert set(down_st.upload_errors) == set(ERROR_KINDS)
    assert down_st.replicated_txid == 0 and down_st.last_upload_time is None
    assert down_st.last_error and down_st.last_error_kind == "transient"
    st = rep.status()
    assert st.replicas[1].backlog_bytes == st.spool_backlog_bytes > 0
    lag = st.replicas[1].lag_seconds
    assert lag > 0
    # The lag is the age of the oldest commit it lacks: it grows even while nobody writes.
    wait_for(lambda: rep.status().replicas[1].lag_seconds > lag + 0.2, 10, "the lag to grow while idle")
    # Checkpoints ran (min_checkpoint_page_count=1): counted with their durations.
    st = wait_for(lambda: (s := rep.status()).checkpoints > 0 and s, 20, "a checkpoint cycle")
    assert st.last_checkpoint_seconds is not None and st.checkpoint_seconds_total >= st.last_checkpoint_seconds
    text = json.dumps(dataclasses.asdict(st))  # JSON-able as is
    assert SECRET not in text and KEY_ID not in text


def test_snapshot_moves_the_snapshot_time(tmp_path):
    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)"))
    rep = DbReplicator(DbConfig(path=str(db), replicas=(_file_replica(tmp_path / "replica"),)))
    rep.open()  # no worker thread: this test steps it
    try:
        before = rep.status()
        _write(conn, 3)
        rep.step()
        assert rep.status().txid == before.txid + 3
        rep.snapshot_now()
        after = rep.status()
        assert after.snapshots == before.snapshots + 1
        assert after.last_snapshot_time > before.last_snapshot_time
    finally:
        rep.stop()
        rep.join()
        conn.close()


def test_status_before_the_spool_is_ours_does_not_look_into_it(tmp_path):
    """Supervised start keeps retrying while another process holds the spool: a scrape
    meanwhile must not build the spool's index (only the lock's holder may)."""
    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)"))
    cfg = DbConfig(path=str(db), replicas=(_file_replica(tmp_path / "replica"),))
    holder = DbReplicator(cfg)
    holder.open()
    try:
        other = DbReplicator(cfg)
        st = other.status()
        assert (st.txid, st.replicating, st.spool_backlog_bytes, st.replicas[0].lag_seconds) == (0, False, 0, 0.0)
        assert other.spool.objects._index is None
        assert holder.status().replicating
    finally:
        holder.stop()
        holder.join()
        conn.close()
