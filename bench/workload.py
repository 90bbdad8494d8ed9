"""Workload processes for the benchmark (run as `python -m bench.workload ...`).

`writer`: one ~200-byte row per transaction, each row holding time.time_ns() taken inside the
transaction right before COMMIT; fixed rate or flat out; WAL mode, synchronous=NORMAL, a busy
timeout (as any real application has) and SQLite's default autocheckpoint (PASSIVE at 1000
pages). It counts the WAL frames it appends with a WAL hook, so the benchmark knows how many
bytes of WAL were written.

`history`: updates random rows of a database built by `build_db`, a batch of rows per
transaction, a given number of transactions.

Both write a JSON result file when they finish by themselves (not when SIGKILLed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from array import array

import apsw

ROW_PAD_BYTES = 184  # + id and time and record overhead: ~200 bytes per row
BUSY_TIMEOUT_MS = 10_000  # an application's usual busy timeout; replication tools take locks briefly
AUTOCHECKPOINT_PAGES = 1000  # SQLite's default wal_autocheckpoint (the WAL hook replaces it)
BIG_ROW_RANDOM = 750  # big-table rows: 750 random + 250 zero bytes, 4 rows per 4 KiB page,
BIG_ROW_ZERO = 250  # so pages are ~3/4 incompressible
HISTORY_ROWS_PER_TX = 16


def create_db(path: str) -> None:
    """A fresh WAL-mode database with the writer's table (made with apsw's SQLite: see RESULTS)."""
    conn = apsw.Connection(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.execute("CREATE TABLE IF NOT EXISTS w(id INTEGER PRIMARY KEY, t INTEGER NOT NULL, pad BLOB NOT NULL)")
    finally:
        conn.close()


def build_db(path: str, size_bytes: int, seed: int = 1) -> int:
    """A database of about size_bytes (pages ~3/4 random bytes), WAL mode, WAL empty. Returns rows."""
    rng = random.Random(seed)
    conn = apsw.Connection(path)
    try:
        conn.execute("PRAGMA journal_mode=OFF").fetchall()
        conn.execute("PRAGMA synchronous=OFF").fetchall()
        conn.execute("CREATE TABLE big(id INTEGER PRIMARY KEY, v INTEGER NOT NULL, pad BLOB NOT NULL)")
        conn.execute("CREATE TABLE w(id INTEGER PRIMARY KEY, t INTEGER NOT NULL, pad BLOB NOT NULL)")
        rows = max(1, size_bytes // 1024)
        zero = bytes(BIG_ROW_ZERO)
        batch = 20_000
        for start in range(0, rows, batch):
            n = min(batch, rows - start)
            with conn:
                conn.executemany("INSERT INTO big(id, v, pad) VALUES (?, 0, ?)",
                                 ((start + i + 1, rng.randbytes(BIG_ROW_RANDOM) + zero) for i in range(n)))
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        return rows
    finally:
        conn.close()


def db_signature(path: str, live: bool = False) -> dict:
    """Cheap fingerprint of a database written by these workloads. live=False opens it read-only
    and immutable (a restored file); live=True opens it normally, so its WAL counts."""
    if live:
        conn = apsw.Connection(path)
        conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    else:
        conn = apsw.Connection(f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
        out: dict = {}
        if "w" in tables:
            n, tmax = conn.execute("SELECT count(*), max(t) FROM w").fetchall()[0]
            out.update(w_rows=n, w_tmax=tmax)
        if "big" in tables:
            n, vmax, vsum = conn.execute("SELECT count(*), max(v), total(v) FROM big").fetchall()[0]
            out.update(big_rows=n, big_vmax=vmax, big_vsum=vsum)
        return out
    finally:
        conn.close()


def commit_times(path: str, live: bool = False) -> list[int]:
    """Every row's commit time, ascending. live=True opens normally (replays a WAL left by a crash)."""
    if live:
        conn = apsw.Connection(path)
    else:
        conn = apsw.Connection(f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        return [r[0] for r in conn.execute("SELECT t FROM w ORDER BY t")]
    finally:
        conn.close()


def last_commit_ns(path: str, live: bool = False) -> int | None:
    if live:
        conn = apsw.Connection(path)
        conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    else:
        conn = apsw.Connection(f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        return conn.execute("SELECT max(t) FROM w").fetchall()[0][0]
    finally:
        conn.close()


class _WalCounter:
    """Counts WAL frames appended (SQLite reports the WAL's size in pages after each commit)."""

    def __init__(self) -> None:
        self.frames = 0
        self.last = 0
        self.want_checkpoint = False

    def __call__(self, conn: apsw.Connection, name: str, pages: int) -> int:
        self.frames += pages - self.last if pages >= self.last else pages  # smaller: WAL restarted
        self.last = pages
        self.want_checkpoint = pages >= AUTOCHECKPOINT_PAGES
        return apsw.SQLITE_OK


def _open(db: str) -> tuple[apsw.Connection, _WalCounter, int]:
    conn = apsw.Connection(db)
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA synchronous=NORMAL").fetchall()
    counter = _WalCounter()
    conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()  # maps the wal-index
    counter.last = _wal_frames_now(db)  # frames already in the WAL are not ours to count
    conn.set_wal_hook(counter)
    page_size = conn.execute("PRAGMA page_size").fetchall()[0][0]
    return conn, counter, page_size


def _wal_frames_now(db: str) -> int:
    """mxFrame from the wal-index header (bytes 16-19, native order); 0 without a -shm."""
    try:
        with open(db + "-shm", "rb") as f:
            head = f.read(20)
    except FileNotFoundError:
        return 0
    return int.from_bytes(head[16:20], sys.byteorder) if len(head) == 20 else 0


def _checkpoint_like_sqlite(conn: apsw.Connection, counter: _WalCounter) -> None:
    """What SQLite's default autocheckpoint does after a commit (the WAL hook disabled it)."""
    if counter.want_checkpoint:
        counter.want_checkpoint = False
        try:
            conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        except apsw.BusyError:
            pass


def _latency_summary(lat: array) -> dict:
    if not len(lat):
        return {}
    s = sorted(lat)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))]

    return {"lat_max_s": s[-1], "lat_p50_s": q(0.5), "lat_p99_s": q(0.99), "lat_p999_s": q(0.999),
            "stalls_over_50ms": sum(1 for x in s if x > 0.05)}


