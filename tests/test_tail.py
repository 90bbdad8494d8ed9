"""tail.py against a fake WAL: positions, commits, restarts, resume proofs, and a model
check of random WAL histories. No SQLite: the tail reads only the wal-index header and WAL
bytes, so a fake that writes real frame formats exercises every branch deterministically."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator import wal
from replicator.dbhash import DbChecksum
from replicator.tail import ContinuityLost, Position, Tail

PS = 512


class FakeWal:
    """A WAL file and its wal-index header in memory, in SQLite's formats."""

    page_size = PS

    def __init__(self) -> None:
        self.salts = (0x1111, 0x2222)
        self.frames: list[bytes] = []
        self.mx = 0  # mxFrame: the last commit frame
        self.nbackfill = 0
        self.db_size = 0
        self._cksum = (0, 0)
        self.cksums: list[tuple[int, int]] = []
        self.on_read = None  # called between a read and the header read after it (seqlock tests)

    def _frame(self, pgno: int, commit: int, page: bytes) -> bytes:
        head = struct.pack(">II", pgno, commit)
        ck = wal.frame_checksum(head + bytes(16) + page, False, self._cksum)
        self._cksum = ck
        self.cksums.append(ck)
        return struct.pack(">6I", pgno, commit, *self.salts, *ck) + page

    def write(self, pages: dict[int, bytes], commit: bool = True) -> None:
        """One transaction's frames; a commit makes them visible (mxFrame moves)."""
        items = sorted(pages.items())
        size = max([self.db_size] + [p for p, _ in items])
        for i, (pgno, page) in enumerate(items):
            last = commit and i == len(items) - 1
            self.frames.append(self._frame(pgno, size if last else 0, page))
        if commit:
            self.mx, self.db_size = len(self.frames), size
        else:
            self.rollback()

    def rollback(self) -> None:
        """Frames past mxFrame are abandoned: the next transaction overwrites them."""
        del self.frames[self.mx:]
        self.cksums = self.cksums[:self.mx]
        self._cksum = self.cksums[-1] if self.cksums else (0, 0)

    def spill(self, pages: dict[int, bytes]) -> None:
        """Frames of a transaction still open: past mxFrame, valid-looking."""
        for pgno, page in sorted(pages.items()):
            self.frames.append(self._frame(pgno, 0, page))

    def restart(self) -> None:
        self.salts = (self.salts[0] + 1, self.salts[1] ^ 0x5A5A)
        self.frames, self.cksums, self.mx, self._cksum, self.nbackfill = [], [], 0, (0, 0), 0

    def index_header(self) -> wal.IndexHeader:
        ck = self.cksums[self.mx - 1] if self.mx else (0, 0)
        return wal.IndexHeader(3007000, 0, 1, 0, PS, self.mx, self.db_size, ck, *self.salts,
                               self.nbackfill, (0, 0, 0, 0, 0))

    def pread_wal(self, size: int, offset: int) -> memoryview:
        data = bytes(32) + b"".join(self.frames)
        out = memoryview(data[offset:offset + size])
        if self.on_read is not None:
            hook, self.on_read = self.on_read, None
            hook()
        return out


def page(fill: int) -> bytes:
    return bytes([fill % 256]) * PS


def new_tail(fw: FakeWal, held: bool = True) -> Tail:
    tail = Tail(fw, lambda: held, clock_ns=iter(range(10**9, 2 * 10**9)).__next__)
    tail.start(fw.index_header(), 1, DbChecksum(PS))
    return tail


def copied_pages(tail: Tail) -> list[tuple[int, dict[int, bytes]]]:
    return [(txid, {p: bytes(b) for p, b in pages.items()}) for txid, _, pages in tail.read().records()]


def test_each_commit_is_read_once_in_order_with_its_pages():
    fw = FakeWal()
    tail = new_tail(fw)
    fw.write({1: page(1), 2: page(2)})
    fw.write({2: page(3)})
    assert copied_pages(tail) == [(2, {1: page(1), 2: page(2)}), (3, {2: page(3)})]
    assert tail.pos == Position(fw.salts, 3, fw.cksums[2], 3)
    assert tail.read() == [] and tail.caught_up


def test_frames_past_mxframe_are_never_read():
    fw = FakeWal()
    tail = new_tail(fw)
    fw.write({1: page(1)})
    fw.spill({5: page(5), 6: page(6)})  # an open transaction's spilled frames
    assert [t for t, _ in copied_pages(tail)] == [2]
    assert tail.pos.frame == 1
    fw.rollback()
    fw.write({3: page(3)})
    assert copied_pages(tail) == [(3, {3: page(3)})]


def test_a_budget_stops_at_a_commit_and_says_whether_it_caught_up(monkeypatch):
    monkeypatch.setattr("replicator.tail.MAX_READ_BYTES", 1)  # one transaction per read
    fw = FakeWal()
    tail = new_tail(fw)
    for i in range(6):
        fw.write({i + 1: page(i)})
    pieces = []
    while True:
        pieces.append(tail.read(max_bytes=2 * (PS + 24)).txids())
        if tail.caught_up:
            break
    assert [t for p in pieces for t in p] == [2, 3, 4, 5, 6, 7]
    assert len(pieces) >= 3


