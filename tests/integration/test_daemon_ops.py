"""`status`, `snapshot` and `sync` against a real `replicator run`, over its control socket,
and by themselves when no replicator runs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import apsw

from replicator import control
from replicator.demo import content_hash
from replicator.restore import restore
from replicator.spool import spool_dir
from replicator.storage import open_storage

from .harness import BIN, start_replicator, stop, wait_for


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def _setup(tmp_path: Path, sync_interval: str):
    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    conn.set_busy_timeout(2000)
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"))
    config = tmp_path / "replicator.yml"
    config.write_text(f"dbs:\n  - path: {db}\n    replicas:\n      - url: file://{tmp_path}/replica\n"
                      f"        sync-interval: {sync_interval}\n")
    return db, conn, config


def _restored_hash(tmp_path: Path, name: str) -> str:
    out = tmp_path / name
    restore(open_storage(f"file://{tmp_path}/replica"), out)
    return content_hash(out)


def test_sync_wait_ships_past_a_long_sync_interval(tmp_path):
    """With sync-interval 1h the replica would get these writes in an hour; `sync --wait`
    returns once it has them."""
    db, conn, config = _setup(tmp_path, "1h")
    log = tmp_path / "run.log"
    proc = start_replicator(["run", "-c", config], log)
    wait_for(lambda: "replicating" in log.read_text(), 30, "the daemon to start")
    wait_for(lambda: (spool_dir(str(db)) / control.SOCKET_NAME).exists(), 30, "the control socket")
    mode = os.stat(spool_dir(str(db)) / control.SOCKET_NAME).st_mode
    assert stat.S_IMODE(mode) == 0o600
    for i in range(200):
        conn.execute("INSERT INTO t(v) VALUES (?)", (f"value {i}",))
    synced = cli("sync", "-c", config, "--timeout", "60")
    assert synced.returncode == 0, synced.stderr
    assert "on 1/1 replica(s)" in synced.stdout
    assert _restored_hash(tmp_path, "a.db") == content_hash(db)  # no write since the sync

    st = cli("status", "-c", config, "--json")
    assert st.returncode == 0, st.stderr
    [entry] = json.loads(st.stdout)
    assert entry["running"] is True and entry["path"] == str(db)
    assert entry["replicas"][0]["replicated_txid"] == entry["txid"] > 0
    assert entry["replicating"] is True and entry["replicas"][0]["lag_seconds"] == 0
    human = cli("status", "-c", config)
    assert "replicating" in human.stdout and "caught up" in human.stdout, human.stdout

    snap = cli("snapshot", db, "-c", config, "--name", "pre-migration", "--timeout", "60")
    assert snap.returncode == 0, snap.stderr
    assert "named pre-migration" in snap.stdout
    assert stop(proc) == 0, log.read_text()[-2000:]
    listed = cli("snapshots", f"file://{tmp_path}/replica")
    assert "pre-migration" in listed.stdout
    assert not (spool_dir(str(db)) / control.SOCKET_NAME).exists()

    offline = cli("status", "-c", config, "--json")
    assert offline.returncode == 0, offline.stderr
    [entry2] = json.loads(offline.stdout)
    assert entry2["running"] is False
    assert entry2["txid"] == entry["txid"] == entry2["replicas"][0]["replicated_txid"]  # a snapshot takes no txid
    conn.close()


def test_sync_without_a_running_replicator_ships_by_itself(tmp_path):
    db, conn, config = _setup(tmp_path, "1s")
    for i in range(50):
        conn.execute("INSERT INTO t(v) VALUES (?)", (f"value {i}",))
    synced = cli("sync", db, "-c", config)
    assert synced.returncode == 0, synced.stderr
    assert "on 1/1 replica(s)" in synced.stdout
    assert _restored_hash(tmp_path, "b.db") == content_hash(db)
    st = json.loads(cli("status", db, "-c", config, "--json").stdout)
    assert st[0]["running"] is False and st[0]["replicas"][0]["replicated_txid"] == st[0]["txid"]
    conn.close()


def test_sync_of_an_unreachable_replica_fails_in_one_line(tmp_path):
    db, conn, _ = _setup(tmp_path, "1s")
    config = tmp_path / "bad.yml"
    config.write_text(f"dbs:\n  - path: {db}\n    replicas:\n      - url: s3://bucket/x\n"
                      "        endpoint: http://127.0.0.1:9\n        region: us-east-1\n"
                      "        access-key-id: AKIAXXXXXXXX\n        secret-access-key: s3cr3t-value\n")
    config.chmod(0o600)
    log = tmp_path / "run.log"
    proc = start_replicator(["run", "-c", config], log)
    wait_for(lambda: "replicating" in log.read_text(), 30, "the daemon to take up the tail")
    conn.execute("INSERT INTO t(v) VALUES ('x')")
    synced = cli("sync", "-c", config, "--timeout", "2")
    assert synced.returncode == 1
    assert synced.stderr.strip().count("\n") == 0 and synced.stderr.startswith("error: ")
    assert "behind:" in synced.stdout and "s3cr3t-value" not in synced.stdout + synced.stderr
    stop(proc)
    conn.close()


def test_sync_of_a_database_with_no_replicas_and_no_daemon_is_one_line(tmp_path):
    db, conn, _ = _setup(tmp_path, "1s")
    synced = cli("sync", db, "--timeout", "3")
    assert synced.returncode == 2 and "Traceback" not in synced.stderr
    assert synced.stderr.startswith("error: no replicas configured for"), synced.stderr
    conn.close()
