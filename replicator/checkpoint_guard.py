"""Owning SQLite's checkpointer lock while replicating, so the application's checkpoints skip.

Every SQLite checkpoint first takes the WAL_CKPT_LOCK, a byte lock on the -shm file, and
returns SQLITE_BUSY at once (without calling the busy handler) when another process holds
it. While our read transaction pins the WAL, an application's autocheckpoint runs after
every commit once the WAL passes 1000 frames, and each one that finds frames below our read
mark does our backfill inside the application's commit: a walk over the frames and two
fsyncs. Holding the lock turns each of those into one failed fcntl, and the replicator's
two-phase checkpoint (design 4.4) backfills off the application's path. The lock goes away
with the process, so a stopped or crashed replicator hands checkpointing back.

It is a POSIX record lock, which belongs to the process: our own connections' checkpoints
take it on top without conflict, and SQLite drops it when they unlock, so the guard is
re-taken after each of ours (and on every wake-up, in case an application checkpoint won the
lock in between). It is never released explicitly while our connections are open: that could
drop the lock from under a checkpoint of ours in progress and let a second one start.
"""

from __future__ import annotations

import errno
import fcntl
import os

try:
    from . import _shmlock
except ImportError:  # built by `pip install` where a C compiler is present
    _shmlock = None

# os_unix.c: UNIX_SHM_BASE = (22 + SQLITE_SHM_NLOCK) * 4 = 120; wal.c: WAL_WRITE_LOCK = 0,
# WAL_CKPT_LOCK = 1.
WRITE_LOCK_BYTE = 120
CKPT_LOCK_BYTE = 121


class CheckpointGuard:
    def __init__(self, shm_path: str):
        self._fd = os.open(shm_path, os.O_RDWR)

    def acquire(self) -> bool:
        """Take (or keep) the lock unless the application is checkpointing right now."""
        if self._fd < 0:
            return False
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, CKPT_LOCK_BYTE, os.SEEK_SET)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def wait_write_lock(self, timeout_s: float) -> bool | None:
        """Take SQLite's WAL write lock for this process as soon as the writer lets go of it
        (None: not possible here, use BEGIN IMMEDIATE's busy handler alone).

        The caller's connection then begins its write transaction at once (the process
        holds the byte), and SQLite's unlock at its end releases ours too. Should that
        connection fail to begin, release_write_lock() must be called.
        """
        if self._fd < 0 or _shmlock is None:
            return None
        return _shmlock.wait_write_lock(self._fd, WRITE_LOCK_BYTE, timeout_s)

    def release_write_lock(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, WRITE_LOCK_BYTE, os.SEEK_SET)

    def close(self) -> None:
        """Only after SQLite's connections are closed: see source.py on closing descriptors."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
