"""spool.py: the tail state a restart may trust, and the order that keeps it honest."""

from __future__ import annotations

import os
from array import array

import pytest

from replicator import layout
from replicator.dbhash import DbChecksum
from replicator.errors import SpoolError
from replicator.spool import Spool, TailState
from replicator.tail import Position

GEN = "20261201T000000000Z-abcdef"


def _checksum(n: int, seed: int = 0) -> DbChecksum:
    ck = DbChecksum(4096)
    for pgno in range(1, n + 1):
        ck.update(pgno, bytes([(pgno + seed) % 256]) * 4096)
    return ck


def _pos(txid: int) -> Position:
    return Position((1, 2), txid * 2, (txid, txid), txid)


@pytest.fixture
def spool(tmp_path):
    s = Spool(str(tmp_path / "app.db"), boot="boot-1")
    assert s.try_lock()
    yield s
    s.unlock()


def _batch(spool: Spool, ck: DbChecksum, txid: int, pgno: int, fill: int) -> None:
    """A batch as the spooler writes it: its segment object, then its state record."""
    key = layout.segment_key(GEN, txid, txid, txid * 1_000_000, txid * 1_000_000)
    spool.objects.put(key, b"segment %d" % txid)
    ck.update(pgno, bytes([fill]) * 4096)
    spool.append(GEN, _pos(txid), ck, {pgno})


def test_a_restart_in_the_same_boot_trusts_every_record(spool, tmp_path):
    ck = _checksum(4)
    spool.save_base(TailState(GEN, _pos(1), ck.copy(), (1, 2)))
    _batch(spool, ck, 2, 1, 9)
    spool.sync()
    _batch(spool, ck, 3, 5, 8)  # after the last sync: only the page cache has it
    again = Spool(str(tmp_path / "app.db"), boot="boot-1").load()
    assert again.pos == _pos(3) and again.checksum.value == ck.value and again.db_ident == (1, 2)


def test_after_a_reboot_only_what_the_last_marker_covers_is_trusted(spool, tmp_path):
    """The kernel may write a log record back before the objects it names: after a reboot
    the records past the last sync cannot be trusted, those before it can."""
    ck = _checksum(4)
    spool.save_base(TailState(GEN, _pos(1), ck.copy()))
    _batch(spool, ck, 2, 1, 9)
    synced = ck.copy()
    spool.sync()
    _batch(spool, ck, 3, 5, 8)
    again = Spool(str(tmp_path / "app.db"), boot="boot-2").load()
    assert again.pos == _pos(2) and again.checksum.value == synced.value


def test_no_sync_at_all_after_a_reboot_is_the_base(spool, tmp_path):
    ck = _checksum(3)
    spool.save_base(TailState(GEN, _pos(1), ck.copy()))
    base_value = ck.value
    _batch(spool, ck, 2, 2, 7)
    again = Spool(str(tmp_path / "app.db"), boot="").load()  # boot unknown: the safe side
    assert again.pos == _pos(1) and again.checksum.value == base_value


def test_a_log_left_from_before_a_new_base_is_never_applied(spool, tmp_path):
    """A crash between the base's rename and the log's truncation left the old log: its id
    is not the new base's, so none of it applies."""
    ck = _checksum(3)
    spool.save_base(TailState(GEN, _pos(1), ck.copy()))
    _batch(spool, ck, 2, 2, 7)
    old_log = (spool.state_dir / "log.bin").read_bytes()
    spool.save_base(TailState(GEN, _pos(10), _checksum(3, seed=5)))
    (spool.state_dir / "log.bin").write_bytes(old_log)
    again = Spool(str(tmp_path / "app.db"), boot="boot-1").load()
    assert again.pos == _pos(10) and again.checksum.value == _checksum(3, seed=5).value


def test_a_torn_final_record_is_ignored(spool, tmp_path):
    ck = _checksum(3)
    spool.save_base(TailState(GEN, _pos(1), ck.copy()))
    _batch(spool, ck, 2, 2, 7)
    value = ck.value
    _batch(spool, ck, 3, 1, 6)
    log = spool.state_dir / "log.bin"
    log.write_bytes(log.read_bytes()[:-5])
    again = Spool(str(tmp_path / "app.db"), boot="boot-1").load()
    assert again.pos == _pos(2) and again.checksum.value == value


def test_durable_state_is_the_last_successful_sync(spool):
    ck = _checksum(3)
    spool.save_base(TailState(GEN, _pos(1), ck.copy()))
    assert spool.durable_state().pos == _pos(1)
    _batch(spool, ck, 2, 2, 7)
    spool.sync()
    synced = ck.value
    _batch(spool, ck, 3, 3, 5)
    state = spool.durable_state()
    assert state.pos == _pos(2) and state.checksum.value == synced


