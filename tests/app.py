"""A scripted application: the scenario matrix drives it one command at a time.

Run as:  python tests/app.py DB SEED [--per-write | --cli]
It reads one command per line on stdin and answers one line on stdout ("ok ..." or
"error ..."), so a test knows exactly what the application has done before it moves on:

    write N            N transactions (op k sets meta.n = k; k continues from the database)
    checkpoint MODE    PRAGMA wal_checkpoint(MODE); answers "ok busy log checkpointed"
    pragma TEXT        PRAGMA TEXT (autocheckpoint, journal_size_limit, ...)
    vacuum             VACUUM (content unchanged, every page rewritten)
    close              close the connection (the last one: SQLite checkpoints, deletes the WAL)
    replace            VACUUM INTO a new file, close, rename it over the database
    quit

Op k depends only on (seed, k), as SQL text with literals, so the same op runs through apsw
or through the `sqlite3` command-line tool (--cli), and `expected_hashes` replays it.
Modes: one connection kept open (default), a connection per write (--per-write), or the
sqlite3 CLI, a process per write (--cli).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import apsw

from workload import content_hash, db_state  # noqa: F401  (the same tables: meta, items)

SCHEMA = ("CREATE TABLE IF NOT EXISTS meta(id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL);"
          "INSERT OR IGNORE INTO meta VALUES (1, 0);"
          "CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, k INTEGER, body BLOB);"
          "CREATE INDEX IF NOT EXISTS items_k ON items(k);")


def op_sql(seed: int, k: int) -> str:
    """Op k as one transaction of SQL text (literals only)."""
    rng = random.Random(seed * 1_000_003 + k)
    kind = rng.random()
    stmts = []
    if kind < 0.5:
        stmts.append(f"INSERT INTO items(k, body) VALUES ({k}, X'{rng.randbytes(rng.randint(10, 400)).hex()}')")
    elif kind < 0.65:  # overflow pages
        stmts.append(f"INSERT INTO items(k, body) VALUES ({k}, X'{rng.randbytes(rng.randint(5000, 20000)).hex()}')")
    elif kind < 0.8:
        stmts.append(f"UPDATE items SET body = X'{rng.randbytes(rng.randint(10, 900)).hex()}' "
                     f"WHERE id = {rng.randint(1, max(1, k))}")
    elif kind < 0.9:
        stmts.append(f"DELETE FROM items WHERE id IN ({rng.randint(1, max(1, k))}, {rng.randint(1, max(1, k))})")
    else:
        for _ in range(rng.randint(3, 12)):
            stmts.append(f"INSERT INTO items(k, body) VALUES ({k}, X'{rng.randbytes(rng.randint(100, 2000)).hex()}')")
    stmts.append(f"UPDATE meta SET n = {k} WHERE id = 1")
    return "BEGIN; " + "; ".join(stmts) + "; COMMIT;"


def expected_hashes(seed: int, ks: set[int]) -> dict[int, str]:
    """Content hash after each k in ks, by replaying ops 1..max(ks) in memory once."""
    conn = apsw.Connection(":memory:")
    conn.execute(SCHEMA)
    out = {0: content_hash(conn)} if 0 in ks else {}
    for k in range(1, max(ks | {0}) + 1):
        conn.execute(op_sql(seed, k))
        if k in ks:
            out[k] = content_hash(conn)
    return out


class App:
    def __init__(self, path: str, seed: int, mode: str):
        self.path, self.seed, self.mode = path, seed, mode
        self.conn: apsw.Connection | None = None
        self.pragmas: list[str] = []  # re-applied to every new connection
        conn = self._open()
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute(SCHEMA)
        self.k = conn.execute("SELECT n FROM meta").fetchall()[0][0]
        self._done(conn)

    def _open(self) -> apsw.Connection:
        if self.conn is None:
            self.conn = apsw.Connection(self.path)
            self.conn.set_busy_timeout(10_000)
            for p in self.pragmas:
                self.conn.execute(f"PRAGMA {p}").fetchall()
        return self.conn

    def _done(self, conn: apsw.Connection) -> None:
        if self.mode != "keep":
            conn.close()
            self.conn = None

    def write(self, n: int) -> str:
        for _ in range(n):
            sql = op_sql(self.seed, self.k + 1)
            if self.mode == "cli":
                subprocess.run(["sqlite3", "-bail", "-cmd", ".timeout 10000", self.path, sql],
                               check=True, capture_output=True)
            else:
                conn = self._open()
                conn.execute(sql)
                self._done(conn)
            self.k += 1
        return f"ok {self.k}"

    def checkpoint(self, mode: str) -> str:
        conn = self._open()
        try:
            busy, log, done = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()[0]
        except apsw.BusyError:
            busy, log, done = 1, -1, -1
        self._done(conn)
        return f"ok {busy} {log} {done}"

    def pragma(self, text: str) -> str:
        self.pragmas.append(text)
        conn = self._open()
        rows = conn.execute(f"PRAGMA {text}").fetchall()
        self._done(conn)
        return f"ok {rows}"

    def vacuum(self) -> str:
        conn = self._open()
        conn.execute("VACUUM")
        self._done(conn)
        return "ok"

    def close(self) -> str:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        return f"ok wal_exists={os.path.exists(self.path + '-wal')}"

    def replace(self) -> str:
        tmp = self.path + ".new"
        conn = self._open()
        conn.execute("VACUUM INTO ?", (tmp,))
        self.close()
        conn = apsw.Connection(tmp)
        conn.execute("PRAGMA journal_mode=wal")
        conn.close()
        for suffix in ("-wal", "-shm"):
            if os.path.exists(tmp + suffix):
                os.unlink(tmp + suffix)
        os.replace(tmp, self.path)
        return "ok"


def main(argv: list[str]) -> None:
    mode = "cli" if "--cli" in argv else "per-write" if "--per-write" in argv else "keep"
    app = App(argv[0], int(argv[1]), mode)
    print(f"ok ready {app.k}", flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        try:
            if cmd == "quit":
                app.close()
                print("ok", flush=True)
                return
            if cmd == "write":
                reply = app.write(int(arg))
            elif cmd == "checkpoint":
                reply = app.checkpoint(arg)
            elif cmd == "pragma":
                reply = app.pragma(arg)
            elif cmd in ("vacuum", "close", "replace"):
                reply = getattr(app, cmd)()
            else:
                reply = f"error unknown command {cmd!r}"
        except (apsw.Error, subprocess.CalledProcessError, OSError) as err:
            reply = f"error {type(err).__name__}: {err}"
        print(reply, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
