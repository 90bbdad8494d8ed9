"""metrics.py scraped over HTTP on 127.0.0.1: every metric moves as it should under a real
writer (in process and through `replicator run`), the compactor's per pass, verify results
from the spool; a port in use is one clear line."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import apsw
import pytest

from replicator import metrics
from replicator.compactor import Compactor
from replicator.config import DbConfig, ListenAddr, ReplicaConfig, S3Options
from replicator.errors import ConfigError
from replicator.replication import DbReplicator
from replicator.retention import Policy
from replicator.daemon_ops import take_snapshot
from replicator.spool import spool_dir
from replicator.storage import open_storage
from replicator.verify import record, write_record

from integration.harness import BIN, wait_for
from scrape import names, samples, scrape, value
from test_compactor import _make_history

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
LOCAL = ListenAddr("127.0.0.1", 0)


def _file_replica(path) -> ReplicaConfig:
    return ReplicaConfig(name="file", url=f"file://{path}", type="file", path=str(path))


def _down_replica(name: str = "down") -> ReplicaConfig:
    """S3 at a port nothing listens on: every round fails with a transient error."""
    opts = S3Options(bucket="nowhere", endpoint="http://127.0.0.1:9", force_path_style=True,
                     region="us-east-1", access_key_id=KEY_ID, secret_access_key=SECRET)
    return ReplicaConfig(name=name, url="s3://nowhere", type="s3", s3=opts, sync_interval_s=0.05)


def _write(conn, n):
    for _ in range(n):
        conn.execute("INSERT INTO t(v) VALUES (?)", (b"m" * 300,))


@pytest.fixture
def served(tmp_path):
    """A DbReplicator (a file replica, an unreachable one) under its metrics endpoint."""
    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    conn.set_busy_timeout(2000)
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)"))
    cfg = DbConfig(path=str(db), replicas=(_file_replica(tmp_path / "replica"), _down_replica()),
                   monitor_interval_s=0.05, min_checkpoint_page_count=1, checkpoint_interval_s=0.1)
    rep = DbReplicator(cfg)
    reg = metrics.registry("run", metrics.ReplicatorCollector(lambda: [rep]))
    with metrics.serving(LOCAL, reg) as port:
        rep.start()
        try:
            yield rep, conn, cfg, port
        finally:
            rep.stop()
            rep.join()
            conn.close()


def test_every_daemon_metric_moves_under_a_writer(served):
    rep, conn, cfg, port = served
    db, ok, down = str(cfg.path), {"replica": "file"}, {"replica": "down"}
    s0 = wait_for(lambda: (s := samples(scrape(port))) and value(s, "replicator_replicated_txid", **ok) and s,
                  15, "the first snapshot on the file replica")
    assert value(s0, "replicator_build_info", command="run") == 1
    assert value(s0, "replicator_db_replicating", db=db) == 1
    assert value(s0, "replicator_snapshots_total", db=db) == 1
    txid0 = value(s0, "replicator_current_txid", db=db)
    _write(conn, 40)

    def caught_up():
        s = samples(scrape(port))
        return value(s, "replicator_replicated_txid", **ok) >= txid0 + 40 and s

    s1 = wait_for(caught_up, 15, "the file replica to acknowledge 40 commits")
    assert value(s1, "replicator_current_txid", db=db) == value(s1, "replicator_replicated_txid", **ok)
    for name in ("replicator_shipped_bytes_total", "replicator_shipped_objects_total"):
        assert value(s1, name, **ok) > (value(s0, name, **ok) or 0), name
    assert value(s1, "replicator_last_upload_timestamp_seconds", **ok) > (
        value(s0, "replicator_last_upload_timestamp_seconds", **ok) or 0)
    assert value(s1, "replicator_storage_requests_total", verb="put", **ok) > value(
        s0, "replicator_storage_requests_total", verb="put", **ok)
    assert value(s1, "replicator_commit_timestamp_seconds", db=db) > value(s0, "replicator_commit_timestamp_seconds", db=db)
    assert value(s1, "replicator_replicated_commit_timestamp_seconds", **ok) > value(
        s0, "replicator_replicated_commit_timestamp_seconds", **ok)
    assert value(s1, "replicator_replication_lag_seconds", **ok) == 0
    assert value(s1, "replicator_replica_backlog_bytes", **ok) == 0

    # The unreachable replica: errors counted by kind, everything spooled for it, a lag
    # that grows while nobody writes, nothing acknowledged, no upload time.
    s2 = wait_for(lambda: (s := samples(scrape(port)))
                  and value(s, "replicator_upload_errors_total", kind="transient", **down) >= 2 and s,
                  30, "two failed rounds on the unreachable replica")
    assert value(s2, "replicator_upload_errors_total", kind="permanent", **down) == 0
    assert value(s2, "replicator_replica_consecutive_failures", **down) >= 2
    assert value(s2, "replicator_replicated_txid", **down) == 0
    assert value(s2, "replicator_last_upload_timestamp_seconds", **down) is None
    backlog = value(s2, "replicator_replica_backlog_bytes", **down)
    assert backlog > 0 and backlog == value(s2, "replicator_spool_backlog_bytes", db=db)
    assert value(s2, "replicator_replica_backlog_objects", **down) == value(s2, "replicator_spool_backlog_objects", db=db)
    lag = value(s2, "replicator_replication_lag_seconds", **down)
    assert lag > 0
    wait_for(lambda: value(samples(scrape(port)), "replicator_replication_lag_seconds", **down) > lag + 0.2,
             10, "the lag to grow while idle")

    # Checkpoints (min-checkpoint-page-count 1) with their durations; the WAL's size.
    s3 = wait_for(lambda: (s := samples(scrape(port))) and value(s, "replicator_checkpoints_total", db=db) > 0
                  and s, 20, "a checkpoint cycle")
    count = value(s3, "replicator_checkpoint_duration_seconds_count", db=db)
    assert count == value(s3, "replicator_checkpoints_total", db=db)
    last = value(s3, "replicator_last_checkpoint_duration_seconds", db=db)
    assert 0 < last <= value(s3, "replicator_checkpoint_duration_seconds_sum", db=db)
    _write(conn, 5)
    wait_for(lambda: value(samples(scrape(port)), "replicator_wal_bytes", db=db) > 0, 10, "WAL bytes")

    # A snapshot asked for over the control socket, as `replicator snapshot` does.
    take_snapshot(cfg, "metrics", 30)
    s4 = samples(scrape(port))
    assert value(s4, "replicator_snapshots_total", db=db) == 2
    assert value(s4, "replicator_last_snapshot_timestamp_seconds", db=db) > value(
        s0, "replicator_last_snapshot_timestamp_seconds", db=db)

    text = scrape(port)
    assert SECRET not in text and KEY_ID not in text and "nowhere" not in text
    labels = {k for (n, ls) in samples(text) if n.startswith("replicator_") for k, _ in ls}
    assert labels <= {"db", "replica", "kind", "verb", "version", "python", "command"}


def test_verify_metrics_come_from_the_result_file(served):
    rep, conn, cfg, port = served
    db = str(cfg.path)
    s = samples(scrape(port))
    assert not {n for n in names(s) if n.startswith("replicator_verify_")}  # absent: no sample
    write_record(db, record(True, "file", 12, None, now_ms=lambda: 1_796_000_000_000))
    s = samples(scrape(port))
    assert value(s, "replicator_verify_last_ok", db=db, replica="file") == 1
    assert value(s, "replicator_verify_last_success_timestamp_seconds", db=db, replica="file") == 1_796_000_000
    assert value(s, "replicator_verify_last_run_timestamp_seconds", db=db, replica="file") == 1_796_000_000
    write_record(db, record(False, "file", None, "checksum mismatch", now_ms=lambda: 1_796_000_100_000))
    s = samples(scrape(port))
    assert value(s, "replicator_verify_last_ok", db=db, replica="file") == 0
    assert value(s, "replicator_verify_last_run_timestamp_seconds", db=db, replica="file") == 1_796_000_100
    assert value(s, "replicator_verify_last_success_timestamp_seconds", db=db, replica="file") is None
    (spool_dir(db) / metrics.VERIFY_FILE).write_text("{not json")  # foreign: no sample, the scrape works
    s = samples(scrape(port))
    assert value(s, "replicator_verify_last_ok", db=db, replica="file") is None
    assert value(s, "replicator_db_replicating", db=db) == 1


def test_compactor_metrics_count_each_pass(tmp_path):
    replica = _file_replica(tmp_path / "replica")
    h = _make_history(tmp_path, replica, hours=30, per_hour=2)
    good = Compactor(open_storage(replica), Policy(retention_s=3 * 3600, snapshot_ratio=0.5,
                                                   min_snapshot_history_bytes=0),
                     clock_ns=lambda: h.end_ns, db="/data/app.db", name="file")
    bad = Compactor(open_storage(_down_replica()), Policy(retention_s=3600), db="/data/app.db", name="down")
    reg = metrics.registry("compact", metrics.CompactorCollector(lambda: [good, bad]))
    with metrics.serving(LOCAL, reg) as port:
        s0 = samples(scrape(port))
        g, b = {"replica": "file"}, {"replica": "down"}
        assert value(s0, "replicator_build_info", command="compact") == 1
        assert value(s0, "replicator_compactor_passes_total", **g) == 0
        assert value(s0, "replicator_compactor_last_pass_ok", **g) is None  # no pass yet
        summary = good.run_pass()
        assert summary.deleted and summary.merged_outputs and summary.snapshots
        with pytest.raises(Exception):
            bad.run_pass()
        s1 = samples(scrape(port))
    assert value(s1, "replicator_compactor_passes_total", **g) == 1
    assert value(s1, "replicator_compactor_failed_passes_total", **g) == 0
    assert value(s1, "replicator_compactor_deleted_objects_total", **g) == summary.deleted
    assert value(s1, "replicator_compactor_deleted_bytes_total", **g) == summary.deleted_bytes
    assert value(s1, "replicator_compactor_merged_segments_total", **g) == summary.merged_inputs
    assert value(s1, "replicator_compactor_merged_objects_total", **g) == summary.merged_outputs
    assert value(s1, "replicator_compactor_snapshots_built_total", **g) == summary.snapshots
    assert value(s1, "replicator_compactor_snapshot_bytes_total", **g) == summary.snapshot_bytes > 0
    assert value(s1, "replicator_compactor_pass_duration_seconds_count", **g) == 1
    assert value(s1, "replicator_compactor_last_pass_duration_seconds", **g) == pytest.approx(summary.seconds)
    assert value(s1, "replicator_compactor_last_pass_ok", **g) == 1
    assert value(s1, "replicator_compactor_last_success_timestamp_seconds", **g) == h.end_ns / 1e9
    assert value(s1, "replicator_storage_requests_total", verb="delete", **g) >= 1
    assert value(s1, "replicator_compactor_passes_total", **b) == 1
    assert value(s1, "replicator_compactor_failed_passes_total", **b) == 1
    assert value(s1, "replicator_compactor_last_pass_ok", **b) == 0
    assert value(s1, "replicator_compactor_last_success_timestamp_seconds", **b) is None


# -- through the CLI, in real processes -----------------------------------------------

SERVING = re.compile(r"serving metrics on http://127\.0\.0\.1:(\d+)/metrics")


def _config(tmp_path, addr: str) -> tuple[str, str]:
    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)"))
    conn.close()
    cfg = tmp_path / "replicator.yml"
    cfg.write_text(f"addr: {addr}\ndbs:\n  - path: {db}\n    replicas:\n      - url: file://{tmp_path / 'replica'}\n")
    return str(cfg), str(db)


def test_run_serves_metrics_that_follow_a_writer(tmp_path):
    cfg, db = _config(tmp_path, "127.0.0.1:0")
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN), "run", "-c", cfg], stdout=out, stderr=subprocess.STDOUT)
    try:
        port = int(wait_for(lambda: SERVING.search(log.read_text()), 20, "the serving line").group(1))
        assert log.read_text().count("serving metrics") == 1
        s0 = wait_for(lambda: (s := samples(scrape(port))) and value(s, "replicator_replicated_txid", db=db) and s,
                      20, "the first snapshot on the replica")
        conn = apsw.Connection(db)
        conn.set_busy_timeout(2000)
        _write(conn, 25)
        conn.close()
        txid0 = value(s0, "replicator_current_txid", db=db)
        s1 = wait_for(lambda: (s := samples(scrape(port)))
                      and value(s, "replicator_replicated_txid", db=db) >= txid0 + 25 and s,
                      20, "25 commits on the replica")
        assert value(s1, "replicator_shipped_objects_total", db=db) > value(s0, "replicator_shipped_objects_total", db=db)
        assert value(s1, "replicator_replication_lag_seconds", db=db) == 0
        assert "process_resident_memory_bytes" in names(s1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_a_port_in_use_is_one_clear_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg, _ = _config(tmp_path, f"127.0.0.1:{port}")
        started = time.monotonic()
        res = subprocess.run([str(BIN), "run", "-c", cfg], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and time.monotonic() - started < 30
    lines = res.stderr.strip().splitlines()
    assert lines == [f"error: cannot serve metrics on addr 127.0.0.1:{port}: Address already in use "
                     "(is another process (replicator run, compact) using the port?)"], res.stderr
    assert not os.path.exists(spool_dir(str(tmp_path / "app.db")))  # nothing was started


def test_compact_serves_metrics_while_long_lived(tmp_path):
    cfg, db = _config(tmp_path, "127.0.0.1:1")  # `run`'s port: compact --addr moves it aside
    log = tmp_path / "compact.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN), "compact", "-c", cfg, "--addr", "127.0.0.1:0"], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        port = int(wait_for(lambda: SERVING.search(log.read_text()), 20, "the serving line").group(1))
        s = wait_for(lambda: (s := samples(scrape(port)))
                     and value(s, "replicator_compactor_passes_total", db=db, replica="file") and s,
                     20, "the first pass")
        # An empty replica: a pass with nothing to do is a success.
        assert value(s, "replicator_compactor_pass_duration_seconds_count", db=db, replica="file") == 1
        assert value(s, "replicator_compactor_last_pass_ok", db=db, replica="file") == 1
        assert value(s, "replicator_compactor_last_success_timestamp_seconds", db=db, replica="file") > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_compact_takes_the_port_after_runs():
    assert metrics.compactor_addr(ListenAddr("", 9090)) == ListenAddr("", 9091)
    assert metrics.compactor_addr(ListenAddr("127.0.0.1", 0)) == ListenAddr("127.0.0.1", 0)
    assert metrics.compactor_addr(None) is None
    with pytest.raises(ConfigError, match="compact --addr"):
        metrics.compactor_addr(ListenAddr("", 65535))