def test_a_failed_sync_poisons_every_later_sync_until_a_new_base(spool, monkeypatch):
    """After a failed fsync the kernel may have dropped what it could not write, and a later
    fsync would 'succeed' over the loss (PostgreSQL's fsync lesson)."""
    ck = _checksum(3)
    spool.save_base(TailState(GEN, _pos(1), ck.copy()))
    _batch(spool, ck, 2, 2, 7)
    real = os.fsync
    calls = {"n": 0}

    def failing(fd):
        calls["n"] += 1
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("replicator.storage.file.os.fsync", failing)
    with pytest.raises(SpoolError, match="Input/output error"):
        spool.sync()
    monkeypatch.setattr("replicator.storage.file.os.fsync", real)
    with pytest.raises(SpoolError, match="must be rolled back"):
        spool.sync()
    assert spool.durable_state().pos == _pos(1)  # nothing counted as durable that was not
    spool.save_base(spool.durable_state())
    spool.sync()


def test_objects_a_failed_sync_took_stay_pending(spool, monkeypatch):
    """A failed sync forgets no path: they are all fsynced by the next sync of the store."""
    spool.objects.put("generations/x/segments/a", b"1")
    spool.objects.put("generations/x/segments/b", b"2")
    seen = []
    real = os.fsync

    def once_failing(fd):
        seen.append(fd)
        if len(seen) == 1:
            raise OSError(5, "Input/output error")
        return real(fd)

    monkeypatch.setattr("replicator.storage.file.os.fsync", once_failing)
    with pytest.raises(Exception):
        spool.objects.sync()
    assert len(spool.objects.inner._unsynced) == 2
    spool.objects.sync()
    assert not spool.objects.inner._unsynced


def test_the_state_holds_the_hashes_of_every_page(spool, tmp_path):
    ck = _checksum(40)
    spool.save_base(TailState(GEN, _pos(1), ck.copy()))
    for txid in range(2, 30):
        _batch(spool, ck, txid, txid % 45 + 1, txid)
    again = Spool(str(tmp_path / "app.db"), boot="boot-1").load()
    assert again.checksum.hashes == ck.hashes and isinstance(again.checksum.hashes, array)


def test_append_says_when_the_log_should_be_compacted(spool, monkeypatch):
    monkeypatch.setattr("replicator.spool.LOG_COMPACT_FACTOR", 0)
    ck = _checksum(3)
    spool.save_base(TailState(GEN, _pos(1), ck.copy()))
    assert spool.append(GEN, _pos(2), ck, {1})


def test_objects_carried_in_the_log_are_written_back_after_a_reboot(spool, tmp_path):
    """A fence's tail rides in its state record (one fsync of the log instead of a new file
    and its directory): after a reboot that lost the file, the log brings it back."""
    ck = _checksum(3)
    spool.save_base(TailState(GEN, _pos(1), ck.copy()))
    key = layout.segment_key(GEN, 2, 2, 2_000_000, 2_000_000)
    data = b"segment bytes carried by the log"
    spool.objects.put(key, data)
    ck.update(2, bytes([7]) * 4096)
    spool.append(GEN, _pos(2), ck, {2}, embed=[(key, data)])
    spool.sync(embedded=[key])
    assert spool.objects.inner._unsynced  # its own fsync is left for a later sync
    (spool.dir / "objects" / key).unlink()
    again = Spool(str(tmp_path / "app.db"), boot="boot-2")
    state = again.load()
    assert state.pos == _pos(2) and state.checksum.value == ck.value
    assert again.objects.get(key) == data


@pytest.mark.parametrize("db_mode, spool_mode", [(0o600, 0o700), (0o640, 0o750), (0o644, 0o755)])
def test_the_spool_is_no_more_readable_than_the_database(tmp_path, db_mode, spool_mode):
    """A 0600 database must not gain a world-readable copy of its pages beside it."""
    db = tmp_path / "app.db"
    db.write_bytes(b"")
    db.chmod(db_mode)
    old = os.umask(0o022)
    try:
        s = Spool(str(db), boot="boot-1")
        assert s.try_lock()
        s.unlock()
    finally:
        os.umask(old)
    assert os.stat(s.dir).st_mode & 0o777 == spool_mode


def test_spool_files_take_the_database_mode_and_temp_files_refuse_symlinks(tmp_path):
    """A 0600 database's spooled objects and tail state are 0600 too; a temp name planted as
    a symlink is never written through."""
    import stat as stat_mod

    from replicator.storage.file import create_exclusive

    db = tmp_path / "app.db"
    db.write_bytes(b"")
    os.chmod(db, 0o600)
    spool = Spool(str(db))
    assert spool.try_lock()
    try:
        spool.objects.put("generations/g/x", b"pages")
        files = [p for p in spool.dir.rglob("*") if p.is_file() and p.name != "lock"]
        assert files and all(stat_mod.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in files)
    finally:
        spool.unlock()
    target = tmp_path / "victim"
    target.write_text("keep")
    link = tmp_path / "planted"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        create_exclusive(link)
    assert target.read_text() == "keep"
