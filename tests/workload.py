"""A deterministic workload: op k depends only on (seed, k), so the state after k committed
ops can be rebuilt anywhere by replaying ops 1..k. Each op is one transaction that also sets
meta.n = k, so any database tells which prefix of the workload it holds.

Run as a writer process:  python tests/workload.py DB OPS SEED [--pause-every N --pause-ms M]
It resumes from meta.n, so a writer killed mid-run can be restarted. After each commit it
appends "k time_before_ns time_after_ns" to DB.oracle (flushed, not fsynced).
"""

from __future__ import annotations

import hashlib
import random
import sys
import time

import apsw

VACUUM_AT = 0.5  # fraction of the run at which the writer VACUUMs (content unchanged)


def setup(conn: apsw.Connection) -> None:
    list(conn.execute(
        "CREATE TABLE IF NOT EXISTS meta(id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL);"
        "INSERT OR IGNORE INTO meta VALUES (1, 0);"
        "CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, k INTEGER, body BLOB, note TEXT);"
        "CREATE INDEX IF NOT EXISTS items_k ON items(k);"))


def op(conn: apsw.Connection, seed: int, k: int) -> None:
    """Op k's statements (the caller wraps them in a transaction with meta.n = k)."""
    rng = random.Random(seed * 1_000_003 + k)
    kind = rng.random()
    if kind < 0.45:  # small insert
        conn.execute("INSERT INTO items(k, body, note) VALUES (?, ?, ?)",
                     (k, rng.randbytes(rng.randint(10, 300)), f"small {k}"))
    elif kind < 0.60:  # overflow pages: a blob larger than a page
        conn.execute("INSERT INTO items(k, body, note) VALUES (?, ?, ?)",
                     (k, rng.randbytes(rng.randint(5_000, 40_000)), f"big {k}"))
    elif kind < 0.75:  # update a few rows
        for _ in range(rng.randint(1, 5)):
            conn.execute("UPDATE items SET note = ?, body = ? WHERE id = ?",
                         (f"upd {k}", rng.randbytes(rng.randint(10, 2000)), rng.randint(1, max(1, k))))
    elif kind < 0.85:  # delete a few
        conn.execute("DELETE FROM items WHERE id IN (?, ?, ?)",
                     tuple(rng.randint(1, max(1, k)) for _ in range(3)))
    elif kind < 0.98:  # multi-row transaction
        for i in range(rng.randint(5, 30)):
            conn.execute("INSERT INTO items(k, body, note) VALUES (?, ?, ?)",
                         (k, rng.randbytes(rng.randint(100, 3000)), f"multi {k}.{i}"))
    else:  # a big transaction that spills the page cache into the WAL before commit
        for i in range(120):
            conn.execute("INSERT INTO items(k, body, note) VALUES (?, ?, ?)",
                         (k, rng.randbytes(8000), f"spill {k}.{i}"))
    conn.execute("UPDATE meta SET n = ? WHERE id = 1", (k,))


def content_hash(conn: apsw.Connection) -> str:
    h = hashlib.sha256()
    for table in ("meta", "items"):
        for row in conn.execute(f"SELECT * FROM {table} ORDER BY id"):
            h.update(repr(row).encode())
    return h.hexdigest()


def db_state(path: str) -> tuple[int, str]:
    """(k, content hash) of a database file; opened read-only and immutable."""
    conn = apsw.Connection(f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        n = conn.execute("SELECT n FROM meta").fetchall()[0][0]
        return n, content_hash(conn)
    finally:
        conn.close()


def expected_hashes(seed: int, ks: set[int]) -> dict[int, str]:
    """Content hash after each k in ks, by replaying the workload in memory once."""
    conn = apsw.Connection(":memory:")
    setup(conn)
    out = {}
    if 0 in ks:
        out[0] = content_hash(conn)
    for k in range(1, max(ks | {0}) + 1):
        with conn:
            op(conn, seed, k)
        if k in ks:
            out[k] = content_hash(conn)
    return out


def main(argv: list[str]) -> None:
    path, ops, seed = argv[0], int(argv[1]), int(argv[2])
    pause_every = int(argv[argv.index("--pause-every") + 1]) if "--pause-every" in argv else 0
    pause_s = int(argv[argv.index("--pause-ms") + 1]) / 1000 if "--pause-ms" in argv else 0.0
    conn = apsw.Connection(path)
    conn.set_busy_timeout(10_000)
    list(conn.execute("PRAGMA journal_mode=wal"))
    conn.execute("PRAGMA cache_size=50")  # small cache: big transactions spill before commit
    setup(conn)
    start = conn.execute("SELECT n FROM meta").fetchall()[0][0]
    rng = random.Random(seed)
    oracle = open(path + ".oracle", "a", buffering=1)
    vacuum_k = int(ops * VACUUM_AT)
    for k in range(start + 1, ops + 1):
        if rng.random() < 0.03:  # a rolled-back transaction leaves frames that never commit
            conn.execute("BEGIN")
            conn.execute("INSERT INTO items(k, note) VALUES (-1, 'rolled back')")
            conn.execute("ROLLBACK")
        t0 = time.time_ns()
        with conn:
            op(conn, seed, k)
        oracle.write(f"{k} {t0} {time.time_ns()}\n")
        if k == vacuum_k:
            conn.execute("VACUUM")
        if k % 250 == 0:
            try:  # BUSY: another process checkpoints (the replicator holds the lock: its job)
                conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
            except apsw.BusyError:
                pass
        if pause_every and k % pause_every == 0:
            time.sleep(pause_s)
    conn.close()


if __name__ == "__main__":
    main(sys.argv[1:])
