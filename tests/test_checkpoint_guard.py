"""checkpoint_guard.py: another process's checkpoints skip while we hold the lock; ours run."""

from __future__ import annotations

import subprocess
import sys

import apsw
import pytest

from replicator.checkpoint_guard import CheckpointGuard
from replicator.errors import SourceError

_OTHER_PROCESS_CHECKPOINT = """
import apsw, sys
conn = apsw.Connection(sys.argv[1])
conn.execute("INSERT INTO t VALUES (2)")
try:
    print(conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE))
except apsw.BusyError:
    print("busy")
"""


def _db(tmp_path) -> tuple[str, apsw.Connection]:
    path = str(tmp_path / "app.db")
    conn = apsw.Connection(path)
    for sql in ("PRAGMA journal_mode=wal", "CREATE TABLE t(x)", "INSERT INTO t VALUES (1)"):
        conn.execute(sql).fetchall()
    return path, conn


def _checkpoint_elsewhere(path: str) -> str:
    return subprocess.run([sys.executable, "-c", _OTHER_PROCESS_CHECKPOINT, path], check=True,
                          capture_output=True, text=True, timeout=30).stdout.strip()


def test_other_processes_checkpoint_only_while_the_guard_is_not_held(tmp_path):
    path, conn = _db(tmp_path)
    guard = CheckpointGuard(path + "-shm")
    try:
        assert guard.acquire()
        assert _checkpoint_elsewhere(path) == "busy"
        # Our own connections checkpoint through it (the lock belongs to this process) ...
        log_frames, backfilled = conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        assert log_frames == backfilled > 0
        # ... and SQLite's unlock afterwards dropped it: taking it again restores the guard.
        assert _checkpoint_elsewhere(path) != "busy"
        assert guard.acquire()
        assert _checkpoint_elsewhere(path) == "busy"
    finally:
        conn.close()
        guard.close()
    assert _checkpoint_elsewhere(path) != "busy"


def test_acquire_fails_while_another_process_checkpoints(tmp_path):
    path, conn = _db(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX, 1, 121, os.SEEK_SET)\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"), path + "-shm"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    guard = CheckpointGuard(path + "-shm")
    with holder:
        try:
            assert holder.stdout.readline().strip() == "held"
            assert not guard.acquire()
            holder.stdin.close()
            holder.wait(30)
            assert guard.acquire()
        finally:
            holder.kill()
            conn.close()
            guard.close()


_OTHER_PROCESS_WRITER = """
import apsw, sys
conn = apsw.Connection(sys.argv[1])
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO t VALUES (3)")
print("writing", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
print("committed", flush=True)
sys.stdin.readline()
conn.set_busy_timeout(0)
try:
    conn.execute("INSERT INTO t VALUES (4)")
    print("wrote")
except apsw.BusyError:
    print("busy")
"""


def test_the_fence_waits_for_another_process_to_commit_and_releases_the_lock_after(tmp_path):
    """The write lock is waited for outside SQLite (no GIL), taken the moment the other
    process commits, and goes with SQLite's own unlock when the fence ends."""
    from replicator.handles import DbHandles

    path, conn = _db(tmp_path)
    conn.close()
    src = DbHandles(path, busy_timeout_s=0.2)
    src.open()
    writer = subprocess.Popen([sys.executable, "-c", _OTHER_PROCESS_WRITER, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    with writer:
        try:
            assert writer.stdout.readline().strip() == "writing"
            with pytest.raises(SourceError, match="could not take the write lock"):
                with src.fence():
                    pass
            writer.stdin.write("\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == "committed"
            with src.fence():
                assert src.index_header().mx_frame >= 1  # the other process's commit is there
            writer.stdin.write("\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == "wrote"  # the lock went with the fence
        finally:
            writer.kill()
            src.close()