def run_writer(db: str, rate: float, duration_s: float, result: str | None, seed: int) -> None:
    rng = random.Random(seed)
    conn, counter, page_size = _open(db)
    lat = array("d")
    errors = 0
    n = 0
    perf = time.perf_counter
    start = perf()
    deadline = start + duration_s if duration_s > 0 else float("inf")
    while True:
        now = perf()
        if now >= deadline:
            break
        if rate > 0:
            due = start + n / rate
            if due > now:
                time.sleep(due - now)
        t0 = perf()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO w(t, pad) VALUES (?, ?)", (time.time_ns(), rng.randbytes(ROW_PAD_BYTES)))
            conn.execute("COMMIT")
        except apsw.BusyError:
            errors += 1
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            continue
        _checkpoint_like_sqlite(conn, counter)
        lat.append(perf() - t0)
        n += 1
    elapsed = perf() - start
    conn.close()
    if result:
        out = {"tx": n, "elapsed_s": elapsed, "tx_per_s": n / elapsed, "wal_frames": counter.frames,
               "page_size": page_size, "wal_bytes": counter.frames * (page_size + 24), "busy_errors": errors}
        out.update(_latency_summary(lat))
        _write_json(result, out)


def history_tx_for(wal_bytes: int, page_size: int = 4096) -> int:
    """Transactions of `history` that append about wal_bytes of WAL (one frame per updated row:
    rows are random among many pages). A count, not a byte target, so every tool gets the very
    same history."""
    return max(1, round(wal_bytes / (HISTORY_ROWS_PER_TX * (page_size + 24))))


def run_history(db: str, n_tx: int, result: str | None, seed: int, first_v: int) -> None:
    """Update random rows of `big`, HISTORY_ROWS_PER_TX per transaction, n_tx transactions."""
    rng = random.Random(seed)
    conn, counter, page_size = _open(db)
    rows = conn.execute("SELECT max(id) FROM big").fetchall()[0][0]
    zero = bytes(BIG_ROW_ZERO)
    frame = page_size + 24
    v = first_v
    start = time.perf_counter()
    for _ in range(n_tx):
        with conn:
            for _ in range(HISTORY_ROWS_PER_TX):
                v += 1
                conn.execute("UPDATE big SET v = ?, pad = ? WHERE id = ?",
                             (v, rng.randbytes(BIG_ROW_RANDOM) + zero, rng.randint(1, rows)))
        _checkpoint_like_sqlite(conn, counter)
    elapsed = time.perf_counter() - start
    conn.close()
    if result:
        _write_json(result, {"tx": n_tx, "elapsed_s": elapsed, "wal_frames": counter.frames,
                             "wal_bytes": counter.frames * frame, "last_v": v})


def _write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.workload")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("writer")
    w.add_argument("db")
    w.add_argument("--rate", type=float, default=0.0, help="transactions per second; 0 = flat out")
    w.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until killed")
    w.add_argument("--result")
    w.add_argument("--seed", type=int, default=1)
    h = sub.add_parser("history")
    h.add_argument("db")
    h.add_argument("--tx", type=int, required=True)
    h.add_argument("--result")
    h.add_argument("--seed", type=int, default=1)
    h.add_argument("--first-v", type=int, default=0)
    a = p.parse_args(argv)
    if a.cmd == "writer":
        run_writer(a.db, a.rate, a.duration, a.result, a.seed)
    else:
        run_history(a.db, a.tx, a.result, a.seed, a.first_v)


if __name__ == "__main__":
    sys.exit(main())