def test_a_restart_while_our_reader_is_held_continues_from_frame_one():
    fw = FakeWal()
    tail = new_tail(fw, held=True)
    fw.write({1: page(1)})
    tail.read()
    fw.restart()
    fw.write({2: page(2)})
    assert copied_pages(tail) == [(3, {2: page(2)})]
    assert tail.pos.salts == fw.salts and tail.pos.frame == 1


def test_a_restart_nothing_of_ours_held_is_a_continuity_loss():
    fw = FakeWal()
    tail = new_tail(fw, held=False)
    fw.write({1: page(1)})
    tail.read()
    fw.restart()
    fw.write({2: page(2)})
    with pytest.raises(ContinuityLost, match="no read transaction"):
        tail.read()


def test_mxframe_going_back_is_a_continuity_loss():
    fw = FakeWal()
    tail = new_tail(fw)
    fw.write({1: page(1)})
    fw.write({2: page(2)})
    tail.read()
    fw.mx = 1
    with pytest.raises(ContinuityLost, match="mxFrame went back"):
        tail.read()


def test_a_frame_of_another_wal_below_mxframe_is_a_continuity_loss():
    fw = FakeWal()
    tail = new_tail(fw)
    fw.write({1: page(1)})
    fw.salts = (7, 7)  # the index says old salts, a frame says others
    fw.frames.append(fw._frame(2, 2, page(2)))
    fw.mx = 2
    fw.salts = tail.pos.salts
    with pytest.raises(ContinuityLost, match="salts of another WAL"):
        tail.read()


def test_mxframe_on_a_frame_that_is_not_a_commit_is_a_continuity_loss():
    fw = FakeWal()
    tail = new_tail(fw)
    fw.spill({1: page(1), 2: page(2)})
    fw.mx = 2
    with pytest.raises(ContinuityLost, match="not a commit frame"):
        tail.read()


def test_a_restart_between_the_read_and_the_header_is_read_again():
    """The seqlock: frames read while the WAL restarted may belong to the new WAL."""
    fw = FakeWal()
    tail = new_tail(fw)
    fw.write({1: page(1)})

    def restart_now():
        fw.restart()
        fw.write({4: page(4)})

    fw.on_read = restart_now
    assert copied_pages(tail) == [(2, {4: page(4)})]


def test_proves_the_saved_commit_frame_and_nothing_else():
    fw = FakeWal()
    tail = new_tail(fw)
    fw.write({1: page(1)})
    fw.write({2: page(2), 3: page(3)})
    tail.read()
    saved = tail.pos
    fresh = new_tail(fw)
    fw.write({4: page(4)})  # more after the saved frame: still proven
    assert fresh.proves(saved, fw.index_header())
    assert not fresh.proves(Position(saved.salts, 2, fw.cksums[1], 3), fw.index_header())  # not a commit
    assert not fresh.proves(Position(saved.salts, saved.frame, (1, 2), saved.txid), fw.index_header())
    assert not fresh.proves(Position(saved.salts, 99, saved.frame_cksum, saved.txid), fw.index_header())
    fw.restart()
    assert not fresh.proves(saved, fw.index_header())
    assert fresh.proves(Position(fw.salts, 0, (0, 0), 7), fw.index_header())  # nothing copied yet


@st.composite
def histories(draw):
    """Random WAL histories: commits of random pages, rolled-back spills, and restarts (only
    once everything was read: what the read transaction guarantees)."""
    ops = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["commit", "commit", "commit", "spill", "restart", "read"]))
        pages = draw(st.dictionaries(st.integers(1, 12), st.integers(0, 255), min_size=1, max_size=4))
        ops.append((kind, pages))
    return ops


@settings(max_examples=150, deadline=None)
@given(histories())
def test_model_every_commit_read_once_in_order_with_the_right_checksum(ops):
    fw = FakeWal()
    tail = new_tail(fw)
    model: dict[int, bytes] = {}
    want: list[tuple[int, dict[int, bytes]]] = []
    got: list[tuple[int, dict[int, bytes]]] = []
    txid = 1
    for kind, pages in ops:
        data = {p: page(v) for p, v in pages.items()}
        if kind == "commit":
            fw.write(data)
            txid += 1
            want.append((txid, data))
            model.update(data)
        elif kind == "spill":
            fw.write(data, commit=False)
        elif kind == "restart":
            got.extend(copied_pages(tail))  # the invariant: everything copied before a restart
            fw.restart()
        else:
            got.extend(copied_pages(tail))
    got.extend(copied_pages(tail))
    assert got == want
    expect = DbChecksum(PS)
    for pgno in range(1, fw.db_size + 1):
        expect.update(pgno, model.get(pgno, bytes(PS)))
    assert tail.checksum.value == expect.value
