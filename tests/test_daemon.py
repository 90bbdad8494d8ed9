"""daemon.py: every database supervised alone; one that fails never stops another."""

from __future__ import annotations

import logging
import time
from pathlib import Path

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


def test_a_reload_names_the_keys_that_wait_for_a_restart(caplog):
    from replicator.config import ListenAddr

    daemon = Daemon(Config(dbs=(), addr=ListenAddr("127.0.0.1", 9090)))
    with caplog.at_level(logging.INFO):
        daemon._reload(lambda: Config(dbs=(), addr=ListenAddr("127.0.0.1", 9091), exec="app"), None)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["reload: exec changed; it takes effect when replicator is restarted",
                      "reload: addr changed; it takes effect when replicator is restarted"]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        daemon._reload(lambda: Config(dbs=(), addr=ListenAddr("127.0.0.1", 9091), exec="app"), None)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]  # nothing changed now


# -- run as a real process: SIGHUP reloads, --exec, --restore-if-db-not-exists -------------

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from integration.harness import BIN, reap, start_replicator, stop  # noqa: E402
from notifysocket import NotifySocket  # noqa: E402


@pytest.fixture
def reaped():
    yield
    reap()


def _write_config(path, dbs, tmp_path, extra=""):
    path.write_text("dbs:\n" + "".join(
        f"  - path: {db}\n{extra}    replicas:\n      - url: file://{tmp_path}/r-{db.stem}\n" for db in dbs))
    return path


def _insert(conn, n, text="row"):
    for i in range(n):
        conn.execute("INSERT INTO t(v) VALUES (?)", (f"{text} {i}".encode(),))


def test_sighup_adds_removes_and_restarts_databases(tmp_path, reaped):
    a, b, c = tmp_path / "a.db", tmp_path / "b.db", tmp_path / "c.db"
    conns = {p: _db(p) for p in (a, b, c)}
    config = _write_config(tmp_path / "replicator.yml", [a, b], tmp_path)
    log = tmp_path / "run.log"
    sock = NotifySocket()
    try:
        proc = start_replicator(["run", "-c", str(config)], log, env=sock.env())
        wait_for(lambda: sock.received("READY"), 30, "READY=1")
        _insert(conns[a], 20)
        _insert(conns[b], 20)
        # a goes, b changes (a setting of its own), c comes
        _write_config(config, [b, c], tmp_path, extra="    monitor-interval: 200ms\n")
        since = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in log.read_text(), 60, "the reload")
        assert "1 added, 1 removed, 1 restarted, 0 unchanged" in log.read_text()
        assert sock.received("RELOADING", "1", since=since)
        wait_for(lambda: sock.received("READY", "1", since=since), 30, "READY=1 after the reload")
        wait_for(lambda: sock.received("STATUS", "replicating 2 of 2 databases", since=since), 30,
                 "b and c replicating")
        _insert(conns[a], 5, "after")  # a is no longer replicated: these stay out of its replica
        a_at_reload = _restored(tmp_path / "r-a", tmp_path / "o.db")
        _insert(conns[b], 20, "after")
        _insert(conns[c], 20, "after")
        assert stop(proc) == 0, log.read_text()[-3000:]
    finally:
        sock.close()
    text = log.read_text()
    assert text.count(f"{b}: resuming generation") == 1  # restarted, its history unbroken
    assert _restored(tmp_path / "r-a", tmp_path / "o.db") == a_at_reload != content_hash(a)
    for db in (b, c):
        assert _restored(tmp_path / f"r-{db.stem}", tmp_path / "o.db") == content_hash(db)
    for conn in conns.values():
        conn.close()


@pytest.mark.parametrize("bad", ["dbs: [", "dbs:\n  - path: /nonexistent-dir/x.db\n    replicas:\n      - url: file:///tmp/x\n",
                                 "dbs: []\nunknown-key: 1\n"])
def test_sighup_with_a_bad_config_keeps_the_old_one_running(tmp_path, reaped, bad):
    a = tmp_path / "a.db"
    conn = _db(a)
    config = _write_config(tmp_path / "replicator.yml", [a], tmp_path)
    log = tmp_path / "run.log"
    proc = start_replicator(["run", "-c", str(config)], log)
    wait_for(lambda: f"replicating {a} to " in log.read_text(), 30, "the daemon to start")
    config.write_text(bad)
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in log.read_text(), 30, "the refusal")
    refusal = [line for line in log.read_text().splitlines() if "reload refused" in line]
    assert len(refusal) == 1 and str(config) in refusal[0] and "Traceback" not in log.read_text()
    _insert(conn, 30)
    assert proc.poll() is None
    assert stop(proc) == 0, log.read_text()[-2000:]
    assert _restored(tmp_path / "r-a", tmp_path / "o.db") == content_hash(a)
    conn.close()


