"""spooler.py against real SQLite and real spool files: a spool that cannot write (disk
full, I/O error) loses nothing, says so, and carries on from its last durable state once it
can. The failures are injected at the file layer (a real full disk is in
tests/integration/test_spool_faults.py, where a tmpfs can be mounted)."""

from __future__ import annotations

import errno
import logging
import os

import apsw
import pytest

from replicator import layout
from replicator.errors import SpoolError
from replicator.spool import Spool
from replicator.storage.file import FileStorage

from livedb import LiveTail


def _write(app, n):
    for _ in range(n):
        app.execute("INSERT INTO t(v) VALUES (?)", (bytes(700),))


class _Fault:
    """Make the spool's file writes fail with `err` while `on` (in-process: a disk that fills
    and empties on demand)."""

    def __init__(self, monkeypatch, err: int, where: str = "objects"):
        self.on = True
        self.hits = 0
        if where == "objects":
            real = FileStorage._write_tmp_once

            def write(storage, path, data):
                if self.on and "/objects" in storage._root:
                    self.hits += 1
                    raise OSError(err, "No space left on device" if err == errno.ENOSPC else "Input/output error")
                return real(storage, path, data)

            monkeypatch.setattr(FileStorage, "_write_tmp_once", write)
        else:  # the state log's appends
            import replicator.spool as spool_mod

            real_write = spool_mod.os.write

            def os_write(fd, data):
                if self.on:
                    self.hits += 1
                    raise OSError(err, "No space left on device")
                return real_write(fd, data)

            monkeypatch.setattr(spool_mod.os, "write", os_write)


def _spooled_txids(spool: Spool) -> list[int]:
    out = []
    for o in spool.objects.list(layout.GENERATIONS):
        info = layout.parse_key(o.key, o.size)
        if isinstance(info, layout.SegmentInfo):
            out.extend(range(info.first_txid, info.last_txid + 1))
    return sorted(out)


@pytest.mark.parametrize("where", ["objects", "log"])
def test_a_full_spool_loses_nothing_and_resumes_by_itself(app_db, monkeypatch, caplog, where):
    path, app = app_db
    live = LiveTail(path).start()
    try:
        _write(app, 10)
        live.spooler.copy()
        live.spooler.sync()
        durable = live.tail.pos
        fault = _Fault(monkeypatch, errno.ENOSPC, where)
        _write(app, 10)
        with caplog.at_level(logging.INFO):
            with pytest.raises(SpoolError, match="No space left on device"):
                live.spooler.copy()
            assert fault.hits
            assert live.tail.pos == durable  # rolled back: the position follows durability
            assert live.spooler.failed is not None
            # The application checkpoints and writes on: R's mark keeps every frame.
            app.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
            _write(app, 5)
            live.spooler._retry_at = 0
            with pytest.raises(SpoolError):
                live.spooler.copy()  # still full
            fault.on = False
            live.spooler._retry_at = 0
            live.spooler.copy()
        assert live.spooler.failed is None
        assert _spooled_txids(live.spool) == list(range(2, 27))  # each once, none missing
        text = caplog.text
        assert "No space left on device" in text and "checkpoints are paused" in text
        assert "writable again" in text
    finally:
        live.close()


def test_while_failed_nothing_is_retried_before_the_backoff(app_db, monkeypatch):
    path, app = app_db
    live = LiveTail(path).start()
    try:
        fault = _Fault(monkeypatch, errno.ENOSPC)
        _write(app, 3)
        with pytest.raises(SpoolError):
            live.spooler.copy()
        hits = fault.hits
        with pytest.raises(SpoolError):
            live.spooler.copy()  # within the backoff: not even tried
        assert fault.hits == hits
    finally:
        live.close()


def test_a_failed_fsync_removes_what_lies_past_the_durable_state(app_db, monkeypatch, caplog):
    """Segments spooled after the last good sync may have been dropped by the kernel when
    an fsync failed: they are deleted and copied again from the WAL, which still has them."""
    path, app = app_db
    live = LiveTail(path).start()
    try:
        _write(app, 4)
        live.spooler.copy()
        live.spooler.sync()
        _write(app, 4)
        live.spooler.copy()
        assert _spooled_txids(live.spool) == list(range(2, 10))
        real = os.fsync

        def eio(fd):
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr("replicator.storage.file.os.fsync", eio)
        with caplog.at_level(logging.INFO), pytest.raises(SpoolError, match="Input/output error"):
            live.spooler.sync()
        monkeypatch.setattr("replicator.storage.file.os.fsync", real)
        assert _spooled_txids(live.spool) == list(range(2, 6))
        live.spooler._retry_at = 0
        with caplog.at_level(logging.INFO):
            live.spooler.copy()
        assert _spooled_txids(live.spool) == list(range(2, 10))
        assert "Input/output error" in caplog.text and "writable again" in caplog.text
    finally:
        live.close()


def test_compaction_writes_a_base_a_restart_reads_back(app_db, monkeypatch, tmp_path):
    monkeypatch.setattr("replicator.spool.LOG_COMPACT_FACTOR", 0)  # compact at every batch
    path, app = app_db
    live = LiveTail(path).start()
    try:
        for _ in range(3):
            _write(app, 2)
            live.spooler.copy()
        state = Spool(str(path), boot="another boot").load()  # trusts only what is durable
        assert state.pos == live.tail.pos and state.checksum.value == live.tail.checksum.value
    finally:
        live.close()
