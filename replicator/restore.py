"""Executes a restore plan: fetch, apply, prove, rename into place.

Pages are written once: segments are applied newest first (a page already written by a
later transaction is skipped), then the snapshot fills only the pages no segment wrote. The
result is checked against the database checksum recorded for the target transaction and
against `PRAGMA integrity_check` before it is renamed over the output path.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import apsw

from . import layout, replica_meta
from .dbhash import page_hash
from .errors import CorruptObject, OutputExists, RestoreError
from .layout import SegmentInfo
from .plan import Plan, Target, plan_restore
from .prefetch import prefetch
from .segment import HEADER_SIZE, SnapshotReader, Transaction, decode_segment, parse_header
from .storage import NotFound, Storage, StorageError
from .storage.file import fsync_dir

log = logging.getLogger(__name__)

DEFAULT_PARALLELISM = 8  # concurrent segment downloads; decoding releases the GIL in zstd
# A restored file's pages all come from objects read: beyond this many pages no object wrote
# (zeros: a commit shrank the file, a later one regrew it), a claimed database size is a
# hostile or broken replica's, refused before the file is extended to it or hashed.
MAX_HOLE_PAGES = 1024
NEW_FILE_MODE = 0o600  # a restore holds a whole database: owner-only unless it replaces one

# (bytes done, bytes total) of the objects a restore downloads; called from worker threads.
# The CLI draws a progress bar with it: the library itself stays free of any UI.
Progress = Callable[[int, int], None]


class _Tally:
    """Adds up downloaded bytes (from several threads) and reports them."""

    def __init__(self, total: int, report: Progress | None):
        self.total, self.done, self._report = total, 0, report
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        if self._report is None or not n:
            return
        with self._lock:
            self.done += n
            done = self.done
        self._report(done, self.total)


class _CountingReader:
    """A snapshot stream that tells the tally how much of it has been read."""

    def __init__(self, f: BinaryIO, tally: _Tally):
        self._f, self._tally = f, tally

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._tally.add(len(data))
        return data


@dataclasses.dataclass(frozen=True)
class RestoreResult:
    output: str
    generation: str
    txid: int
    time_ns: int
    db_size_pages: int
    page_size: int
    snapshot_key: str
    segments: int
    seconds: float
    db_checksum: int = 0  # the database checksum the restored file was proven against


def restore(storage: Storage, output: str | os.PathLike, target: Target = Target(), *,
            force: bool = False, parallelism: int = DEFAULT_PARALLELISM, verify: bool = True,
            now_ns: Callable[[], int] = time.time_ns, mode: int | None = None,
            progress: Progress | None = None) -> RestoreResult:
    """`mode`: the restored file's permission bits (default: those of the file it replaces,
    else NEW_FILE_MODE: a copy of a 0600 database must not appear world-readable).
    `progress`: called with (bytes downloaded, bytes to download) from worker threads."""
    started = time.monotonic()
    out = Path(output)
    if out.exists() and not force:
        raise OutputExists(f"output file {out} already exists", "use --force to overwrite it")
    if not out.parent.is_dir():
        raise RestoreError(f"output directory {out.parent} does not exist")
    with cf.ThreadPoolExecutor(1) as pool:  # two requests at once: replica.json and the LIST
        checked = pool.submit(replica_meta.check_readable, storage)
        try:
            first_listing = layout.parse_listing(storage.list(layout.GENERATIONS))
        finally:
            checked.result()  # a missing or needless age identity: its one line comes first
    if mode is None:
        mode = (out.stat().st_mode & 0o7777) if out.exists() else NEW_FILE_MODE
    tmp = out.with_name(f".{out.name}.restoring-{secrets.token_hex(8)}")
    try:
        for attempt in (1, 2):
            listing = first_listing if attempt == 1 else layout.parse_listing(storage.list(layout.GENERATIONS))
            plan = plan_restore(listing, target, now_ns())
            try:
                result = _apply(storage, plan, tmp, parallelism, _Tally(plan.download_bytes, progress))
                break
            except NotFound as err:
                # The compactor merged or retired an object of the plan since the listing:
                # plan again from a fresh one (once: a second miss is a real hole).
                tmp.unlink(missing_ok=True)
                if attempt == 2:
                    raise RestoreError(f"cannot read replica: {err}") from None
                log.info("%s; planning the restore again from a fresh listing", err)
        with cf.ThreadPoolExecutor(1) as pool:  # the fsync and SQLite's check overlap
            synced = pool.submit(_fsync, tmp)
            if verify:
                _integrity_check(tmp)
            synced.result()
        os.chmod(tmp, mode)
        if force:
            for suffix in ("-wal", "-shm", "-journal"):  # a stale WAL would be replayed onto it
                Path(str(out) + suffix).unlink(missing_ok=True)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        tmp.unlink(missing_ok=True)
    txid, time_ns, size, ps, checksum = result
    return RestoreResult(str(out), plan.generation, txid, time_ns, size, ps, plan.snapshot.key,
                         len(plan.segments), time.monotonic() - started, checksum)


@dataclasses.dataclass(frozen=True)
class Preview:
    """What a restore would download and the transaction it would land on (`--dry-run`)."""

    plan: Plan
    txid: int
    time_ns: int


def preview(storage: Storage, target: Target = Target(), *,
            now_ns: Callable[[], int] = time.time_ns) -> Preview:
    """Plan a restore and find exactly where it lands, writing nothing: a LIST, then the
    segments at the end of the chain (usually one) or the snapshot's header."""
    plan = plan_restore(layout.parse_listing(storage.list(layout.GENERATIONS)), target, now_ns())
    try:
        for info in reversed(plan.segments):
            for tx in reversed(decode_segment(storage.get(info.key), info.key)[1]):
                if plan.stop_txid is not None and tx.txid > plan.stop_txid:
                    continue
                if plan.stop_time_ns is not None and tx.time_ns > plan.stop_time_ns:
                    continue
                if tx.txid > plan.snapshot.txid:
                    return Preview(plan, tx.txid, tx.time_ns)
        with storage.open(plan.snapshot.key, 0, HEADER_SIZE) as f:
            header = parse_header(f.read(HEADER_SIZE), plan.snapshot.key)
    except StorageError as err:
        raise RestoreError(f"cannot read replica: {err}") from None
    return Preview(plan, plan.snapshot.txid, header.first_time_ns)


