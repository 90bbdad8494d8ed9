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
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import apsw

from . import layout
from .dbhash import page_hash
from .errors import CorruptObject, OutputExists, RestoreError
from .layout import SegmentInfo
from .plan import Plan, Target, plan_restore
from .prefetch import prefetch
from .segment import SnapshotReader, Transaction, decode_segment
from .storage import NotFound, Storage, StorageError
from .storage.file import fsync_dir

log = logging.getLogger(__name__)

DEFAULT_PARALLELISM = 8  # concurrent segment downloads; decoding releases the GIL in zstd


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


def restore(storage: Storage, output: str | os.PathLike, target: Target = Target(), *,
            force: bool = False, parallelism: int = DEFAULT_PARALLELISM, verify: bool = True,
            now_ns: Callable[[], int] = time.time_ns) -> RestoreResult:
    started = time.monotonic()
    out = Path(output)
    if out.exists() and not force:
        raise OutputExists(f"output file {out} already exists", "use --force to overwrite it")
    if not out.parent.is_dir():
        raise RestoreError(f"output directory {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.restoring-{uuid.uuid4().hex[:8]}")
    try:
        for attempt in (1, 2):
            listing = layout.parse_listing(storage.list(layout.GENERATIONS))
            plan = plan_restore(listing, target, now_ns())
            try:
                result = _apply(storage, plan, tmp, parallelism)
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
        if force:
            for suffix in ("-wal", "-shm", "-journal"):  # a stale WAL would be replayed onto it
                Path(str(out) + suffix).unlink(missing_ok=True)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        tmp.unlink(missing_ok=True)
    txid, time_ns, size, ps, _ = result
    return RestoreResult(str(out), plan.generation, txid, time_ns, size, ps, plan.snapshot.key,
                         len(plan.segments), time.monotonic() - started)


def _segments_newest_first(storage: Storage, segments: tuple[SegmentInfo, ...],
                           parallelism: int) -> Iterator[tuple[SegmentInfo, list[Transaction]]]:
    """Download and decode in parallel, yielding in reverse order with a bounded window."""

    def fetch(info: SegmentInfo) -> list[Transaction]:
        data = storage.get(info.key)
        return decode_segment(data, info.key)[1]

    order = list(reversed(segments))
    with cf.ThreadPoolExecutor(max(1, parallelism)) as pool:
        window: list[cf.Future] = []
        nxt = 0
        for i in range(len(order)):
            while nxt < len(order) and len(window) < parallelism * 2:
                window.append(pool.submit(fetch, order[nxt]))
                nxt += 1
            yield order[i], window.pop(0).result()


class _Output:
    """The restored file: pages are written once each, and hashed as they are written."""

    def __init__(self, fd: int):
        self.fd = fd
        self.checksum = 0
        self.written = bytearray()

    def write(self, first: int, pages: memoryview | bytes, ps: int) -> None:
        os.pwrite(self.fd, pages, (first - 1) * ps)
        mv = memoryview(pages)
        value = self.checksum
        for i in range(len(mv) // ps):
            value ^= page_hash(first + i, mv[i * ps:(i + 1) * ps])
        self.checksum = value
        self.written[first:first + len(mv) // ps] = b"\x01" * (len(mv) // ps)

    def holes_checksum(self, db_size: int, ps: int) -> int:
        """Pages no object wrote (a commit shrank then regrew the file) read back as zeros."""
        zero, value, pgno = bytes(ps), 0, self.written.find(0, 1, db_size + 1)
        while pgno != -1:
            value ^= page_hash(pgno, zero)
            pgno = self.written.find(0, pgno + 1, db_size + 1)
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


def _apply(storage: Storage, plan: Plan, tmp: Path, parallelism: int) -> tuple[int, int, int, int, int]:
    snap = plan.snapshot
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    out = _Output(fd)
    try:
        final: Transaction | None = None
        cut = 0  # smallest db size from here to the target: older pages past it are dead
        for info, txs in _segments_newest_first(storage, plan.segments, parallelism):
            for tx in reversed(txs):
                if tx.txid <= snap.txid or (plan.stop_txid is not None and tx.txid > plan.stop_txid):
                    continue
                if plan.stop_time_ns is not None and tx.time_ns > plan.stop_time_ns:
                    continue
                if final is None:
                    final, cut = tx, tx.db_size
                    out.written = bytearray(tx.db_size + 1)
                cut = min(cut, tx.db_size)
                for pgno, page in tx.pages:
                    if pgno <= cut and not out.written[pgno]:
                        out.write(pgno, page, len(page))
        with storage.open(snap.key) as f:
            size = storage.stat(snap.key).size
            reader = SnapshotReader(f, snap.key, size)
            ps = reader.header.page_size
            if final is None:
                cut = reader.header.db_size
                out.written = bytearray(cut + 1)
            for first, run in prefetch(reader.pages(), name="snapshot-reader"):
                _write_unwritten(out, first, run, ps, cut)
            trailer = reader.verify()
        if final is None:
            txid, time_ns, db_size, checksum = snap.txid, reader.header.first_time_ns, reader.header.db_size, trailer.db_checksum
        else:
            txid, time_ns, db_size, checksum = final.txid, final.time_ns, final.db_size, final.db_checksum
        if plan.expected_txid is not None and plan.stop_time_ns is None and txid != plan.expected_txid:
            raise RestoreError(f"replica promised txid {plan.expected_txid} but holds only up to {txid}")
        os.ftruncate(fd, db_size * ps)
        actual = out.checksum ^ out.holes_checksum(db_size, ps)
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


def _write_unwritten(out: _Output, first: int, run: memoryview, ps: int, cut: int) -> None:
    """Write the pages of a snapshot run that no segment wrote, coalescing adjacent ones."""
    n = len(run) // ps
    written = out.written
    i = 0
    while i < n:
        pgno = first + i
        if pgno > cut:
            return
        if written[pgno]:
            i += 1
            continue
        j = i
        while j < n and first + j <= cut and not written[first + j]:
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
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
    except apsw.Error as err:
        raise RestoreError(f"restored database fails to open: {err}") from None
    if rows != [("ok",)]:
        problems = [line for row in rows for line in str(row[0]).splitlines() if line.strip()]
        more = f" (and {len(problems) - 2} more problems)" if len(problems) > 2 else ""
        raise RestoreError(f"restored database fails integrity_check: {'; '.join(problems[:2])}{more}")
