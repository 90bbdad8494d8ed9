"""`replicator verify`: restore to a temporary file and prove it, optionally against the
live database at the same transaction.

A restore already proves its file is byte-for-byte the source at the restored txid (the
recorded checksum, design 3) and that SQLite finds it sound (`integrity_check`). What that
cannot show is that the replica follows the *live* database: `--against DB` reads the live
database's checksum inside one read transaction, waits for the replica to hold a txid whose
recorded checksum equals it, restores exactly that txid and compares row counts per table.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import apsw

from . import layout
from .dbhash import file_checksum
from .errors import ReplicatorError
from .plan import Target
from .restore import Progress, restore
from .segment import TRAILER_SIZE, decode_segment, parse_trailer
from .spool import spool_dir
from .storage import Storage, StorageError

DEFAULT_TIMEOUT_S = 60.0  # how long --against waits for the replicator to ship the live state
POLL_S = 0.2  # between listings while waiting (one LIST each)
# Transactions observed before the live read began have txids at or below the live one
# (design: verify), so the backward scan stops past them; this margin absorbs clock steps.
CLOCK_MARGIN_NS = 1_000_000_000
RECORD_NAME = "verify.json"  # in the database's spool directory; metrics export it


class VerifyError(ReplicatorError):
    """The replica does not restore, or differs from the live database."""


@dataclasses.dataclass(frozen=True)
class LiveState:
    checksum: int
    page_count: int
    counts: dict[str, int]
    read_at_ns: int  # wall clock when the read transaction began


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    replica: str  # the replica's URL (never credentials)
    txid: int
    time_ns: int
    generation: str
    checksum: int
    counts: dict[str, int]  # of the restored copy, per table
    live_counts: dict[str, int] | None  # with --against, at the same txid
    differences: tuple[str, ...]
    bytes: int  # the restored database's size
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.differences


def row_counts(conn: apsw.Connection) -> dict[str, int]:
    """Rows per ordinary table (virtual tables would need their module), by name."""
    names = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name")]
    return {n: conn.execute(f'SELECT count(*) FROM "{n.replace(chr(34), chr(34) * 2)}"').fetchone()[0]
            for n in names}


def file_row_counts(path: str | os.PathLike) -> dict[str, int]:
    conn = apsw.Connection(f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        return row_counts(conn)
    finally:
        conn.close()


def read_live(db_path: str, busy_timeout_s: float = 5.0, now_ns: Callable[[], int] = time.time_ns) -> LiveState:
    """Checksum (as the replica records it) and row counts of the live database, both inside
    one read transaction, so they describe one committed state. The transaction ends before
    anything waits: a held reader would keep the WAL from being checkpointed.

    The pages come through SQLite's pager (sqlite3_serialize), which is exactly the view of
    the read transaction; it holds one copy of the database in memory."""
    if not os.path.exists(db_path):
        raise VerifyError(f"database not found: {db_path}")
    try:
        conn = apsw.Connection(db_path, flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error as err:
        raise VerifyError(f"cannot open {db_path}: {err}") from None
    try:
        conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)  # never checkpoint the live WAL away
        conn.set_busy_timeout(int(busy_timeout_s * 1000))
        conn.execute("BEGIN")
        read_at = now_ns()
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()  # the read transaction begins here
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        image = conn.serialize("main") or b""
        counts = row_counts(conn)
        conn.execute("COMMIT")
    except apsw.Error as err:
        raise VerifyError(f"cannot read {db_path}: {err}") from None
    finally:
        conn.close()
    n_pages = len(image) // page_size
    return LiveState(file_checksum(io.BytesIO(image), page_size, n_pages), n_pages, counts, read_at)


def find_txid(storage: Storage, checksum: int, read_at_ns: int, deadline: float,
              seen: dict[str, int | None] | None = None) -> int | None:
    """The newest txid whose recorded checksum is `checksum`, waiting (until the monotonic
    `deadline`) for the replicator to ship it; None if it never appears.

    Newest first: a state shipped after the live read lies at the end of the replica. The
    scan stops past the first object observed before the read began (with a margin): the
    live state is the newest one then, so nothing older can be it. Objects are immutable,
    so each is read once (`seen`: key -> matching txid or None)."""
    seen = {} if seen is None else seen
    while True:
        try:
            listing = layout.parse_listing(storage.list(layout.GENERATIONS))
            found = _scan(storage, listing, checksum, read_at_ns - CLOCK_MARGIN_NS, seen)
        except StorageError as err:
            raise VerifyError(f"cannot read replica: {err}") from None
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


def _scan(storage: Storage, listing: layout.Listing, checksum: int, floor_ns: int,
          seen: dict[str, int | None]) -> int | None:
    objects: list[tuple[int, int, layout.SnapshotInfo | layout.SegmentInfo]] = []
    for g in listing.generations:
        objects += [(s.txid, s.time_ms, s) for s in g.snapshots]
        objects += [(s.last_txid, s.t1_ms, s) for s in g.segments]
    for _, end_ms, info in sorted(objects, key=lambda o: o[0], reverse=True):
        if info.key not in seen:
            seen[info.key] = _match(storage, info, checksum)
        if seen[info.key] is not None:
            return seen[info.key]
        if end_ms * 1_000_000 < floor_ns:
            return None
    return None


def _match(storage: Storage, info: layout.SnapshotInfo | layout.SegmentInfo, checksum: int) -> int | None:
    if isinstance(info, layout.SnapshotInfo):
        with storage.open(info.key, max(0, info.size - TRAILER_SIZE)) as f:
            trailer = parse_trailer(f.read(TRAILER_SIZE), info.key)
        return info.txid if trailer.db_checksum == checksum else None
    for tx in reversed(decode_segment(storage.get(info.key), info.key)[1]):
        if tx.db_checksum == checksum:
            return tx.txid
    return None


def verify(storage: Storage, replica_url: str, target: Target = Target(), *, against: str | None = None,
           timeout_s: float = DEFAULT_TIMEOUT_S, progress: Progress | None = None,
           parallelism: int = 8) -> VerifyResult:
    """Restore into a temporary file, count rows per table; with `against`, at the txid that
    equals the live database's state, comparing counts (the checksum equality is proven by
    the restore itself)."""
    started = time.monotonic()
    live = None
    if against is not None:
        live = read_live(against)
        txid = find_txid(storage, live.checksum, live.read_at_ns, time.monotonic() + timeout_s)
        if txid is None:
            raise VerifyError(f"{replica_url} holds no transaction with the live database's checksum "
                              f"{live.checksum:016x} after {timeout_s:g}s",
                              "is the replicator running and shipping? (--timeout waits longer)")
        target = Target(txid=txid)
    with tempfile.TemporaryDirectory(prefix="replicator-verify-") as d:
        out = Path(d) / "verify.db"
        result = restore(storage, out, target, parallelism=parallelism, progress=progress)
        counts = file_row_counts(out)
    checksum = result.db_checksum
    differences = compare(checksum, counts, live.checksum, live.counts) if live is not None else []
    return VerifyResult(replica_url, result.txid, result.time_ns, result.generation, checksum, counts,
                        live.counts if live else None, tuple(differences),
                        result.db_size_pages * result.page_size, time.monotonic() - started)


def compare(checksum: int, counts: dict[str, int], live_checksum: int, live_counts: dict[str, int]) -> list[str]:
    """What differs between the restored copy and the live database, one line each."""
    differences = []
    if checksum != live_checksum:
        differences.append(f"checksum {checksum:016x} != live {live_checksum:016x}")
    for table in sorted(set(counts) | set(live_counts)):
        mine, theirs = counts.get(table), live_counts.get(table)
        if mine is None:
            differences.append(f"table {table}: not in the restored copy ({theirs:,} rows live)")
        elif theirs is None:
            differences.append(f"table {table}: not in the live database ({mine:,} rows restored)")
        elif mine != theirs:
            differences.append(f"table {table}: {mine:,} rows restored, {theirs:,} live")
    return differences


# -- the record the drill leaves for status and metrics ------------------------------


def record(ok: bool, replica: str, txid: int | None, error: str | None,
           now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> dict:
    return {"time_ms": now_ms(), "ok": ok, "txid": txid, "replica": replica, "error": error}


def write_record(db_path: str, rec: dict) -> Path:
    """`verify.json` in the database's spool directory, replaced atomically (a reader sees
    the old record or the new one, whole). The directory is created with the spool's mode if
    the daemon has not run yet."""
    from .spool import spool_mode

    d = spool_dir(db_path)
    if not d.is_dir():
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, spool_mode(db_path))
    path = d / RECORD_NAME
    tmp = d / f".{RECORD_NAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (json.dumps(rec, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path