def _segments_newest_first(storage: Storage, segments: tuple[SegmentInfo, ...], parallelism: int,
                           tally: _Tally | None = None) -> Iterator[tuple[SegmentInfo, int, list[Transaction]]]:
    """Download and decode in parallel, yielding (info, page size, transactions) in reverse
    order with a bounded window."""

    def fetch(info: SegmentInfo) -> tuple[int, list[Transaction]]:
        data = storage.get(info.key)
        if tally is not None:
            tally.add(len(data))
        header, txs = decode_segment(data, info.key)
        if header.generation != info.generation or (header.first_txid, header.last_txid) != (
                info.first_txid, info.last_txid):
            raise CorruptObject(info.key, "its header names another object (generation or txids)")
        return header.page_size, txs

    order = list(reversed(segments))
    with cf.ThreadPoolExecutor(max(1, parallelism)) as pool:
        window: list[cf.Future] = []
        nxt = 0
        for i in range(len(order)):
            while nxt < len(order) and len(window) < parallelism * 2:
                window.append(pool.submit(fetch, order[nxt]))
                nxt += 1
            yield (order[i], *window.pop(0).result())


class _Output:
    """The restored file: pages are written once each, and hashed as they are written.

    `written` holds the page numbers written: a set, not a bitmap sized by a claimed database
    size, so memory follows the pages actually read, whatever a header claims."""

    def __init__(self, fd: int):
        self.fd = fd
        self.checksum = 0
        self.written: set[int] = set()

    def write(self, first: int, pages: memoryview | bytes, ps: int) -> None:
        os.pwrite(self.fd, pages, (first - 1) * ps)
        mv = memoryview(pages)
        value = self.checksum
        for i in range(len(mv) // ps):
            value ^= page_hash(first + i, mv[i * ps:(i + 1) * ps])
        self.checksum = value
        self.written.update(range(first, first + len(mv) // ps))

    def holes_checksum(self, db_size: int, ps: int, key: str) -> int:
        """Pages no object wrote (a commit shrank then regrew the file) read back as zeros."""
        holes = db_size - len(self.written)
        if holes > MAX_HOLE_PAGES:
            raise CorruptObject(key, f"claims a database of {db_size} pages, but its objects hold only "
                                f"{len(self.written)} of them")
        zero, value = bytes(ps), 0
        if holes > 0:
            for pgno in range(1, db_size + 1):
                if pgno not in self.written:
                    value ^= page_hash(pgno, zero)
        return value


def build_image(storage: Storage, plan: Plan, path: Path, parallelism: int = DEFAULT_PARALLELISM
                ) -> tuple[int, int, int, int, int]:
    """Write the database `plan` reaches into the new file `path`, proven against the
    recorded checksum: (txid, time_ns, db_size_pages, page_size, db_checksum). The compactor
    builds replica-side snapshots with it."""
    try:
        return _apply(storage, plan, path, parallelism)
    except NotFound as err:
        raise RestoreError(f"cannot read replica: {err}") from None


def _apply(storage: Storage, plan: Plan, tmp: Path, parallelism: int,
           tally: _Tally | None = None) -> tuple[int, int, int, int, int]:
    snap = plan.snapshot
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    out = _Output(fd)
    try:
        final: Transaction | None = None
        cut = 0  # smallest db size from here to the target: older pages past it are dead
        seg_ps = None
        for info, page_size, txs in _segments_newest_first(storage, plan.segments, parallelism, tally):
            if seg_ps is not None and page_size != seg_ps:
                raise CorruptObject(info.key, f"page size {page_size} where the others have {seg_ps}")
            seg_ps = page_size
            for tx in reversed(txs):
                if tx.txid <= snap.txid or (plan.stop_txid is not None and tx.txid > plan.stop_txid):
                    continue
                if plan.stop_time_ns is not None and tx.time_ns > plan.stop_time_ns:
                    continue
                if final is None:
                    final, cut = tx, tx.db_size
                    _check_room(tmp, tx.db_size * page_size, info.key)
                cut = min(cut, tx.db_size)
                written = out.written
                for pgno, page in tx.pages:
                    if pgno <= cut and pgno not in written:
                        out.write(pgno, page, len(page))
        with storage.open(snap.key) as f:
            # The listed size is the object's own, unless a layer seals objects (then the
            # plaintext's size is known once it is opened): no HEAD request for it.
            size = storage.stat(snap.key).size if replica_meta.sealing(storage) else snap.size
            reader = SnapshotReader(_CountingReader(f, tally) if tally is not None else f, snap.key, size)
            ps = reader.header.page_size
            if seg_ps is not None and seg_ps != ps:
                raise CorruptObject(snap.key, f"page size {ps} where its segments have {seg_ps}")
            if reader.header.generation != snap.generation or reader.header.first_txid != snap.txid:
                raise CorruptObject(snap.key, "its header names another object (generation or txid)")
            if final is None:
                cut = reader.header.db_size
                _check_room(tmp, cut * ps, snap.key)
            for first, run in prefetch(reader.pages(), name="snapshot-reader"):
                _write_unwritten(out, first, run, ps, cut)
            trailer = reader.verify()
        if final is None:
            txid, time_ns, db_size, checksum = snap.txid, reader.header.first_time_ns, reader.header.db_size, trailer.db_checksum
        else:
            txid, time_ns, db_size, checksum = final.txid, final.time_ns, final.db_size, final.db_checksum
        if plan.expected_txid is not None and plan.stop_time_ns is None and txid != plan.expected_txid:
            raise RestoreError(f"replica promised txid {plan.expected_txid} but holds only up to {txid}")
        holes = out.holes_checksum(db_size, ps, plan.snapshot.key)  # refuses a size nothing backs
        os.ftruncate(fd, db_size * ps)
        actual = out.checksum ^ holes
        if actual != checksum:
            raise CorruptObject(plan.snapshot.key, f"restored database checksum {actual:016x} != recorded "
                                f"{checksum:016x} at txid {txid}")
        return txid, time_ns, db_size, ps, checksum
    except NotFound:
        raise  # the caller may plan again
    except StorageError as err:
        raise RestoreError(f"cannot read replica: {err}") from None
    finally:
        os.close(fd)


def _check_room(path: Path, size: int, key: str) -> None:
    """Refuse, before the first page is written, a database that cannot fit: an honest one
    would fail half-way with the disk full, and a hostile header claiming 2^32 pages would
    fill it."""
    st = os.statvfs(path.parent)
    free = st.f_bavail * st.f_frsize
    if size > free:
        raise RestoreError(f"the restored database would be {size / 2**30:.1f} GiB ({key} says so) but "
                           f"{path.parent} has {free / 2**30:.1f} GiB free")


def _write_unwritten(out: _Output, first: int, run: memoryview, ps: int, cut: int) -> None:
    """Write the pages of a snapshot run that no segment wrote, coalescing adjacent ones."""
    n = len(run) // ps
    written = out.written
    i = 0
    while i < n:
        pgno = first + i
        if pgno > cut:
            return
        if pgno in written:
            i += 1
            continue
        j = i
        while j < n and first + j <= cut and first + j not in written:
            j += 1
        out.write(pgno, run[i * ps:j * ps], ps)
        i = j


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _integrity_check(path: Path) -> None:
    """SQLite's own check; immutable=1 so no -wal/-shm is created beside the temp file."""
    try:
        conn = apsw.Connection(f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        try:
            # The file came from a replica someone else may write to: its schema must not
            # run functions or virtual tables of ours, nor write through shadow tables.
            conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
            conn.config(apsw.SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0)
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
    except apsw.Error as err:
        raise RestoreError(f"restored database fails to open: {err}") from None
    if rows != [("ok",)]:
        problems = [line for row in rows for line in str(row[0]).splitlines() if line.strip()]
        more = f" (and {len(problems) - 2} more problems)" if len(problems) > 2 else ""
        raise RestoreError(f"restored database fails integrity_check: {'; '.join(problems[:2])}{more}")
