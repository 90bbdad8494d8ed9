"""The local spool beside each database (`<db>-replicator/`).

It holds (1) every replica object not yet acknowledged by every replica, in the replica
layout, so a replica that is down loses nothing and catches up later; and (2) the tail state:
generation, WAL position and per-page hashes, so a restarted replicator can prove
continuity and carry on in the same generation instead of taking a new snapshot.

Tail state = `state/base.bin` (a full copy) + `state/log.bin` (one record per spooled batch:
position and the page hashes that changed). A record is appended only after its segment is
durable in the spool, so the state never claims more than the spool holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import threading
import json
import os
import struct
import zlib
from array import array
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from .dbhash import DbChecksum
from .source import Position
from .storage.base import ObjectInfo
from .storage.file import FileStorage, fsync_dir

_LEN = struct.Struct("<II")  # payload length, crc32
LOG_COMPACT_FACTOR = 4  # rewrite the base once the log is this many times its size


@dataclasses.dataclass
class TailState:
    generation: str
    pos: Position
    checksum: DbChecksum


def spool_dir(db_path: str) -> Path:
    p = Path(db_path)
    return p.with_name(p.name + "-replicator")


class Spool:
    def __init__(self, db_path: str):
        self.dir = spool_dir(db_path)
        # Not fsynced per batch: copied frames stay in the WAL until our own checkpoint lets
        # the WAL restart, and the daemon syncs the spool before each checkpoint round.
        self.objects = IndexedObjects(FileStorage(self.dir / "objects", url=f"spool:{self.dir}",
                                                  durable=False))
        self.state_dir = self.dir / "state"
        self.requests_dir = self.dir / "requests"
        self._lock_fd = -1
        self._log_fd = -1
        # sync() runs on the checkpoint thread while the copy loop appends (and save_base
        # replaces the log's descriptor): the descriptor is only used under this lock.
        self._log_lock = threading.Lock()
        self._log_size = 0
        self._base_size = 0

    # -- single daemon per database ---------------------------------------------------

    def try_lock(self) -> bool:
        """Take the spool's flock (held for the daemon's lifetime); False if another holds it.

        The spool's directories are created here, not before: a database that is rejected
        (not SQLite, unreadable) leaves nothing behind.
        """
        for d in (self.dir, self.state_dir, self.requests_dir, self.dir / "objects"):
            d.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        with self._log_lock:
            if self._log_fd >= 0:
                os.close(self._log_fd)
                self._log_fd = -1

    # -- tail state -------------------------------------------------------------------

    @staticmethod
    def _frame(payload: bytes) -> bytes:
        return _LEN.pack(len(payload), zlib.crc32(payload)) + payload

    @staticmethod
    def _meta(generation: str, pos: Position, checksum: DbChecksum) -> dict:
        return {"generation": generation, "salts": list(pos.salts), "frame": pos.frame,
                "frame_cksum": list(pos.frame_cksum), "txid": pos.txid,
                "page_size": checksum.page_size, "n_pages": checksum.n_pages,
                "db_checksum": checksum.value}

    def save_base(self, generation: str, pos: Position, checksum: DbChecksum) -> None:
        """A full copy of the tail state; empties the log."""
        meta = json.dumps(self._meta(generation, pos, checksum)).encode()
        payload = self._frame(meta) + self._frame(checksum.hashes.tobytes())
        tmp = self.state_dir / "base.bin.tmp"
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        with self._log_lock:
            if self._log_fd >= 0:
                os.close(self._log_fd)
            os.replace(tmp, self.state_dir / "base.bin")
            self._log_fd = os.open(self.state_dir / "log.bin",
                                   os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        fsync_dir(self.state_dir)
        self._log_size, self._base_size = 0, len(payload)

    def append(self, generation: str, pos: Position, checksum: DbChecksum, changed: set[int]) -> None:
        """Record one spooled batch: new position and the hashes of the pages it changed."""
        if self._log_fd < 0 or self._log_size > LOG_COMPACT_FACTOR * max(self._base_size, 1 << 20):
            self.save_base(generation, pos, checksum)
            return
        meta = json.dumps(self._meta(generation, pos, checksum)).encode()
        pairs = array("Q")
        for pgno in sorted(changed):
            if pgno <= checksum.n_pages:
                pairs.append(pgno)
                pairs.append(checksum.hashes[pgno - 1])
        rec = self._frame(self._frame(meta) + pairs.tobytes())
        # No fsync: a lost record only makes a restart re-copy from the WAL or start a new
        # generation; it can never claim more than the spool holds (written after it).
        with self._log_lock:
            os.write(self._log_fd, rec)
        self._log_size += len(rec)

    def sync(self) -> None:
        """Make spooled objects and the tail state durable (before frames may leave the WAL)."""
        self.objects.sync()
        with self._log_lock:
            if self._log_fd >= 0:
                os.fsync(self._log_fd)

    def load(self) -> TailState | None:
        """The last durable tail state, or None (no state, or it does not parse)."""
        try:
            base = (self.state_dir / "base.bin").read_bytes()
        except FileNotFoundError:
            return None
        try:
            meta_raw, rest = _unframe(base)
            hashes_raw, _ = _unframe(rest)
            meta = json.loads(meta_raw)
            ck = DbChecksum(meta["page_size"])
            ck.hashes = array("Q", hashes_raw)
            try:
                log = (self.state_dir / "log.bin").read_bytes()
            except FileNotFoundError:
                log = b""
            while log:
                try:
                    rec, log = _unframe(log)
                except ValueError:
                    break  # a torn final record: the batch it describes is not trusted
                meta_raw, pairs_raw = _unframe(rec)
                meta = json.loads(meta_raw)
                ck.resize(meta["n_pages"])
                pairs = array("Q", pairs_raw)
                for i in range(0, len(pairs), 2):
                    ck.hashes[pairs[i] - 1] = pairs[i + 1]
            value = 0
            for h in ck.hashes:
                value ^= h
            ck.value = value
            if value != meta["db_checksum"]:
                return None
            pos = Position(tuple(meta["salts"]), meta["frame"], tuple(meta["frame_cksum"]), meta["txid"])
            return TailState(meta["generation"], pos, ck)
        except (ValueError, KeyError, TypeError):
            return None

    def clear_state(self) -> None:
        for name in ("base.bin", "log.bin"):
            (self.state_dir / name).unlink(missing_ok=True)


class IndexedObjects:
    """The spool's objects with an in-memory index, so listing costs no directory walk.

    Valid because one process owns the spool (its flock): every change goes through here.
    The index is built by one walk on first use.
    """

    def __init__(self, inner: FileStorage):
        self.inner = inner
        self.url = inner.url
        self._index: dict[str, ObjectInfo] | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> dict[str, ObjectInfo]:
        if self._index is None:
            self._index = {o.key: o for o in self.inner.list()}
        return self._index

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)
        with self._lock:
            self._ensure()[key] = ObjectInfo(key, len(data))

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        with self.inner.writer(key) as out:
            yield out
        with self._lock:
            self._ensure()[key] = self.inner.stat(key)

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        with self._lock:
            infos = sorted((o for k, o in self._ensure().items() if k.startswith(prefix)),
                           key=lambda o: o.key)
        return iter([o for o in infos if start_after is None or o.key > start_after])

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        self.inner.delete_many(keys)
        with self._lock:
            index = self._ensure()
            for key in keys:
                index.pop(key, None)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        return self.inner.open(key, offset, length)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def sync(self) -> None:
        self.inner.sync()


def _unframe(data: bytes) -> tuple[bytes, bytes]:
    if len(data) < _LEN.size:
        raise ValueError("short record")
    n, crc = _LEN.unpack_from(data)
    payload = data[_LEN.size:_LEN.size + n]
    if len(payload) != n or zlib.crc32(payload) != crc:
        raise ValueError("torn record")
    return payload, data[_LEN.size + n:]
