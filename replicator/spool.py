"""The local spool beside each database (`<db>-replicator/`).

It holds (1) every replica object not yet acknowledged by every replica, in the replica
layout, so a replica that is down loses nothing and catches up later; and (2) the tail state:
generation, WAL position and per-page hashes, so a restarted replicator can prove
continuity and carry on in the same generation instead of taking a new snapshot.

Tail state = `state/base.bin` (a full copy, always durable) + `state/log.bin` (one record
per spooled batch: position and the page hashes that changed; written after the batch's
objects, not fsynced). `sync()` makes the objects durable first and only then appends a
*marker* naming how much of the log they cover, and fsyncs the log. What a restart trusts
(`load`): in the same boot (the page cache survived: every record is readable along with the
objects it names) the whole log; after a reboot only the records covered by the last marker,
since the kernel may have written a log record back before the objects it names.
Each log begins with its base's id, so a log left from before a crash during `save_base`
is never applied to the new base.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import struct
import threading
import zlib
from array import array
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from . import faults
from .dbhash import DbChecksum
from .errors import SpoolError
from .storage.base import ObjectInfo, StorageError
from .storage.file import FileStorage, create_exclusive, fsync_dir
from .tail import Position

_LEN = struct.Struct("<II")  # payload length, crc32
LOG_COMPACT_FACTOR = 4  # rewrite the base once the log is this many times its size
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


@dataclasses.dataclass
class TailState:
    generation: str
    pos: Position
    checksum: DbChecksum
    db_ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the database file it follows


def spool_dir(db_path: str) -> Path:
    p = Path(db_path)
    return p.with_name(p.name + "-replicator")


def spool_mode(db_path: str) -> int:
    """The spool holds the database's pages: its directory gets the database's permission
    bits (read implying search), so a 0600 database's spool is 0700, not the umask's 0755;
    a group that may read the database may read its spool. Every file below is reached
    through this directory, whatever its own mode. Unknown (no file yet): owner only."""
    try:
        mode = os.stat(db_path).st_mode & 0o777
    except OSError:
        return 0o700
    return 0o700 | mode | ((mode & 0o044) >> 2)


def boot_id() -> str:
    """Changes with every boot: tells a process crash (page cache intact) from an OS crash."""
    try:
        return Path(BOOT_ID_PATH).read_text().strip()
    except OSError:
        return ""  # unknown: every restart is treated as after a reboot (the safe side)


class Spool:
    def __init__(self, db_path: str, boot: str | None = None):
        self.db_path = db_path
        self.dir = spool_dir(db_path)
        # Not fsynced per batch: sync() makes them durable before any frame they hold may
        # leave the WAL (design 5a).
        self.objects = IndexedObjects(FileStorage(self.dir / "objects", url=f"spool:{self.dir}",
                                                  durable=False, file_mode=spool_mode(db_path) & 0o666))
        self.state_dir = self.dir / "state"
        self.boot = boot_id() if boot is None else boot
        self._lock_fd = -1
        self._log_fd = -1
        # sync() runs on the checkpoint thread while the copy loop appends (and save_base
        # replaces the log): the log's descriptor and these fields change only under it.
        self._log_lock = threading.Lock()
        self._log_id = ""
        self._log_size = 0
        self._base_size = 0
        self._durable = ("", 0)  # (log id, log bytes covered by the last successful sync)
        # After a failed fsync the kernel may have dropped what it could not write, and a
        # later fsync would "succeed" over the loss: no sync succeeds until save_base has
        # restarted the state from a durable point (the spooler rolls back).
        self._poisoned = False
        self._sync_lock = threading.Lock()

    # -- single daemon per database ---------------------------------------------------

    def try_lock(self) -> bool:
        """Take the spool's flock (held for the daemon's lifetime); False if another holds it.

        The spool's directories are created here, not before: a database that is rejected
        (not SQLite, unreadable) leaves nothing behind.
        """
        try:
            for d in (self.dir, self.state_dir, self.dir / "objects"):
                d.mkdir(parents=True, exist_ok=True)
            os.chmod(self.dir, spool_mode(self.db_path))
            fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            raise SpoolError(f"cannot create the spool {self.dir}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        return True

    def locked_elsewhere(self) -> bool:
        """Another process holds the spool's flock (a replicator runs for this database)."""
        try:
            fd = os.open(self.dir / "lock", os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        with self._log_lock:
            if self._log_fd >= 0:
                os.close(self._log_fd)
                self._log_fd = -1

    # -- writing the tail state --------------------------------------------------------

    @staticmethod
    def _frame(payload: bytes) -> bytes:
        return _LEN.pack(len(payload), zlib.crc32(payload)) + payload

    @staticmethod
    def _meta(generation: str, pos: Position, checksum: DbChecksum) -> dict:
        return {"generation": generation, "salts": list(pos.salts), "frame": pos.frame,
                "frame_cksum": list(pos.frame_cksum), "txid": pos.txid,
                "page_size": checksum.page_size, "n_pages": checksum.n_pages,
                "db_checksum": checksum.value}

    def save_base(self, state: TailState) -> None:
        """A full, durable copy of a tail state whose objects are durable; starts a new log."""
        log_id = secrets.token_hex(8)
        meta = self._meta(state.generation, state.pos, state.checksum) | {
            "log_id": log_id, "boot": self.boot, "db_ident": list(state.db_ident) if state.db_ident else None}
        payload = self._frame(json.dumps(meta).encode()) + self._frame(state.checksum.hashes.tobytes())
        tmp = self.state_dir / f"base.bin.tmp-{secrets.token_hex(4)}"
        try:
            with create_exclusive(tmp, spool_mode(self.db_path) & 0o666) as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            with self._log_lock:
                if self._log_fd >= 0:
                    os.close(self._log_fd)
                    self._log_fd = -1
                os.replace(tmp, self.state_dir / "base.bin")
                fd = os.open(self.state_dir / "log.bin",
                             os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW,
                             spool_mode(self.db_path) & 0o666)
                header = self._frame(self._frame(json.dumps({"log_id": log_id}).encode()))
                os.write(fd, header)
                os.fsync(fd)
                self._log_fd = fd
                self._log_id, self._log_size, self._base_size = log_id, len(header), len(payload)
                self._durable = (log_id, len(header))
                self._poisoned = False
            fsync_dir(self.state_dir)
        except OSError as err:
            raise SpoolError(f"cannot write the tail state in {self.state_dir}: {err.strerror}") from None
        finally:
            tmp.unlink(missing_ok=True)  # gone already once renamed

    def append(self, generation: str, pos: Position, checksum: DbChecksum, changed: set[int],
               embed: list[tuple[str, bytes]] | None = None) -> bool:
        """Record one spooled batch (after its objects): new position and the hashes of the
        pages it changed. Not durable until sync(). True when the log has grown enough that
        the caller should compact it (sync, then save_base).

        `embed` carries the batch's objects in the record itself: then the log's own fsync
        makes them durable, and the sync inside a checkpoint's fence needs no fsync of a new
        file and its directory (sync(exclude=...)); a restart after a reboot writes back any
        that did not reach the disk (`materialize`)."""
        meta = self._meta(generation, pos, checksum)
        pairs = array("Q")
        for pgno in sorted(changed):
            if pgno <= checksum.n_pages:
                pairs.append(pgno)
                pairs.append(checksum.hashes[pgno - 1])
        meta["n_pairs"] = len(pairs) // 2
        if embed:
            meta["embedded"] = [[key, len(data)] for key, data in embed]
        parts = [self._frame(json.dumps(meta).encode()), pairs.tobytes(), *(data for _, data in embed or ())]
        rec = self._frame(b"".join(parts))
        with self._log_lock:
            if self._log_fd < 0:
                raise SpoolError(f"{self.state_dir}: no tail state to append to (save_base first)")
            try:
                os.write(self._log_fd, rec)
            except OSError as err:
                raise SpoolError(f"cannot append to {self.state_dir / 'log.bin'}: {err.strerror}") from None
            self._log_size += len(rec)
            return self._log_size > LOG_COMPACT_FACTOR * max(self._base_size, 1 << 20)

    def sync(self, embedded: Iterable[str] = ()) -> None:
        """Make the spooled objects durable, then the log records that name them (objects
        whose keys are in `embedded` ride in their record: no fsync of their own now).

        The log's length is taken first: every record up to it was appended after its
        objects were put, so the objects pending at that moment include all of theirs.
        Raises SpoolError; a failure leaves nothing counted as durable that was not before
        (the caller rolls back to durable_state() and copies again from the WAL).
        """
        with self._sync_lock:  # one at a time: a sync must not return while another's fsyncs run
            if self._poisoned:
                raise SpoolError(f"the spool {self.dir} failed to sync; it must be rolled back first")
            with self._log_lock:
                log_id, covered = self._log_id, self._log_size
            try:
                self.objects.sync(exclude=embedded)
            except StorageError as err:
                self._poisoned = True
                raise SpoolError(f"cannot sync the spool {self.dir}: {err}") from None
            faults.point("sync-objects")
            with self._log_lock:
                if self._log_id != log_id or self._log_fd < 0:
                    return  # a save_base since: durable by itself, and it covers all of this
                marker = self._frame(self._frame(json.dumps({"synced_to": covered}).encode()))
                try:
                    os.write(self._log_fd, marker)
                    self._log_size += len(marker)
                    os.fsync(self._log_fd)
                except OSError as err:
                    self._poisoned = True
                    raise SpoolError(f"cannot sync {self.state_dir / 'log.bin'}: {err.strerror}") from None
                self._durable = (log_id, covered)

    def sync_everything(self) -> None:
        """fsync every spooled object (a previous run's, whose syncs we did not see)."""
        try:
            self.objects.sync_all()
        except StorageError as err:
            raise SpoolError(f"cannot sync the spool {self.dir}: {err}") from None

    # -- reading the tail state ----------------------------------------------------------

    def load(self) -> TailState | None:
        """What a restart may trust: the whole log in the same boot, else what the last
        marker covers. None when there is no state or it does not parse."""
        try:
            base, log = self._read()
        except OSError:
            return None
        meta = _base_meta(base)
        if meta is None:
            return None
        same_boot = bool(self.boot) and meta.get("boot") == self.boot
        embedded: list[tuple[str, memoryview]] = []
        state = _replay(base, log, None if same_boot else "markers", embedded)
        if state is not None and not same_boot:  # in the same boot the page cache kept every file
            self._materialize(embedded)
        return state

    def peek_state(self) -> TailState | None:
        """What a restart would trust, read only (for `status` while no replicator runs)."""
        try:
            base, log = self._read()
        except OSError:
            return None
        if _base_meta(base) is None:
            return None
        return _replay(base, log, "markers", [])

    def _materialize(self, embedded: list[tuple[str, memoryview]]) -> None:
        """Objects carried in trusted log records whose files did not survive (an OS crash
        after a fence's sync, before their own fsync) are written back from the log."""
        for key, data in embedded:
            try:
                if self.objects.get(key) == data:
                    continue
            except StorageError:
                pass
            self.objects.put(key, bytes(data))

    def durable_state(self) -> TailState | None:
        """In this process: the state as of the last successful sync (or save_base)."""
        with self._log_lock:
            log_id, covered = self._durable
        try:
            base, log = self._read()
        except OSError:
            return None
        meta = _base_meta(base)
        if meta is None or meta.get("log_id") != log_id:
            return None
        return _replay(base, log[:covered], None)

    def _read(self) -> tuple[bytes, bytes]:
        base = (self.state_dir / "base.bin").read_bytes()
        try:
            log = (self.state_dir / "log.bin").read_bytes()
        except FileNotFoundError:
            log = b""
        return base, log

    def clear_state(self) -> None:
        for name in ("base.bin", "log.bin"):
            (self.state_dir / name).unlink(missing_ok=True)


def _base_meta(base: bytes) -> dict | None:
    try:
        meta = json.loads(bytes(_unframe(base)[0]))
        return meta if isinstance(meta, dict) else None
    except ValueError:
        return None


def _replay(base: bytes, log: bytes, trust: str | None,
            embedded: list[tuple[str, memoryview]] | None = None) -> TailState | None:
    """Base + log records (all valid ones, or with trust="markers" only those covered by the
    last marker); None if anything disagrees. The objects the applied records carry are
    added to `embedded`."""
    try:
        meta_raw, rest = _unframe(base)
        hashes_raw, _ = _unframe(rest)
        meta = json.loads(bytes(meta_raw))
        ident = tuple(meta["db_ident"]) if meta.get("db_ident") else None
        ck = DbChecksum(meta["page_size"])
        ck.hashes = array("Q")
        ck.hashes.frombytes(hashes_raw)
        records: list[tuple[int, dict, memoryview]] = []  # (end offset, meta, pairs)
        covered, offset, first = 0, 0, True
        view = memoryview(log)
        while offset < len(log):
            try:
                rec, end = _unframe_at(view, offset)
            except ValueError:
                break  # a torn final record: the batch it describes is not trusted
            rec_meta_raw, pairs_raw = _unframe(rec)
            rec_meta = json.loads(bytes(rec_meta_raw))
            if first:
                if rec_meta.get("log_id") != meta.get("log_id"):
                    break  # a log from before the base was replaced: none of it applies
                first = False
            elif "synced_to" in rec_meta:
                covered = int(rec_meta["synced_to"])
            else:
                records.append((end, rec_meta, pairs_raw))
            offset = end
        for end, rec_meta, pairs_raw in records:
            if trust == "markers" and end > covered:
                break
            meta = rec_meta
            ck.resize(meta["n_pages"])
            n_pairs = meta.get("n_pairs", len(pairs_raw) // 16)
            pairs = array("Q")
            pairs.frombytes(pairs_raw[:16 * n_pairs])
            at = 16 * n_pairs
            for key, length in meta.get("embedded", ()):
                if embedded is not None:
                    embedded.append((key, pairs_raw[at:at + length]))
                at += length
            for i in range(0, len(pairs), 2):
                ck.hashes[pairs[i] - 1] = pairs[i + 1]
        value = 0
        for h in ck.hashes:
            value ^= h
        ck.value = value
        if value != meta["db_checksum"]:
            return None
        pos = Position(tuple(meta["salts"]), meta["frame"], tuple(meta["frame_cksum"]), meta["txid"])
        return TailState(meta["generation"], pos, ck, ident)  # type: ignore[arg-type]
    except (ValueError, KeyError, TypeError, IndexError):
        return None


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

    def sync(self, exclude: Iterable[str] = ()) -> None:
        self.inner.sync(exclude)

    def sync_all(self) -> None:
        self.inner.sync_all()


def _unframe_at(data: bytes | memoryview, offset: int) -> tuple[memoryview, int]:
    """The payload of the frame at `offset`, and the offset after it."""
    if len(data) - offset < _LEN.size:
        raise ValueError("short record")
    n, crc = _LEN.unpack_from(data, offset)
    start = offset + _LEN.size
    payload = memoryview(data)[start:start + n]
    if len(payload) != n or zlib.crc32(payload) != crc:
        raise ValueError("torn record")
    return payload, start + n


def _unframe(data: bytes | memoryview) -> tuple[memoryview, memoryview]:
    payload, end = _unframe_at(data, 0)
    return payload, memoryview(data)[end:]
