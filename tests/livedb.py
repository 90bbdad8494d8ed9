"""A live database with the replicator's tail beside it, for tests of the engine's pieces:
real SQLite files, the real handles, tail, spool and spooler, no daemon threads."""

from __future__ import annotations

from pathlib import Path

import apsw

from replicator.dbhash import DbChecksum
from replicator.handles import DbHandles
from replicator.spool import Spool, TailState
from replicator.spooler import Spooler
from replicator.tail import Tail


def app_connection(path: Path) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(100)
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB)"))
    return conn


class LiveTail:
    """handles + tail + spool + spooler on one database; `start()` takes up a new tail at
    mxFrame (txid 1), the way replication.py does, without a snapshot."""

    def __init__(self, path: Path, busy_timeout_s: float = 2.0):
        self.handles = DbHandles(str(path), busy_timeout_s)
        self.tail = Tail(self.handles, lambda: self.handles.reading)
        self.spool = Spool(str(path))
        self.spooler = Spooler(self.spool, self.tail)
        self.spooler.generation = "20261201T000000000Z-abcdef"

    def start(self) -> "LiveTail":
        self.handles.open()
        assert self.spool.try_lock()
        with self.handles.fence():
            self.handles.begin_read()
            hdr = self.handles.index_header()
            # (not the database's checksum: these tests follow txids and frames)
            self.tail.start(hdr, 1, DbChecksum(self.handles.page_size))
        self.spool.save_base(TailState(self.spooler.generation, self.tail.pos, self.tail.checksum.copy(),
                                       self.handles.db_ident))
        return self

    def txids(self) -> list[int]:
        """Txids of the segments in the spool, in order."""
        from replicator import layout

        out = []
        for o in self.spool.objects.list(layout.GENERATIONS):
            info = layout.parse_key(o.key, o.size)
            if isinstance(info, layout.SegmentInfo):
                out.extend(range(info.first_txid, info.last_txid + 1))
        return sorted(out)

    def close(self) -> None:
        self.handles.close()
        self.spool.unlock()
