"""notify.py: the sd_notify protocol against a real datagram socket, and `replicator run`
under it (a real subprocess): READY once every database replicates, watchdog pings only
while the workers make progress."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import apsw
import pytest

from replicator.notify import Notifier

from integration.harness import reap, start_replicator, stop, wait_for
from notifysocket import NotifySocket


@pytest.fixture(autouse=True)
def _reap_processes():
    yield
    reap()


@pytest.fixture
def notify_socket():
    s = NotifySocket()
    yield s
    s.close()


def test_messages_reach_a_socket_by_path():
    with tempfile.TemporaryDirectory(dir="/tmp") as d:  # short: AF_UNIX paths are limited to 108 bytes
        path = os.path.join(d, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            n = Notifier.from_environ({"NOTIFY_SOCKET": path})
            assert n.ready("replicating 1 of 1 databases")
            assert sock.recv(4096) == b"READY=1\nSTATUS=replicating 1 of 1 databases"
            n.close()


def test_abstract_names_and_every_message_kind(notify_socket):
    n = Notifier.from_environ(notify_socket.env())
    assert n.enabled
    n.status("s")
    n.reloading()
    n.watchdog()
    n.stopping("bye")
    wait_for(lambda: len(notify_socket.messages) == 4, 10, "four datagrams", interval=0.01)
    kinds = [m for _, m in notify_socket.messages]
    assert kinds[0] == {"STATUS": "s"}
    assert kinds[1]["RELOADING"] == "1" and int(kinds[1]["MONOTONIC_USEC"]) > 0
    assert kinds[2] == {"WATCHDOG": "1"}
    assert kinds[3] == {"STOPPING": "1", "STATUS": "bye"}
    n.close()


def test_without_notify_socket_nothing_is_sent():
    n = Notifier.from_environ({})
    assert not n.enabled and n.watchdog_s is None
    assert not n.ready("x")


def test_a_socket_that_went_away_is_logged_once_and_never_raises(caplog):
    n = Notifier("@replicator-test-nobody-listens-here")
    assert not n.watchdog()
    assert not n.watchdog()
    n.close()
    assert caplog.text.count("cannot notify the service manager") == 1


@pytest.mark.parametrize("pid, expected", [(None, 2.5), ("self", 2.5), ("1", None)])
def test_the_watchdog_period_is_ours_only_when_watchdog_pid_names_us(pid, expected):
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "2500000"}
    if pid is not None:
        env["WATCHDOG_PID"] = str(os.getpid()) if pid == "self" else pid
    assert Notifier.from_environ(env).watchdog_s == expected


# -- replicator run under the protocol ------------------------------------------------------


def _db(path: Path) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(2000)
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)"))
    return conn


def _config(tmp_path: Path, dbs: list[Path], extra: str = "") -> Path:
    config = tmp_path / "replicator.yml"
    config.write_text("dbs:\n" + "".join(
        f"  - path: {db}\n{extra}    replicas:\n      - url: file://{tmp_path}/r-{db.stem}\n" for db in dbs))
    return config


def test_ready_only_once_every_database_replicates(tmp_path, notify_socket):
    """b.db does not exist at start: STATUS says run waits for it and READY waits too; once
    the application creates it, READY=1 follows its 'replicating' line."""
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    conn_a = _db(a)
    log = tmp_path / "run.log"
    proc = start_replicator(["run", "-c", str(_config(tmp_path, [a, b]))], log, env=notify_socket.env())
    wait_for(lambda: notify_socket.received("STATUS", f"replicating 1 of 2 databases; waiting for {b}"), 30,
             "a status naming the missing database")
    assert not notify_socket.received("READY")
    conn_b = _db(b)
    ready = wait_for(lambda: notify_socket.received("READY", "1"), 30, "READY=1")
    assert ready[0]["STATUS"] == "replicating 2 of 2 databases"
    assert f"replicating {a} to " in log.read_text() and f"replicating {b} to " in log.read_text()
    assert stop(proc) == 0, log.read_text()[-2000:]
    assert notify_socket.received("STOPPING", "1")
    conn_a.close()
    conn_b.close()


def test_watchdog_pings_stop_when_a_worker_wedges(tmp_path, notify_socket):
    """With WATCHDOG_USEC=2s the daemon pings every second; its worker then wedges at
    its 4th step (a fault point that blocks the thread for good): the pings stop, so
    systemd would restart it."""
    db = tmp_path / "a.db"
    conn = _db(db)
    log = tmp_path / "run.log"
    env = {**notify_socket.env(watchdog_usec=2_000_000), "REPLICATOR_HANG_AT": "worker-step:4"}
    start_replicator(["run", "-c", str(_config(tmp_path, [db], "    monitor-interval: 300ms\n"))], log, env=env)
    wait_for(lambda: len(notify_socket.received("WATCHDOG", "1")) >= 2, 30, "watchdog pings")
    wait_for(lambda: "watchdog: not pinging" in log.read_text(), 30, "the stall to be noticed")
    assert f"no progress in {db} (its worker" in log.read_text()
    time.sleep(0.2)  # a ping sent just before the log line was written may still be arriving
    quiet_from = time.monotonic()
    time.sleep(4.0)  # two watchdog periods: a healthy daemon pings four times in them
    assert notify_socket.received("WATCHDOG", since=quiet_from) == []
    assert "makes progress again" not in log.read_text()
    conn.close()


def test_watchdog_pings_go_on_while_idle(tmp_path, notify_socket):
    """An idle daemon (nothing written, workers in their waits) is not stalled."""
    db = tmp_path / "a.db"
    conn = _db(db)
    log = tmp_path / "run.log"
    proc = start_replicator(["run", "-c", str(_config(tmp_path, [db], "    monitor-interval: 5s\n"))], log,
                            env=notify_socket.env(watchdog_usec=400_000))
    wait_for(lambda: notify_socket.received("READY"), 30, "READY=1")
    start = time.monotonic()
    wait_for(lambda: len(notify_socket.received("WATCHDOG", since=start)) >= 8, 30, "pings across idle wake-ups")
    assert "watchdog: not pinging" not in log.read_text()
    assert stop(proc) == 0
    conn.close()