APP = """
import sys, apsw
conn = apsw.Connection(sys.argv[1])
conn.set_busy_timeout(5000)
conn.execute("PRAGMA journal_mode=wal")
conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB)")
for i in range(int(sys.argv[2])):
    conn.execute("INSERT INTO t(v) VALUES (?)", (b"app %d" % i,))
conn.close()
sys.exit(int(sys.argv[3]))
"""


@pytest.mark.parametrize("code", [0, 3])
def test_exec_runs_the_application_and_exits_with_its_code(tmp_path, reaped, code):
    """run --exec: the application (a real process that creates the database, commits 200
    transactions and exits) ends replication after a final sync, and run exits with its code."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    db = tmp_path / "app.db"
    config = _write_config(tmp_path / "replicator.yml", [db], tmp_path)
    proc = subprocess.run([str(BIN), "run", "-c", str(config), "--exec", f"{sys.executable} {app} {db} 200 {code}"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == code, proc.stderr[-3000:]
    assert f"exited with code {code}" in proc.stderr
    assert _restored(tmp_path / "r-app", tmp_path / "o.db") == content_hash(db)
    assert apsw.Connection(str(tmp_path / "o.db")).execute("SELECT count(*) FROM t").fetchone()[0] == 200


def test_exec_from_the_config_and_signals_forwarded(tmp_path, reaped):
    """The config's exec key works like --exec; SIGTERM goes to the application, whose exit
    (here by that signal: 128 + 15) ends run."""
    db = tmp_path / "a.db"
    conn = _db(db)
    config = _write_config(tmp_path / "replicator.yml", [db], tmp_path)
    marker = tmp_path / "child-started"
    config.write_text(f"exec: sh -c 'touch {marker}; exec sleep 600'\n" + config.read_text())
    log = tmp_path / "run.log"
    proc = start_replicator(["run", "-c", str(config)], log)
    wait_for(marker.exists, 30, "the child to start")
    wait_for(lambda: f"replicating {db} to " in log.read_text(), 30, "replication to start")
    _insert(conn, 10)
    assert stop(proc) == 128 + signal.SIGTERM, log.read_text()[-2000:]
    assert "forwarding signal 15" in log.read_text()
    assert _restored(tmp_path / "r-a", tmp_path / "o.db") == content_hash(db)
    conn.close()


def test_exec_of_a_missing_program_is_one_line(tmp_path, reaped):
    db = tmp_path / "a.db"
    _db(db).close()
    config = _write_config(tmp_path / "replicator.yml", [db], tmp_path)
    proc = subprocess.run([str(BIN), "run", "-c", str(config), "--exec", "/nonexistent/app --flag"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "error: exec: cannot run /nonexistent/app: No such file or directory" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("verb", ["run", "replicate"])
def test_restore_if_db_not_exists_brings_a_missing_database_back(tmp_path, reaped, verb):
    db = tmp_path / "a.db"
    conn = _db(db)
    _insert(conn, 50)
    config = _write_config(tmp_path / "replicator.yml", [db], tmp_path)
    args = ["run", "-c", str(config)] if verb == "run" else ["replicate", str(db), f"file://{tmp_path}/r-a"]
    log = tmp_path / "run.log"
    proc = start_replicator(args, log)
    wait_for(lambda: f"replicating {db} to " in log.read_text(), 30, "the first run to start")
    assert stop(proc) == 0
    conn.close()
    before = content_hash(db)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    proc = start_replicator([*args[:1], "--restore-if-db-not-exists", *args[1:]], log)
    wait_for(lambda: log.read_text().count(f"replicating {db} to ") == 2, 60, "the second run to start")
    assert f"restored {db} from file://{tmp_path}/r-a" in log.read_text()
    assert content_hash(db) == before
    conn = apsw.Connection(str(db))
    conn.set_busy_timeout(2000)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    _insert(conn, 10, "after")  # replication goes on from the restored database
    assert stop(proc) == 0, log.read_text()[-2000:]
    assert _restored(tmp_path / "r-a", tmp_path / "o.db") == content_hash(db) != before
    conn.close()
